"""Dataset adapters on real images, image checks, duplicates, splits and leakage, and bad input (one test each)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermvlm.datasets.adapters import load_source
from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.dedup import find_duplicates, resolve
from dermvlm.datasets.images import ImageProblem, load_image
from dermvlm.datasets.records import Record
from dermvlm.datasets.split_assignment import assign_splits
from dermvlm.datasets.splits import LeakageError, check_leakage
from dermvlm.knowledge import load_graph


@pytest.fixture(scope="module")
def kg():
    return load_graph()


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# ------------------------------------------------------------------ adapters on the shared data


def test_dermamnist_folder_layout_official_splits(kg, shared_data):
    res = load_source("dermamnist", kg, root=shared_data / "dermamnist")
    assert len(res.records) == 10015 and res.skipped == []
    counts = {s: sum(r.split == s for r in res.records) for s in ("train", "val", "test")}
    assert counts == {"train": 7007, "val": 1003, "test": 2005}
    assert {r.label for r in res.records} == {"akiec", "basal_cell_carcinoma", "benign_keratosis_like_lesion",
                                               "dermatofibroma", "melanoma", "melanocytic_nevus", "vascular_lesion"}


def test_dermamnist_official_npz(kg, shared_data, tmp_path):
    imgs = sorted((shared_data / "dermamnist" / "images").glob("*.jpg"))
    arrays = {}
    for split in ("train", "val", "test"):
        files = [p for p in imgs if f"_{split}_" in p.name][:4]
        arrays[f"{split}_images"] = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        arrays[f"{split}_labels"] = np.array([[i % 7] for i in range(len(files))])
    np.savez(tmp_path / "dermamnist.npz", **arrays)
    res = load_source("dermamnist", kg, root=tmp_path / "dermamnist.npz")
    assert len(res.records) == 12 and {r.split for r in res.records} == {"train", "val", "test"}
    assert res.records[1].label == "basal_cell_carcinoma" and Path(res.records[0].image).is_file()


def test_isic_json_layout_and_csv_export(kg, shared_data, tmp_path):
    res = load_source("isic", kg, root=shared_data / "isic_cc0")
    assert len(res.records) == 120 and {r.label for r in res.records} == {"melanoma", "melanocytic_nevus"}
    export = tmp_path / "isic"
    export.mkdir()
    for p in sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, export / p.name)
    write_csv(export / "metadata.csv", [
        {"isic_id": "ISIC_0000002", "diagnosis_1": "Malignant", "diagnosis_3": "Melanoma, NOS",
         "anatom_site_general": "posterior torso", "patient_id": "P1", "fitzpatrick_skin_type": "III"},
        {"isic_id": "ISIC_0000004", "diagnosis_1": "Malignant", "diagnosis_3": "melanoma",
         "anatom_site_general": "head/neck", "patient_id": "P1", "fitzpatrick_skin_type": ""},
        {"isic_id": "ISIC_0000006", "diagnosis_1": "Benign", "diagnosis_3": "nevus",
         "anatom_site_general": "lower extremity", "patient_id": "P2", "fitzpatrick_skin_type": ""},
    ])
    res = load_source("isic", kg, root=export, label_map={"Melanoma, NOS": "melanoma"})
    assert [r.label for r in res.records] == ["melanoma", "melanoma", "melanocytic_nevus"]
    assert [r.site for r in res.records] == ["back", "head_neck", "lower_limb"]
    assert res.records[0].fitzpatrick == 3 and res.records[0].group_id == res.records[1].group_id == "P1"


def test_pad_ufes_20_patient_groups_fitzpatrick_sites_symptoms(kg, shared_data):
    root = shared_data / "pad_ufes_20"
    res = load_source("pad_ufes_20", kg, root=root)
    present = len([p for p in root.rglob("PAT_*.png")])  # images/ and images_extra/ (downscaled copies)
    assert len(res.records) == present >= 32
    assert len(res.skipped) == 2298 - present and all("image file not found" in why for _, why in res.skipped)
    assert all(r.group_id.startswith("PAT_") for r in res.records)
    assert any(r.fitzpatrick for r in res.records) and all(r.site for r in res.records)
    assert any(r.meta["symptoms"] for r in res.records)


def test_ham10000_fitzpatrick17k_ddi_layouts(kg, shared_data, tmp_path):
    src = sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:4]
    ham = tmp_path / "ham"
    (ham / "HAM10000_images_part_1").mkdir(parents=True)
    for i, p in enumerate(src):
        shutil.copy(p, ham / "HAM10000_images_part_1" / f"ISIC_{i:07d}.jpg")
    write_csv(ham / "HAM10000_metadata.csv", [
        {"lesion_id": f"HAM_{i // 2}", "image_id": f"ISIC_{i:07d}", "dx": dx, "dx_type": "histo", "age": "50",
         "sex": "male", "localization": "back"} for i, dx in enumerate(["mel", "mel", "bkl", "nv"])])
    res = load_source("ham10000", kg, root=ham)
    assert [r.label for r in res.records] == ["melanoma", "melanoma", "benign_keratosis_like_lesion",
                                              "melanocytic_nevus"]
    assert res.records[0].group_id == res.records[1].group_id == "HAM_0" and res.records[0].site == "back"
    fz = tmp_path / "fz"
    (fz / "images").mkdir(parents=True)
    shutil.copy(src[0], fz / "images" / "abc123.jpg")
    write_csv(fz / "fitzpatrick17k.csv", [
        {"md5hash": "abc123", "fitzpatrick_scale": "5", "label": "psoriasis", "three_partition_label": "x"},
        {"md5hash": "missing", "fitzpatrick_scale": "-1", "label": "acne", "three_partition_label": "x"}])
    res = load_source("fitzpatrick17k", kg, root=fz)
    assert [(r.label, r.fitzpatrick) for r in res.records] == [("psoriasis", 5)] and len(res.skipped) == 1
    ddi = tmp_path / "ddi"
    ddi.mkdir()
    shutil.copy(src[1], ddi / "000001.png")
    write_csv(ddi / "ddi_metadata.csv", [{"DDI_ID": "1", "DDI_file": "000001.png", "skin_tone": "56",
                                          "malignant": "True", "disease": "melanoma-in-situ"}])
    res = load_source("ddi", kg, root=ddi)
    assert res.records[0].label == "melanoma_in_situ" and res.records[0].meta["fitzpatrick_group"] == "V-VI"


def test_generic_imagefolder_and_csv(kg, shared_data, tmp_path):
    src = sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:4]
    for split, cls, p in [("train", "melanoma", src[0]), ("train", "nevus", src[1]), ("test", "nevus", src[2])]:
        (tmp_path / "tree" / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, tmp_path / "tree" / split / cls / p.name)
    res = load_source("imagefolder", kg, root=tmp_path / "tree")
    assert sorted((r.split, r.label) for r in res.records) == [
        ("test", "melanocytic_nevus"), ("train", "melanocytic_nevus"), ("train", "melanoma")]
    labels = write_csv(tmp_path / "mine.csv", [{"file": src[0].name, "dx": "BCC", "patient": "p1"},
                                               {"file": src[1].name, "dx": "ringworm", "patient": "p2"}])
    res = load_source("csv", kg, labels=labels, images=src[0].parent, image_col="file", label_col="dx",
                      group_col="patient")
    assert [r.label for r in res.records] == ["basal_cell_carcinoma", "tinea_corporis"]
    assert [r.group_id for r in res.records] == ["p1", "p2"]


# ------------------------------------------------------------------ image checks (bad input)


@pytest.fixture(scope="module")
def real_jpeg(shared_data) -> Path:
    return sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[0]


def test_bad_image_corrupt_bytes(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(ImageProblem, match=r"not an image PIL can decode|corrupt"):
        load_image(p)


def test_bad_image_truncated_jpeg(tmp_path, real_jpeg):
    p = tmp_path / "t.jpg"
    p.write_bytes(real_jpeg.read_bytes()[:3000])
    with pytest.raises(ImageProblem, match="corrupt or truncated"):
        load_image(p)


def test_bad_image_truncated_png(tmp_path, real_jpeg):
    full = tmp_path / "full.png"
    Image.open(real_jpeg).save(full)
    p = tmp_path / "t.png"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageProblem, match="corrupt or truncated"):
        load_image(p)


def test_cmyk_16bit_palette_alpha_are_converted(tmp_path, real_jpeg):
    rgb = Image.open(real_jpeg).convert("RGB")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(tmp_path / "16bit.png")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "alpha.png")
    for name in ("cmyk.jpg", "16bit.png", "pal.png", "alpha.png"):
        img = load_image(tmp_path / name, max_side=128)
        assert img.image.mode == "RGB" and max(img.image.size) == 128, name
    assert load_image(tmp_path / "16bit.png").image.getextrema()[0][1] > 200  # scaled, not clipped to black


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 30), (200, 50, 50))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").image.size == (30, 60)


def test_decompression_bomb_is_refused(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(p)
    assert p.stat().st_size < 100_000
    with pytest.raises(ImageProblem, match="decompression bomb"):
        load_image(p, max_pixels=40_000_000)


def test_zero_byte_and_missing_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageProblem, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageProblem, match="missing file"):
        load_image(tmp_path / "nope.jpg")


# ------------------------------------------------------------------ CSVs and labels (bad input)


def test_unknown_label_lists_closest_matches(kg, real_jpeg, tmp_path):
    labels = write_csv(tmp_path / "l.csv", [{"image": str(real_jpeg), "label": "melanomma"},
                                            {"image": str(real_jpeg), "label": "psoriasis"}])
    with pytest.raises(DatasetError, match=r"'melanomma' \(1 images\): unknown label 'melanomma'; closest: melanoma"):
        load_source("csv", kg, labels=labels)
    res = load_source("csv", kg, labels=labels, on_unknown_label="skip")
    assert [r.label for r in res.records] == ["psoriasis"] and "unknown label" in res.skipped[0][1]


def test_empty_csv_and_missing_columns(kg, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="the CSV is empty"):
        load_source("csv", kg, labels=tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image,label\n")
    with pytest.raises(DatasetError, match="header but no rows"):
        load_source("csv", kg, labels=tmp_path / "header.csv")
    (tmp_path / "cols.csv").write_text("file,dx\na.jpg,mel\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) image, label; the CSV has: file, dx"):
        load_source("csv", kg, labels=tmp_path / "cols.csv")


def test_non_utf8_csv(kg, real_jpeg, tmp_path):
    labels = write_csv(tmp_path / "latin.csv", [{"image": str(real_jpeg), "label": "eczéma"}], encoding="latin-1")
    with pytest.raises(DatasetError, match=r"not valid utf-8 \(byte 0xe9.*encoding: latin-1"):
        load_source("csv", kg, labels=labels)
    res = load_source("csv", kg, labels=labels, encoding="latin-1", label_map={"eczéma": "eczema"})
    assert res.records[0].label == "eczema"


def test_unknown_source_and_option(kg):
    with pytest.raises(DatasetError, match="unknown source 'dermanist'"):
        load_source("dermanist", kg, root=".")
    with pytest.raises(DatasetError, match=r"unknown option.*imgs; allowed: labels, images"):
        load_source("csv", kg, imgs="x")


# ------------------------------------------------------------------ duplicates, splits, leakage


def rec(i: int, split: str, group: str, label: str = "melanoma") -> Record:
    return Record(image=f"img{i}.jpg", label=label, source_label=label, dataset="t", split=split, group_id=group)


def test_exact_and_near_duplicates_across_splits(real_jpeg, tmp_path):
    a = load_image(real_jpeg)
    im = a.image.copy()
    im.putpixel((0, 0), (0, 0, 0))
    im.save(tmp_path / "near.png")
    b = load_image(tmp_path / "near.png")
    other = load_image(sorted(real_jpeg.parent.glob("*.jpg"))[5])
    report = find_duplicates([a.sha256, a.sha256, b.sha256, other.sha256], [a.phash, a.phash, b.phash, other.phash])
    assert report.exact_pairs == [(0, 1)] and [(i, j) for i, j, _ in report.near_pairs] == [(0, 2), (1, 2)]
    records = [rec(0, "test", "g0"), rec(1, "train", "g1"), rec(2, "val", "g2"), rec(3, "train", "g3")]
    with pytest.raises(DatasetError, match="duplicate image pair"):
        resolve(records, report, "error")
    kept = resolve(records, report, "drop_train")
    assert [r.image for r in kept] == ["img0.jpg", "img3.jpg"]  # the test copy stays; train and val copies go
    with pytest.raises(LeakageError, match="duplicate image pair"):
        check_leakage(records, report.cross_split(records))


def test_group_aware_stratified_seeded_splits():
    records = [rec(i, "", f"p{i // 3}", "melanoma" if i % 2 else "psoriasis") for i in range(300)]
    assign_splits(records, val=0.1, test=0.2, seed=0)
    check_leakage(records)  # no group crosses splits
    frac = {s: sum(r.split == s for r in records) / 300 for s in ("train", "val", "test")}
    assert 0.15 <= frac["test"] <= 0.25 and 0.05 <= frac["val"] <= 0.15
    again = [rec(i, "", f"p{i // 3}", "melanoma" if i % 2 else "psoriasis") for i in range(300)]
    assign_splits(again, val=0.1, test=0.2, seed=0)
    assert [r.split for r in records] == [r.split for r in again]


def test_leakage_check_fails_loudly_on_groups():
    with pytest.raises(LeakageError, match=r"1 group\(s\) in more than one split, e.g. p1"):
        check_leakage([rec(0, "train", "p1"), rec(1, "test", "p1"), rec(2, "test", "p2")])


def test_isic_json_unreadable_metadata_is_skipped_with_reason(kg, shared_data, tmp_path):
    root = tmp_path / "isic"
    shutil.copytree(shared_data / "isic_cc0" / "metadata", root / "metadata")
    (root / "images").mkdir()
    for p in sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, root / "images" / p.name)
    first = sorted((root / "metadata").glob("*.json"))[0]
    first.write_text("{not json")
    res = load_source("isic", kg, root=root)
    reasons = {why.split(" (")[0] for _, why in res.skipped}
    assert reasons == {"unreadable ISIC JSON", "image file not found"} and len(res.records) == 1
    assert json.loads(sorted((root / "metadata").glob("*.json"))[1].read_text())
