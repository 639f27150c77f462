"""Robustness corruptions (MedMNIST-C's dermatoscopy set): each changes the image and keeps its size and mode,
seeded, stronger with severity; corrupted items never share ids with clean ones; the CLI's options fail in one
line. The sweep through a real vLLM server is in ``test_eval_server.py``."""

from __future__ import annotations

import io
import typing

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import CORRUPTION_NAMES, RobustnessSpec
from dermvlm.evaluation.corruptions import NAMES, CorruptionError, corrupt, corrupt_bytes
from dermvlm.evaluation.items import corrupted
from dermvlm.evaluation.robustness import runs


@pytest.fixture(scope="module")
def lesion(isic_images) -> Image.Image:
    im = Image.open(isic_images[0]).convert("RGB")
    im.thumbnail((96, 96))
    return im


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float)).mean())


@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_changes_the_image_and_keeps_size_and_mode(name, lesion):
    small = lesion.resize((28, 28))
    for im in (lesion, small, lesion.convert("L")):
        for k in (1, 5):
            out = corrupt(im, name, k, seed=0)
            assert out.size == im.size and out.mode == im.mode
            assert diff(out, im) > 0, (name, k, im.size, im.mode)
    assert corrupt(lesion, name, 3).tobytes() == corrupt(lesion, name, 3).tobytes()  # seeded


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "defocus_blur", "brightness_down",
                                  "contrast_down", "pixelate"])
def test_severity_5_departs_further_than_severity_1(name, lesion):
    assert diff(corrupt(lesion, name, 5), lesion) > diff(corrupt(lesion, name, 1), lesion)


def test_names_severities_and_config_agree(lesion):
    assert tuple(typing.get_args(CORRUPTION_NAMES)) == NAMES
    with pytest.raises(CorruptionError, match="unknown corruption 'fog'"):
        corrupt(lesion, "fog", 1)
    with pytest.raises(CorruptionError, match="outside 1-5"):
        corrupt(lesion, "pixelate", 6)
    assert runs(RobustnessSpec(corruptions=["pixelate"], severities=[1, 5]))[0][0] == "clean"
    with pytest.raises(ValueError, match="outside 1-5"):
        RobustnessSpec(severities=[0])


def test_corrupted_items_have_their_own_ids_and_images(lesion):
    buf = io.BytesIO()
    lesion.save(buf, "JPEG")
    rows = [{"id": "a1", "question": "q", "image": buf.getvalue()}]
    out = corrupted(rows, "characters", 4)
    assert out[0]["id"] == "a1~characters-4" and out[0]["corruption"] == "characters-4"
    assert out[0]["image"] != rows[0]["image"] and rows[0]["id"] == "a1"  # the clean rows are untouched
    assert Image.open(io.BytesIO(out[0]["image"])).size == lesion.size
    assert corrupt_bytes(rows[0]["image"], "characters", 4) == out[0]["image"]


@pytest.mark.parametrize(("args", "expect"), [
    (["--corruption", "pixelate"], "--corruption NAME and --severity K"),
    (["--corruption", "fog", "--severity", "2"], "unknown corruption 'fog'"),
    (["--corruption", "pixelate", "--severity", "2", "--robustness"], "leave out --corruption"),
])
def test_cli_corruption_options_fail_in_one_line(args, expect, tmp_path):
    res = CliRunner().invoke(app, ["eval", "eval/sample.yaml", "--serve", str(tmp_path / "m"), *args])
    assert res.exit_code == 2 and expect in res.output and "Traceback" not in res.output
