"""One data-root setting: `../shared/data/...` in any recipe, suite or config moves with DERMVLM_DATA_ROOT or
`dermvlm --data-root`, so a clone that keeps its datasets elsewhere builds the same recipes unchanged."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.data_root import rerooted

RECIPE = """\
name: tiny_isic
seed: 0
sources:
  - {name: isic, root: ../shared/data/isic_cc0, limit_per_split: 4}
image: {max_side: 64}
split: {val: 0.25, test: 0.25}
kinds:
  image_label: {}
"""


def test_rerooted_moves_only_the_shared_data_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("DERMVLM_SHARED_DATA", "")  # unset for data_root(); restored afterwards
    monkeypatch.setenv("DERMVLM_DATA_ROOT", "")
    assert rerooted("../shared/data/isic_cc0") == "../shared/data/isic_cc0"  # nothing set: as written
    monkeypatch.setenv("DERMVLM_DATA_ROOT", str(tmp_path))
    assert rerooted("../shared/data/isic_cc0") == str(tmp_path / "isic_cc0")
    assert rerooted("my/images") == "my/images" and rerooted("../shared/datasets/x") == "../shared/datasets/x"


def test_data_build_finds_the_data_under_the_data_root_from_anywhere(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMVLM_SHARED_DATA", "")  # unset for data_root(); restored afterwards
    monkeypatch.setenv("DERMVLM_DATA_ROOT", "")
    elsewhere = tmp_path / "datasets"
    elsewhere.mkdir()
    (elsewhere / "isic_cc0").symlink_to(shared_data / "isic_cc0")
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.yaml").write_text(RECIPE)
    monkeypatch.chdir(work)  # ../shared/data does not exist from here
    runner = CliRunner()
    lost = runner.invoke(app, ["data", "build", "tiny.yaml", "--out", "a"])
    assert lost.exit_code != 0 and not Path("a").exists()
    found = runner.invoke(app, ["--data-root", str(elsewhere), "data", "build", "tiny.yaml", "--out", "b"])
    assert found.exit_code == 0, found.output
    assert (work / "b" / "image_label" / "dataset_dict.json").is_file()
