"""One config for one dataset: `dermvlm init` finds the columns it can; a run config's data: names images, labels,
columns and label_map directly, with paths read from the config's folder; the command line replaces only what
it names."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import load_config
from dermvlm.recipes.run_data import merged_sources, run_recipe, with_data

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "dermvlm" / "sample_data" / "pad_ufes_20"


def photos(tmp: Path) -> Path:
    """A user's folder: photos/ and a CSV with their own column names, one label the graph does not know."""
    (tmp / "data" / "photos").mkdir(parents=True)
    lines = ["Photo,Patient ID,Final diagnosis,Body region"]
    for i, p in enumerate(sorted(SAMPLE.glob("*.jpg"))[:8]):
        shutil.copy(p, tmp / "data" / "photos" / p.name)
        lines.append(f"{p.name},{p.name.split('_')[1]},{['BCC', 'melanom', 'ACK', 'NEV'][i % 4]},ARM")
    (tmp / "data" / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp / "data"


def test_init_finds_the_columns_says_which_it_guessed_and_writes_a_config_that_checks(tmp_path, monkeypatch):
    folder = photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                   "configs/mine.yaml"])
    assert res.exit_code == 0, res.output
    for note in ("image column: Photo (guessed: 8 of 8 rows name a file", "label column: Final diagnosis (guessed",
                 "melanom → melanoma (label_map guesses: check them)", "group column: Patient ID (guessed",
                 "body-site column: Body region"):
        assert note in res.output, res.output
    cfg = yaml.safe_load((tmp_path / "configs" / "mine.yaml").read_text())
    assert cfg["data"]["images"] == "../data/photos" and cfg["data"]["label_map"] == {"melanom": "melanoma"}
    again = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                     "configs/mine.yaml"])
    assert again.exit_code == 2 and "the file exists" in again.output  # never overwritten unasked
    monkeypatch.chdir(folder / "photos")  # paths are read from the config's folder, wherever the command runs
    recipe, _ = run_recipe(load_config(tmp_path / "configs" / "mine.yaml"), tmp_path / "configs" / "mine.yaml")
    options = recipe.sources[0].options
    assert Path(options["labels"]) == folder / "labels.csv" and Path(options["images"]) == folder / "photos"
    check = CliRunner().invoke(app, ["config", "check", str(tmp_path / "configs" / "mine.yaml")])
    assert check.exit_code == 0 and "8 images in 8 groups, 4 classes" in check.output, check.output


def test_the_command_line_replaces_only_what_it_names():
    sources = [{"name": "csv", "options": {"labels": "a.csv", "image_col": "file"}, "label_map": {"x": "melanoma"},
                "on_unknown_label": "skip"}]
    out = merged_sources(sources, {"labels": "/b.csv", "group_col": "patient"})
    assert out == [{"name": "csv", "options": {"labels": "/b.csv", "image_col": "file", "group_col": "patient"},
                    "label_map": {"x": "melanoma"}, "on_unknown_label": "skip"}]
    assert merged_sources([{"name": "sample"}], {"labels": "/b.csv"}) == [{"name": "csv",
                                                                            "options": {"labels": "/b.csv"}}]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "nano-cpu.yaml")
    mine = with_data(cfg.model_copy(update={"data": cfg.data.model_copy(update={"label_map": {"x": "melanoma"}})}),
                     {"labels": "/b.csv", "images": "/photos"})
    assert mine.data.label_map == {"x": "melanoma"} and mine.data.recipe == "data_recipes/sample.yaml"
    assert (mine.data.labels, mine.data.images, mine.data.image_col) == ("/b.csv", "/photos", None)


def test_one_image_under_two_labels_stops_the_check_and_data_dedup_in_the_run_config_resolves_it(tmp_path,
                                                                                                 monkeypatch):
    """The error names a field the user can set in their own run config, and `config check` sees what the build
    would stop on."""
    folder = photos(tmp_path)
    first = (folder / "labels.csv").read_text().splitlines()[1].split(",")
    with (folder / "labels.csv").open("a") as f:
        f.write(",".join([first[0], first[1], "NEV" if first[2] != "NEV" else "BCC", first[3]]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                    "mine.yaml"]).exit_code == 0
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert check.exit_code == 2 and "1 image(s) appear under two labels" in check.output, check.output
    assert "data.dedup.on_conflict" in check.output and first[0] in check.output
    cfg = yaml.safe_load((tmp_path / "mine.yaml").read_text())
    cfg["data"]["dedup"] = {"on_conflict": "drop"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert check.exit_code == 0 and "7 images in 7 groups" in check.output, check.output
    build = CliRunner().invoke(app, ["data", "build", "mine.yaml", "--out", "out"])
    assert build.exit_code == 0, build.output
    splits = (tmp_path / "out" / "splits.csv").read_text()
    assert first[0] not in splits and len(splits.strip().splitlines()) == 1 + 7
    assert "conflicting labels" in (tmp_path / "out" / "skipped.csv").read_text()


def excel_photos(tmp: Path, labels: list[str]) -> Path:
    """photos/ and a CSV as Excel writes it in a comma-decimal locale: semicolons, CRLF, a byte-order mark."""
    folder = photos(tmp)
    names = sorted(p.name for p in (folder / "photos").glob("*.jpg"))
    lines = ["Photo;Patient ID;Diagnosis"] + [f"{n};{n.split('_')[1]};{labels[i % len(labels)]}"
                                                   for i, n in enumerate(names)]
    (folder / "labels.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n")
    return folder


def test_init_reads_an_excel_semicolon_csv_and_guesses_labels_only_from_a_close_spelling(tmp_path, monkeypatch):
    excel_photos(tmp_path, ["BCC", "melanom", "NA", "Nevi"])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                   "mine.yaml"])
    assert res.exit_code == 0, res.output
    assert "image column: Photo (guessed: 8 of 8 rows" in res.output and "label column: Diagnosis" in res.output
    # a close spelling is guessed; a placeholder or a loose match is not (it named herpes zoster and pediculosis)
    assert "melanom → melanoma" in res.output and "NA → ?" in res.output and "Nevi → ?" in res.output, res.output
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["data"]["label_map"] == {"melanom": "melanoma"}
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])  # the unmapped labels stop the check, named
    assert check.exit_code == 2 and "'NA' (2 images)" in check.output and "'Nevi' (2 images)" in check.output


def test_init_and_data_never_replace_the_users_own_files_even_with_force(tmp_path, monkeypatch):
    folder = photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    csv_text, images = (folder / "labels.csv").read_text(), sorted((folder / "photos").iterdir())
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                   "data/labels.csv", "--force"])
    assert res.exit_code == 2 and "that is your labels CSV" in res.output
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--image-col",
                                   "photo"])  # a typo in a column name: named, with the CSV's columns
    assert res.exit_code == 2 and "missing column(s) photo; the CSV has: Photo, Patient ID" in res.output
    assert CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                    "mine.yaml"]).exit_code == 0
    for argv in (["data", "build", "mine.yaml", "--out", "data/photos", "--force"],
                 ["data", "audit", "mine.yaml", "--out", "data", "--force"]):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 2 and "would replace what is being read" in res.output, res.output
    assert (folder / "labels.csv").read_text() == csv_text and sorted((folder / "photos").iterdir()) == images


def test_config_check_counts_only_the_images_on_disk(tmp_path, monkeypatch):
    folder = photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    with (folder / "labels.csv").open("a") as f:
        f.write("lost.jpg,P9,NEV,ARM\n")
    assert CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                    "mine.yaml"]).exit_code == 0
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert check.exit_code == 0 and "8 images in 8 groups" in check.output, check.output
    assert "warning: 1 of 9 images the labels list are not on disk (e.g. " in check.output
    for p in (folder / "photos").iterdir():
        p.rename(p.with_name("renamed_" + p.name))
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert check.exit_code == 2 and "none of the 9 images the labels list is on disk" in check.output


def test_windows_paths_other_case_and_numeric_codes_with_a_yaml_label_map_build(tmp_path, monkeypatch):
    """A CSV written on Windows (``sub\\NAME.JPG`` for photos/name.jpg on a case-sensitive disk) whose labels are
    codes, mapped in the config as YAML reads them (``0: basal_cell_carcinoma``: an integer key)."""
    folder = photos(tmp_path)
    names = sorted(p.name for p in (folder / "photos").glob("*.jpg"))
    lines = ["file,code"] + [f"scans\\{n.upper()},{i % 2}" for i, n in enumerate(names)]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--label-col",
                                   "code", "--out", "mine.yaml"])
    assert res.exit_code == 0 and "8 of 8 rows name a file" in res.output and "0 → ?" in res.output, res.output
    cfg = yaml.safe_load((tmp_path / "mine.yaml").read_text())
    cfg["data"]["label_map"] = {0: "basal_cell_carcinoma", 1: "melanoma"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert "    0: basal_cell_carcinoma" in (tmp_path / "mine.yaml").read_text()  # an integer key, as a user writes it
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert check.exit_code == 0 and "8 images in 8 groups, 2 classes" in check.output, check.output
    build = CliRunner().invoke(app, ["data", "build", "mine.yaml", "--out", "out"])
    assert build.exit_code == 0 and "wrote out: 8 images" in build.output, build.output


def test_a_single_class_is_said_before_anything_trains(tmp_path, monkeypatch):
    folder = photos(tmp_path)
    rows = (folder / "labels.csv").read_text().splitlines()
    (folder / "labels.csv").write_text("\n".join([rows[0], *(",".join([*r.split(",")[:2], "NEV", "ARM"])
                                                              for r in rows[1:])]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--label-col",
                                    "Final diagnosis", "--out", "mine.yaml"]).exit_code == 0
    check = CliRunner().invoke(app, ["config", "check", "mine.yaml"])
    assert "warning: one class: every training image is melanocytic_nevus" in check.output, check.output


def test_the_pipelines_data_build_says_what_it_left_out(tmp_path, monkeypatch, caplog):
    from dermvlm.init_config import write_config
    from dermvlm.pipeline import build_data

    folder = photos(tmp_path)
    with (folder / "labels.csv").open("a") as f:
        f.write("lost.jpg,P9,NEV,ARM\n")
    monkeypatch.chdir(tmp_path)
    write_config(folder / "photos", folder / "labels.csv", tmp_path / "mine.yaml")  # init, without the CLI's logging
    with caplog.at_level("WARNING", logger="dermvlm"):
        out, _ = build_data(load_config(tmp_path / "mine.yaml"), str(tmp_path / "mine.yaml"))
    assert "left out 1 image(s): missing file (1)" in caplog.text and "lost.jpg" in (out / "skipped.csv").read_text()


def test_phone_photos_in_heic_and_gif_are_read_and_formats_it_cannot_read_are_named(tmp_path, monkeypatch):
    """An iPhone's HEIC photos (and a GIF) are images like any other, from init to the chat page; a RAW file the
    CSV names is counted and named by init, not silently missed."""
    from PIL import Image

    from dermvlm.app.chat import image_url

    folder = photos(tmp_path)
    jpgs = sorted((folder / "photos").glob("*.jpg"))
    for p, fmt in zip(jpgs[:3], ("HEIF", "HEIF", "GIF"), strict=True):
        with Image.open(p) as im:
            im.convert("RGB").save(p.with_suffix(".heic" if fmt == "HEIF" else ".gif"), fmt)
        p.unlink()
    text = (folder / "labels.csv").read_text()
    for p, new in zip(jpgs[:3], (".heic", ".heic", ".gif"), strict=True):
        text = text.replace(p.name, p.with_suffix(new).name)
    (folder / "photos" / "scan.dng").write_bytes(b"II*\x00raw")
    (folder / "labels.csv").write_text(text + "scan.dng,P9,NEV,ARM\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["init", "--images", "data/photos", "--labels", "data/labels.csv", "--out",
                                   "mine.yaml"])
    assert res.exit_code == 0 and "8 of 9 rows name a file" in res.output, res.output
    assert "1 row(s) name files of a format dermvlm does not read (.dng 1): convert them to JPEG" in res.output
    build = CliRunner().invoke(app, ["data", "build", "mine.yaml", "--out", "out"])
    assert build.exit_code == 0 and "wrote out: 8 images" in build.output, build.output
    assert "scan.dng" in (tmp_path / "out" / "skipped.csv").read_text()
    heic = folder / "photos" / jpgs[0].with_suffix(".heic").name
    assert image_url(heic, 64).startswith("data:image/")  # the chat page takes the phone's photo as it is
