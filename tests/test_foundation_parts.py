"""Small parts: atomic writes, the torchvision guard, the bundled sample's licences and sizes."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from dermvlm.datasets.sample import load_sample_records, sample_dir
from dermvlm.io import atomic_dir, atomic_write_text
from dermvlm.torchvision_guard import MARKER, guard_source


def test_atomic_dir_leaves_nothing_on_error_and_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    atomic_write_text(tmp_path / "f.json", "{}")
    assert (tmp_path / "f.json").read_text() == "{}"


def test_atomic_outputs_get_the_modes_of_a_plain_mkdir_and_open(tmp_path):
    """Temporary files and folders are private (0600 / 0700); what they become must not be, or another user of a
    shared machine (or a server running as another user) cannot read a built dataset, model or report."""
    import os
    import stat

    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    atomic_write_text(tmp_path / "f.json", "{}")
    (tmp_path / "plain_dir").mkdir()
    (tmp_path / "plain.txt").write_text("")

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(tmp_path / "out") == mode(tmp_path / "plain_dir")
    assert mode(tmp_path / "f.json") == mode(tmp_path / "plain.txt")


def test_torchvision_guard_is_narrow_and_idempotent():
    src = (
        'import torchvision.extension\n\n@torch.library.register_fake("torchvision::nms")\ndef meta_nms(): pass\n\n'
        '@torch.library.register_fake("torchvision::qnms")\ndef meta_qnms(): pass\n\n'
        '@torch.library.register_fake("torchvision::roi_align")\ndef other(): pass\n'
    )
    once = guard_source(src)
    assert once.count(MARKER) == 2
    assert '@torch.library.register_fake("torchvision::roi_align")\n' in once
    assert guard_source(once) == once
    import importlib

    v2 = importlib.import_module("torchvision.transforms.v2")  # the guarded install imports (this test alone too)
    assert v2.RandomResizedCrop is not None


def test_bundled_sample_is_cc0_or_cc_by_small_and_complete():
    root = sample_dir()
    with open(root / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72
    assert {r["licence"] for r in rows} == {"CC0-1.0", "CC-BY-4.0"}
    assert {r["dataset"] for r in rows} == {"isic", "pad_ufes_20"}
    for r in rows:
        with Image.open(root / r["image"]) as im:
            assert max(im.size) <= 384 and im.mode == "RGB"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert files == {r["image"] for r in rows}  # nothing unlisted ships
    assert (root / "isic" / "LICENSE.txt").is_file() and "CC BY 4.0" in (root / "README.md").read_text()
    records = load_sample_records()
    assert {r.label for r in records} >= {"melanoma", "melanocytic_nevus", "basal_cell_carcinoma"}
    assert all(r.fitzpatrick in (None, 1, 2, 3, 4, 5, 6) for r in records)
