"""The text a recipe trains on reads as correct English, for every adapter: right articles ("an image", "an
8-year-old"), no leftovers of templates, and the record's modality when it is known ("Here: a clinical photograph
of a skin lesion"; a CSV says what its images are with the `modality` option)."""

from __future__ import annotations

import csv
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from dermvlm.config import RecipeConfig
from dermvlm.datasets.adapters import SOURCES, load_source
from dermvlm.knowledge import load_graph
from dermvlm.recipes.kinds import BUILDERS, Context
from dermvlm.recipes.text import article

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "dermvlm" / "sample_data"
ISIC = sorted((SAMPLE / "isic").glob("*.jpg"))[:3]
PAD = sorted((SAMPLE / "pad_ufes_20").glob("*.jpg"))[:3]


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def layout(name: str, tmp: Path) -> tuple[dict, str]:
    """A small folder in ``name``'s own layout, from the bundled CC0/CC BY images; (load_source options, the
    modality its text must state)."""
    if name == "dermamnist":
        for i, p in enumerate(ISIC):
            copy(p, tmp / "images" / f"DermaMNIST_train_{i:05d}.jpg")
        write_csv(tmp / "labels.csv", [{"image_id": f"DermaMNIST_train_{i:05d}", "dx": dx, "lesion_id": f"l{i}"}
                                       for i, dx in enumerate(["mel", "nv", "bcc"])])
        return {"root": tmp}, "dermoscopic image"
    if name == "ham10000":
        for i, p in enumerate(ISIC):
            copy(p, tmp / "HAM10000_images_part_1" / f"ISIC_{i:07d}.jpg")
        write_csv(tmp / "HAM10000_metadata.csv", [
            {"lesion_id": f"HAM_{i}", "image_id": f"ISIC_{i:07d}", "dx": dx, "dx_type": "histo", "age": age,
             "sex": sex, "localization": "back"}
            for i, (dx, age, sex) in enumerate([("mel", "80", "male"), ("nv", "18", "female"), ("akiec", "", "")])])
        return {"root": tmp}, "dermoscopic image"
    if name == "isic":
        for p in ISIC:
            copy(p, tmp / p.name)
        write_csv(tmp / "metadata.csv", [
            {"isic_id": p.stem, "diagnosis_3": dx, "anatom_site_general": site, "age_approx": age, "sex": "male"}
            for p, dx, site, age in zip(ISIC, ["melanoma", "nevus", "melanoma"], ["posterior torso", "head/neck", ""],
                                        ["11", "45", ""], strict=True)])
        return {"root": tmp}, "dermoscopic image"
    if name == "pad_ufes_20":
        for p in PAD:
            copy(p, tmp / "images" / p.name)
        base = {k: "" for k in ("smoke", "drink", "background_father", "background_mother", "pesticide",
                                "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
                                "diameter_1", "diameter_2", "biopsed")}
        write_csv(tmp / "metadata.csv", [
            {**base, "patient_id": f"PAT_{i}", "lesion_id": str(i), "age": age, "gender": "FEMALE",
             "fitspatrick": "2.0", "region": "ARM", "diagnostic": dx, "itch": "True", "grew": "False",
             "hurt": "UNK", "changed": "False", "bleed": "True", "elevation": "False", "img_id": p.name}
            for i, (p, dx, age) in enumerate(zip(PAD, ["BCC", "ACK", "NEV"], ["8", "61", "83"], strict=True))])
        return {"root": tmp}, "clinical photograph"
    if name == "fitzpatrick17k":
        for i, p in enumerate(PAD):
            copy(p, tmp / "images" / f"h{i}.jpg")
        write_csv(tmp / "fitzpatrick17k.csv", [
            {"md5hash": f"h{i}", "fitzpatrick_scale": str(i + 1), "label": dx, "three_partition_label": "x"}
            for i, dx in enumerate(["psoriasis", "acne", "eczema"])])
        return {"root": tmp}, "clinical photograph"
    if name == "ddi":
        for i, p in enumerate(PAD):
            copy(p, tmp / f"{i:06d}.png")
        write_csv(tmp / "ddi_metadata.csv", [
            {"DDI_ID": str(i), "DDI_file": f"{i:06d}.png", "skin_tone": tone, "malignant": m, "disease": dx}
            for i, (tone, m, dx) in enumerate([("12", "True", "melanoma-in-situ"), ("34", "False", "verruca-vulgaris"),
                                                ("56", "False", "seborrheic-keratosis")])])
        return {"root": tmp}, "clinical photograph"
    if name == "imagefolder":
        for p, cls in zip(ISIC, ["melanoma", "nevus", "melanoma"], strict=True):
            copy(p, tmp / cls / p.name)
        return {"root": tmp, "modality": "dermoscopic image"}, "dermoscopic image"
    if name == "csv":
        for p in PAD:
            copy(p, tmp / "photos" / p.name)
        labels = write_csv(tmp / "labels.csv", [{"file": p.name, "dx": dx, "patient": f"p{i}"}
                                                for i, (p, dx) in enumerate(zip(PAD, ["BCC", "ringworm", "ACK"],
                                                                                strict=True))])
        return {"labels": labels, "images": tmp / "photos", "image_col": "file", "label_col": "dx"}, "image"
    assert name == "sample"
    return {}, ""  # its records carry their own dataset: ISIC dermoscopy and PAD-UFES-20 photographs


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings(v)]
    return []


BAD = [
    (re.compile(r"\b[Aa] (?!(?:uni|use|usu|uro|eu|one|once))[aeiouAEIOU]\w*"), "'a' before a vowel"),
    (re.compile(r"\b[Aa]n (?!(?:hour|honest|heir|8|11\b|18\b|11-|18-))[^aeiouAEIOU\s]\w*"), "'an' before a consonant"),
    (re.compile(r"\b[Aa] (?:8|11-|18-)"), "'a' before eight/eleven/eighteen"),
    (re.compile(r"  |\s[,.;:](?!\d)|\.\.|,\.|\(\s*\)|\{|\}"), "spacing or a template leftover"),
    (re.compile(r"\b(?:None|nan|NaN|null)\b"), "a missing value written out"),
    (re.compile(r"\b(\w+) \1\b"), "a repeated word"),
]


def problems(text: str) -> list[str]:
    return [f"{why}: ...{text[max(0, m.start() - 30):m.end() + 30]}..." for rx, why in BAD for m in rx.finditer(text)]


@pytest.fixture(scope="module")
def kg():
    return load_graph()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_adapters_text_reads_as_english_with_its_modality(name, kg, tmp_path):
    options, modality = layout(name, tmp_path)
    result = load_source(name, kg, **options)
    records = result.records[::6] if name == "sample" else result.records  # both of the sample's datasets
    assert records, result.skipped
    kinds = RecipeConfig.model_validate({"name": "t", "sources": [{"name": "sample"}],
                                         "kinds": {k: {} for k in BUILDERS}}).kinds.enabled()
    labels = sorted({r.label for r in records} | {"melanoma", "melanocytic_nevus", "basal_cell_carcinoma"})
    ctx = Context(kg, labels, Counter(r.label for r in records))
    found, here = [], []
    for r in records:
        rng = random.Random(0)
        for kind, spec in kinds.items():
            if kind in ("mcq", "eval_item", "grpo_prompt"):
                spec = spec.model_copy(update={"distractors": "graph"})
            for row in BUILDERS[kind](ctx, r, rng, spec):
                for text in strings({k: v for k, v in row.items() if k not in ("record_facts", "images")}):
                    found += [f"{kind}: {p}" for p in problems(text)]
                    here += re.findall(r"Here: (an? [a-z ]+?) of a skin lesion", text)
    assert found == [], "\n".join(found[:10])
    assert here, "no trace states what the image is"
    if modality:
        assert set(here) == {f"{article(modality)} {modality}"}, set(here)
    else:
        assert set(here) == {"a dermoscopic image", "a clinical photograph"}, set(here)


def test_a_csv_says_what_its_images_are_with_the_modality_option(kg, tmp_path):
    options, _ = layout("csv", tmp_path)
    records = load_source("csv", kg, modality="clinical photograph", **options).records
    from dermvlm.recipes.text import metadata_sentence

    assert metadata_sentence(kg, records[0]).startswith("Here: a clinical photograph of a skin lesion")
    assert [article(w) for w in ("image", "8-year-old", "18-year-old", "80-year-old", "1-year-old", "uniform",
                                 "ulcer", "hour", "melanoma")] == ["an", "an", "an", "an", "a", "a", "an", "an", "a"]
