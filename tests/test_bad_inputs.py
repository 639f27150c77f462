"""The bad-input matrix: images, CSVs, configs, output folders, evaluation, serving and faults, as a hostile new
user would try them. Every case asserts the exit code, that the message names the file / field / row and what to
do, that no traceback reaches the user, and that nothing outside the command's own output folder changed (and
no temporary folder was left behind)."""

from __future__ import annotations

import base64
import csv
import fcntl
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DERMVLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
runner = CliRunner()


@dataclass
class Case:
    """``setup(tmp) -> argv``; ``expect``: substrings of the output; ``code``: the exit code; ``out``: paths (relative
    to tmp) the command may write; ``check``: an extra assertion on (tmp, output)."""

    name: str
    setup: Callable[[Path], list[str]]
    expect: list[str]
    code: int = 2
    out: list[str] = field(default_factory=list)
    check: Callable[[Path, str], None] | None = None
    cls: str = ""  # the class of failure it belongs to (the second sweep's classes; empty for the first sweep's)


def snapshot(root: Path, exclude: list[Path]) -> dict[str, tuple[int, int]]:
    files = {}
    for p in root.rglob("*"):
        if p.is_file() and not any(p == e or e in p.parents for e in exclude):
            st = p.stat()
            files[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return files


# ------------------------------------------------------------------ inputs the cases share


def isic(tmp: Path, n: int = 6) -> list[Path]:
    src = sorted((SHARED_DATA / "isic_cc0" / "images").glob("*.jpg"))[:n]
    (tmp / "imgs").mkdir(exist_ok=True)
    out = []
    for p in src:
        dst = tmp / "imgs" / p.name
        if not dst.exists():
            shutil.copy(p, dst)
        out.append(dst)
    return out


def labels_csv(tmp: Path, rows: list[tuple[str, str]], name: str = "labels.csv", encoding: str = "utf-8",
               header: tuple[str, str] = ("file", "dx")) -> Path:
    path = tmp / name
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def build_args(tmp: Path, labels: Path, *extra: str, recipe: str = "my_images.yaml", out: str = "out") -> list[str]:
    return ["data", "build", str(ROOT / "data_recipes" / recipe), "--out", str(tmp / out), "--images",
            str(tmp / "imgs"), "--labels", str(labels), "--image-col", "file", "--label-col", "dx", *extra]


def good_rows(tmp: Path) -> list[tuple[str, str]]:
    return [(p.name, "melanoma" if i % 2 else "nevus") for i, p in enumerate(isic(tmp))]


def with_bad_image(tmp: Path, name: str, write: Callable[[Path], None]) -> list[str]:
    rows = good_rows(tmp)
    write(tmp / "imgs" / name)
    return build_args(tmp, labels_csv(tmp, [*rows, (name, "melanoma")]))


def skipped_has(reason: str) -> Callable[[Path, str], None]:
    def check(tmp: Path, output: str) -> None:
        text = (tmp / "out" / "skipped.csv").read_text()
        assert reason in text, text

    return check


def run_config(tmp: Path, edit: Callable[[dict], None], name: str = "cfg.yaml") -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    cfg["output_dir"] = str(tmp / "runs")
    cfg["data"]["recipe"] = str(ROOT / "data_recipes" / "sample.yaml")
    cfg["evaluate"] = [str(ROOT / "eval" / "sample.yaml")]
    edit(cfg)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def stage_edit(index: int, **values) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        for key, value in values.items():
            if key == "trl":
                cfg["stages"][index]["trl"].update(value)
            else:
                cfg["stages"][index][key] = value

    return edit


def check_args(edit: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["config", "check", str(run_config(tmp, edit))]


SAMPLE_PHOTOS = sorted((ROOT / "src" / "dermvlm" / "sample_data" / "pad_ufes_20").glob("*.jpg"))


def own_photos(tmp: Path, labels: list[str]) -> Path:
    """Bundled CC BY photos under ``tmp/photos`` and a labels CSV (file, dx) naming them; the CSV's path."""
    (tmp / "photos").mkdir(exist_ok=True)
    for p in SAMPLE_PHOTOS[:len(labels)]:
        shutil.copy(p, tmp / "photos" / p.name)
    return labels_csv(tmp, [(p.name, dx) for p, dx in zip(SAMPLE_PHOTOS, labels, strict=False)], "photos.csv")


def sample_recipe(tmp: Path, kinds: dict) -> str:
    """A recipe of the bundled sample with only ``kinds``."""
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "sources": [{"name": "sample"}], "kinds": kinds}))
    return str(path)


def suite_of_everything(tmp: Path) -> str:
    """A suite asking about every image of the sample, the training split's included."""
    path = tmp / "all.yaml"
    path.write_text(yaml.safe_dump({"name": "all", "sources": [{"name": "sample"}], "split": "all"}))
    return str(path)


def foreign_folder(tmp: Path, name: str = "out") -> Path:
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    (folder / "thesis.docx").write_text("my own work")
    return folder


def intact(name: str = "out") -> Callable[[Path, str], None]:
    def check(tmp: Path, output: str) -> None:
        assert (tmp / name / "thesis.docx").read_text() == "my own work"

    return check


def bomb(path: Path) -> None:
    Image.new("L", (12000, 12000)).save(path, optimize=True)


CASES = [
    # ---- images (each a file among good ones: the build goes on, the file is skipped with its reason)
    Case("zero-byte image", lambda t: with_bad_image(t, "empty.jpg", lambda p: p.write_bytes(b"")),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("empty file")),
    Case("text file named .jpg", lambda t: with_bad_image(t, "text.jpg", lambda p: p.write_text("hello " * 50)),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("text.jpg")),
    Case("truncated jpeg", lambda t: with_bad_image(
        t, "cut.jpg", lambda p: p.write_bytes(isic(t)[0].read_bytes()[:2500])), ["skipped 1 file(s)"], 0, ["out"],
        skipped_has("corrupt or truncated")),
    Case("decompression bomb", lambda t: with_bad_image(t, "bomb.png", bomb), ["skipped 1 file(s)"], 0, ["out"],
         skipped_has("bomb.png")),
    Case("CMYK image is converted", lambda t: with_bad_image(
        t, "cmyk.jpg", lambda p: Image.open(isic(t)[0]).convert("CMYK").save(p)), ["wrote"], 0, ["out"]),
    Case("16-bit PNG is converted", lambda t: with_bad_image(
        t, "deep.png", lambda p: Image.open(isic(t)[0]).convert("I;16").save(p)), ["wrote"], 0, ["out"]),
    Case("palette + alpha is converted", lambda t: with_bad_image(
        t, "pal.png", lambda p: Image.open(isic(t)[0]).convert("P").save(p, transparency=0)), ["wrote"], 0, ["out"]),
    Case("missing image file", lambda t: build_args(t, labels_csv(t, [*good_rows(t), ("gone.jpg", "nevus")])),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("gone.jpg")),
    Case("every image unusable", lambda t: (
        (t / "imgs").mkdir(exist_ok=True), (t / "imgs" / "a.jpg").write_bytes(b""),
        build_args(t, labels_csv(t, [("a.jpg", "nevus")])))[-1], ["no image could be used"]),
    # ---- CSVs
    Case("labels CSV missing", lambda t: (isic(t), build_args(t, t / "nope.csv"))[-1], ["CSV not found", "nope.csv"]),
    Case("labels CSV empty", lambda t: (isic(t), (t / "e.csv").write_text(""), build_args(t, t / "e.csv"))[-1],
         ["e.csv: the CSV is empty"]),
    Case("header only", lambda t: (isic(t), build_args(t, labels_csv(t, [])))[-1], ["header but no rows"]),
    Case("no header line", lambda t: build_args(t, labels_csv(t, good_rows(t)[1:], header=good_rows(t)[0])),
         ["the first line names a file", "add a header line first"]),
    Case("missing column", lambda t: build_args(t, labels_csv(t, good_rows(t), header=("file", "diagnosis"))),
         ["labels.csv: missing column(s) dx", "the CSV has: file, diagnosis"]),
    Case("not UTF-8", lambda t: build_args(t, labels_csv(t, [*good_rows(t), ("x.jpg", "naevus \xe9")],
                                                          encoding="latin-1")),
         ["labels.csv: not valid utf-8", "re-save it as UTF-8"]),
    Case("unknown label, closest named", lambda t: build_args(t, labels_csv(t, [*good_rows(t)[:-1],
                                                                              (isic(t)[-1].name, "melanomma")])),
         ["'melanomma' (1 images)", "closest: melanoma", "label_map"]),
    Case("empty label cell", lambda t: build_args(t, labels_csv(t, [*good_rows(t)[:-1], (isic(t)[-1].name, "")])),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("empty label")),
    Case("path leaves --images", lambda t: (shutil.copy(isic(t)[0], t / "outside.jpg"), build_args(
        t, labels_csv(t, [*good_rows(t), ("../outside.jpg", "nevus")])))[-1],
        ["labels.csv: row 8, column 'file'", "points outside the images folder", "allow_outside_images"]),
    Case("absolute path elsewhere", lambda t: build_args(t, labels_csv(t, [*good_rows(t), ("/etc/hostname",
                                                                                            "nevus")])),
         ["row 8", "'/etc/hostname' points outside the images folder"]),
    Case("same image listed twice", lambda t: build_args(t, labels_csv(t, [*good_rows(t), good_rows(t)[0]])),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("duplicate image")),
    Case("same image, two labels", lambda t: build_args(t, labels_csv(t, [*good_rows(t),
                                                                          (good_rows(t)[0][0], "psoriasis")])),
         ["1 image(s) appear under two labels", "'nevus', 'psoriasis'", "(listed 2 times)", "on_conflict"]),
    Case("same bytes, two names, two labels", lambda t: (
        shutil.copy(isic(t)[0], t / "imgs" / "copy.jpg"),
        build_args(t, labels_csv(t, [*good_rows(t), ("copy.jpg", "psoriasis")])))[-1],
        ["1 image content(s) appear under two labels", "(2 files: ", "copy.jpg"]),
    Case("--images without --labels", lambda t: ["data", "build", str(ROOT / "data_recipes" / "my_images.yaml"),
                                                 "--out", str(t / "out"), "--images", str(t)],
         ["--images needs --labels CSV"]),
    Case("--root without --source", lambda t: ["data", "build", str(ROOT / "data_recipes" / "sample.yaml"), "--out",
                                               str(t / "out"), "--root", str(t)], ["--root needs --source NAME"]),
    Case("unknown source", lambda t: ["data", "build", str(ROOT / "data_recipes" / "sample.yaml"), "--out",
                                      str(t / "out"), "--source", "dermamnst", "--root", str(t)],
         ["unknown source 'dermamnst'"]),
    Case("recipe typo", lambda t: (
        (t / "r.yaml").write_text("name: r\nsources: [{name: sample}]\nkinds:\n  mcqq: {}\n"),
        ["data", "build", str(t / "r.yaml"), "--out", str(t / "out")])[-1],
         ["r.yaml: invalid RecipeConfig", "kinds.mcqq: unknown key 'mcqq' (did you mean 'mcq'?)"]),
    Case("recipe trains on test", lambda t: (
        (t / "r.yaml").write_text("name: r\nsources: [{name: sample}]\nkinds:\n  mcq: {splits: [train, test]}\n"),
        ["data", "build", str(t / "r.yaml"), "--out", str(t / "out")])[-1],
        ["kinds.mcq.splits includes 'test'"]),
    # ---- output folders: one rule (replace only what dermvlm wrote)
    Case("data build into a foreign folder", lambda t: (foreign_folder(t), build_args(t, labels_csv(t, good_rows(t)))
                                                        )[-1],
         ["--out", "was not written by dermvlm", "--force"], check=intact()),
    Case("data build --out .", lambda t: build_args(t, labels_csv(t, good_rows(t)), out="."),
         ["that is the working folder or one above it"]),
    Case("data build into a file", lambda t: ((t / "out").write_text("x"), build_args(t, labels_csv(t, good_rows(t))))
         [-1], ["exists and is a file"]),
    Case("data build over a nano build", lambda t: (
        runner.invoke(app, ["nano", "build", "--out", str(t / "out")]), build_args(t, labels_csv(t, good_rows(t))))
        [-1], ["holds the output of `dermvlm nano build`"]),
    Case("data build --force replaces a foreign folder", lambda t: (
        foreign_folder(t), build_args(t, labels_csv(t, good_rows(t)), "--force"))[-1], ["wrote"], 0, ["out"],
        lambda t, o: (t / "out" / "thesis.docx").exists() and pytest.fail("--force must replace the folder")),
    Case("nano build into a foreign folder", lambda t: (foreign_folder(t), ["nano", "build", "--out", str(t / "out")])
         [-1], ["was not written by dermvlm"], check=intact()),
    Case("nano build unknown preset", lambda t: ["nano", "build", "--out", str(t / "out"), "--preset", "huge"],
         ["Invalid value for '--preset'", "'huge' is not one of 'nano', 'micro'"]),
    Case("nano build bad pixel bounds", lambda t: ["nano", "build", "--out", str(t / "out"), "--min-pixels", "90000",
                                                   "--max-pixels", "100"], ["min_pixels"]),
    # ---- configs (config check: nothing trains, nothing is written)
    Case("config not found", lambda t: ["config", "check", str(t / "nope.yaml")], ["config file not found"]),
    Case("config is a folder", lambda t: ["config", "check", str(t)], ["(it is a folder)"]),
    Case("config not YAML", lambda t: ((t / "c.yaml").write_text("name: [x\n  y: z"),
                                       ["config", "check", str(t / "c.yaml")])[-1], ["c.yaml:", "not valid YAML"]),
    Case("config is a list", lambda t: ((t / "c.yaml").write_text("- a\n- b\n"),
                                        ["config", "check", str(t / "c.yaml")])[-1], ["top level must be a mapping"]),
    Case("config key typo", check_args(lambda c: c["model"]["lora"].update(rank=8)),
         ["model.lora.rank: unknown key 'rank' (did you mean 'r'?)"]),
    Case("stage named ..", check_args(stage_edit(2, name="..")), ["stages[2].name", "stage name '..'"]),
    Case("stage named base", check_args(stage_edit(2, name="base")), ["stages[2].name", "'base'"]),
    Case("stage name with a slash", check_args(stage_edit(2, name="a/b")), ["stages[2].name"]),
    Case("duplicate stage names", check_args(stage_edit(1, name="sft")), ["repeated: sft"]),
    Case("unknown stage kind", check_args(stage_edit(1, kind="sftt")), ["stages[1].kind: unknown stage kind"]),
    Case("field of another kind", check_args(stage_edit(1, rewards={"format": 1.0})),
         ["stages[1].rewards: unknown key 'rewards'"]),
    Case("learning rate as a string is converted", check_args(stage_edit(1, trl={"learning_rate": "3e-3"})),
         [": ok (5 stages"], 0),
    Case("max_steps 'ten'", check_args(stage_edit(1, trl={"max_steps": "ten"})),
         ["stages[1] (pretrain).trl.max_steps: 'ten' is not a valid int"]),
    Case("batch size 4.5", check_args(stage_edit(1, trl={"per_device_train_batch_size": 4.5})),
         ["per_device_train_batch_size: 4.5 is not a valid int"]),
    Case("batch size 0", check_args(stage_edit(1, trl={"per_device_train_batch_size": 0})),
         ["per_device_train_batch_size: must be at least 1"]),
    Case("max_steps -5", check_args(stage_edit(1, trl={"max_steps": -5})), ["max_steps: must be a positive step"]),
    Case("learning rate 0", check_args(stage_edit(1, trl={"learning_rate": 0})), ["learning_rate: must be greater"]),
    Case("DPO loss typo", check_args(stage_edit(4, trl={"loss_type": "sigmoidd"})),
         ["stages[4] (dpo).trl.loss_type: 'sigmoidd' is not a DPO loss type (did you mean 'sigmoid'?)"]),
    Case("GRPO loss typo", check_args(stage_edit(2, trl={"loss_type": "dappo"})), ["loss_type: 'dappo' is not one"]),
    Case("GRPO generations do not divide", check_args(stage_edit(2, trl={"num_generations": 3})),
         ["must be divisible by num_generations (3)"]),
    Case("TRL field typo", check_args(stage_edit(3, trl={"learning_rat": 1e-3})),
         ["unknown SFTConfig field 'learning_rat' (did you mean 'learning_rate'?)"]),
    Case("vision stage without an objective", check_args(stage_edit(0, supervised=False, contrastive=False)),
         ["enable 'supervised', 'contrastive' (or both) or 'self_supervised'"]),
    Case("evaluate suite misspelled", check_args(lambda c: c.update(evaluate=["eval/sampel.yaml"])),
         ["evaluate[0]: suite file not found: eval/sampel.yaml"]),
    Case("recipe missing", check_args(lambda c: c["data"].update(recipe="data_recipes/nope.yaml")),
         ["data.recipe: recipe file not found"]),
    Case("config: a stage reads a kind its recipe does not build", lambda t: check_args(lambda c: c["data"].update(
        recipe=sample_recipe(t, {"reasoning_trace": {}, "eval_item": {}})))(t),
        ["stages[0] (vision) reads kind 'image_label', which the recipe", "add `image_label: {}` under its kinds:"]),
    Case("config: held-out evaluation without eval_item rows", lambda t: check_args(lambda c: (c["data"].update(
        recipe=sample_recipe(t, {k: {} for k in ("image_label", "reasoning_trace", "mcq", "open_diagnosis", "yes_no",
                                                 "attribute", "conversation", "grpo_prompt", "preference_pair")})),
        c.update(evaluate=["test"])))(t), ["evaluate: 'test' evaluates the held-out test split", "eval_item"]),
    Case("config: the held-out split would be empty", check_args(lambda c: (
        c["data"].update(split={"val": 0.1, "test": 0.0}), c.pop("evaluate"))),
        ["the held-out test split would be empty (72 images in 71 groups, test fraction 0.0)", "evaluate: []"]),
    Case("config: a suite that asks about training images", lambda t: check_args(
        lambda c: c.update(evaluate=[suite_of_everything(t)]))(t),
        ["evaluate[0]", "images it asks about are in the run's training split", "evaluate: [test]"]),
    Case("config: a model folder without its processor", lambda t: check_args(lambda c: c.update(model={
        "name_or_path": ((t / "m").mkdir(), (t / "m" / "config.json").write_text('{"model_type": "qwen2_5_vl"}'),
                         str(t / "m"))[-1]}))(t), ["has no processor", "copy it from the base checkpoint"]),
    Case("config: --images/--labels keep the recipe's label_map", lambda t: [
        "data", "build", (t / "r.yaml").write_text(yaml.safe_dump({
            "name": "mine", "sources": [{"name": "csv", "label_map": {"spot": "melanoma"}}],
            "kinds": {"reasoning_trace": {}}})) and str(t / "r.yaml"), "--out", str(t / "out"), "--images",
        str(t / "photos"), "--labels", str(own_photos(t, ["spot", "BCC", "spot", "ACK"])), "--image-col", "file",
        "--label-col", "dx"], ["wrote", "4 images"], code=0, out=["out"]),
    Case("config: my_images.yaml has the kinds of every stage of nano-cpu.yaml", lambda t: check_args(
        lambda c: c.update(data={"recipe": str(ROOT / "data_recipes" / "my_images.yaml"), "images": "photos",
                                 "labels": str(own_photos(t, ["BCC", "ACK", "NEV", "SEK"] * 5)),
                                 "image_col": "file", "label_col": "dx", "split": {"val": 0.1, "test": 0.3}},
                           evaluate=["test"]))(t), ["ok (5 stages", "warning: small data"], code=0),
    Case("data build: three images said plainly", lambda t: [
        "data", "build", str(ROOT / "data_recipes" / "my_images.yaml"), "--out", str(t / "out"), "--images",
        str(t / "photos"), "--labels", str(own_photos(t, ["BCC", "ACK", "NEV"])), "--image-col", "file",
        "--label-col", "dx"], ["3 images", "small data: the train split has", "classes have fewer than 5 training"],
        code=0, out=["out"]),
    Case("model folder missing", check_args(lambda c: c.update(model={"name_or_path": "./models/none"})),
         ["model.name_or_path: no such model folder: ./models/none"]),
    Case("pipeline with a misspelled suite stops before building", lambda t: [
        "pipeline", str(run_config(t, lambda c: c.update(evaluate=["eval/sampel.yaml"])))],
        ["suite file not found"], check=lambda t, o: (t / "runs").exists() and pytest.fail("nothing may be built")),
    Case("pipeline run folder not written by it", lambda t: (
        foreign_folder(t / "runs" if (t / "runs").mkdir() is None else t, "nano-cpu"),
        ["pipeline", str(run_config(t, lambda c: None))])[-1],
        ["was not written by `dermvlm pipeline`"], check=lambda t, o: intact("runs/nano-cpu")(t, o)),
    Case("train: several stages of a kind", lambda t: ["train", "sft", str(run_config(t, lambda c: None))],
         ["2 sft stages (pretrain, sft); choose one with --stage"]),
    Case("train: unknown kind", lambda t: ["train", "rlhf", str(run_config(t, lambda c: None))],
         ["kind 'rlhf': choose one of"]),
    Case("train: no stage of that name", lambda t: ["train", "sft", str(run_config(t, lambda c: None)), "--stage",
                                                    "nope"], ["no sft stage named 'nope'"]),
    Case("pipeline --from unknown stage", lambda t: ["pipeline", str(run_config(t, lambda c: None)), "--from", "x"],
         ["--from 'x': no such stage"]),
    # ---- evaluation (no server needed: each fails before one starts)
    Case("eval: both --endpoint and --serve", lambda t: ["eval", str(ROOT / "eval" / "sample.yaml"), "--endpoint",
                                                         "http://127.0.0.1:9/v1", "--model", "m", "--serve", str(t)],
         ["give exactly one of --endpoint"]),
    Case("eval: --endpoint without --model", lambda t: ["eval", str(ROOT / "eval" / "sample.yaml"), "--endpoint",
                                                        "http://127.0.0.1:9/v1"], ["--endpoint needs --model"]),
    Case("eval: suite not found", lambda t: ["eval", str(t / "none.yaml"), "--endpoint", "http://127.0.0.1:9/v1",
                                             "--model", "m", "--out", str(t / "ev")], ["none.yaml"], out=["ev"]),
    Case("eval: --concurrency 0", lambda t: ["eval", str(ROOT / "eval" / "sample.yaml"), "--endpoint",
                                             "http://127.0.0.1:9/v1", "--model", "m", "--concurrency", "0"],
         ["--concurrency"]),
    Case("eval: --limit -1", lambda t: ["eval", str(ROOT / "eval" / "sample.yaml"), "--endpoint",
                                        "http://127.0.0.1:9/v1", "--model", "m", "--limit", "-1"], ["--limit"]),
    Case("eval compare of a missing folder", lambda t: ["eval", "compare", str(t / "none")], ["none"], 2),
    # ---- serving (fails before vLLM starts)
    Case("serve: model folder missing", lambda t: ["serve", str(t / "none")], ["model folder not found"], 2),
    Case("serve: bad --lora", lambda t: ["serve", str(t), "--lora", "nodir"], ["--lora 'nodir': expected NAME=DIR"]),
    Case("serve: LoRA folder without adapter", lambda t: ["serve", str(t), "--lora", f"a={t}"],
         ["no adapter_config.json"]),
    # ---- the chat app (fails before anything starts)
    Case("chat: neither --endpoint nor --serve", lambda t: ["chat"], ["give either --endpoint URL --model NAME"]),
    Case("chat: --endpoint without --model", lambda t: ["chat", "--endpoint", "http://127.0.0.1:9/v1"],
         ["--endpoint needs --model NAME"]),
    Case("chat: --serve a missing folder", lambda t: ["chat", "--serve", str(t / "none")], ["model folder not found"]),
    # ---- merge
    Case("merge: not an adapter", lambda t: ["model", "merge", str(t), "--out", str(t / "m")],
         ["not a LoRA adapter folder"]),
]


# ------------------------------------------------------------------ the second sweep: its classes, two or more each

class FakeEndpoint(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose chat answers depend on the first path segment: ``ok`` answers, ``e500``
    fails, ``html`` / ``empty`` / ``nochoices`` / ``cut`` answer something that is not a chat completion; every
    ``/v1/models`` lists model ``m``. ``/files/NAME`` serves ``FILES[NAME]`` (a download mirror)."""

    FILES: ClassVar[dict[str, bytes]] = {}

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        name = self.path.split("?")[0].removeprefix("/files/")
        if self.path.startswith("/files/"):
            return self._send(200, self.FILES[name], "application/octet-stream") if name in self.FILES \
                else self._send(404, b"{}")
        self._send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "root": "m"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        mode = self.path.strip("/").split("/")[0]
        answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}]}
        replies = {"e500": (500, b'{"error": {"message": "judge down"}}', "application/json"),
                   "html": (200, b"<html><body>Welcome to nginx</body></html>", "text/html"),
                   "empty": (200, b"{}", "application/json"), "cut": (200, b'{"choices": [{"mess', "application/json"),
                   "nochoices": (200, b'{"id": "x", "choices": []}', "application/json")}
        self._send(*replies.get(mode, (200, json.dumps(answer).encode(), "application/json")))


class QuietServer(http.server.ThreadingHTTPServer):
    """The fake endpoint's server: a client that hangs up mid-answer (as the eval client does on an HTML page) is
    not printed as a traceback into the captured output of the command under test."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


_ENDPOINT: list[int] = []


def endpoint(mode: str = "ok") -> str:
    """The base URL of the fake endpoint in ``mode`` (one server for the module, started on first use)."""
    if not _ENDPOINT:
        server = QuietServer(("127.0.0.1", 0), FakeEndpoint)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _ENDPOINT.append(server.server_address[1])
    return f"http://127.0.0.1:{_ENDPOINT[0]}/{mode}/v1"


def png_bytes(side: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (190, 120, 100)).save(buf, "PNG")
    return buf.getvalue()


def benchmark(tmp: Path, rows: int = 3, name: str = "bench.jsonl", broken_after: int | None = None) -> Path:
    """An open-question JSONL benchmark (answers are free text: the judge grades them)."""
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    lines = [json.dumps({"id": f"q{i}", "image": image if broken_after is None or i < broken_after else "bm90IGFu",
                         "question": "What is shown?", "answer": "a naevus"}) for i in range(rows)]
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def eval_args(tmp: Path, *extra: str, data: Path | None = None, mode: str = "ok") -> list[str]:
    return ["eval", str(ROOT / "eval" / "sample.yaml"), "--data", str(data or benchmark(tmp)), "--endpoint",
            endpoint(mode), "--model", "m", "--out", str(tmp / "ev"), *extra]


def judged(mode: str) -> Callable[[Path], list[str]]:
    return lambda t: eval_args(t, "--judge-endpoint", endpoint(mode), "--judge-model", "m")


def adapter(tmp: Path) -> Path:
    folder = tmp / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp / "base"), "r": 8}))
    return folder


_HELD: list[int] = []


def hold_run_lock(tmp: Path, name: str = "nano-cpu") -> None:
    """Take the run lock of ``runs/NAME`` as another process would (released by ``release_run_lock``)."""
    (tmp / "runs").mkdir(exist_ok=True)
    fd = os.open(tmp / "runs" / f".{name}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"`dermvlm pipeline` (pid 4242)\n")
    _HELD.append(fd)


def release_run_lock(tmp: Path, output: str) -> None:
    while _HELD:
        os.close(_HELD.pop())


def npz(images: tuple[int, ...]) -> bytes:
    """A DermaMNIST-shaped .npz whose train images have ``images`` shape (val/test: 2 images each)."""
    import numpy as np

    buf = io.BytesIO()
    arrays = {}
    for split, shape in (("train", images), ("val", (2, *images[1:])), ("test", (2, *images[1:]))):
        arrays[f"{split}_images"] = np.zeros(shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.zeros((shape[0], 1), dtype=np.int64)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def npz_claiming(n: int) -> bytes:
    """A small zip whose train_images header claims ``n`` images of 28 px (np.load would allocate them all)."""
    import zipfile

    import numpy as np

    good = zipfile.ZipFile(io.BytesIO(npz((2, 28, 28, 3))))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in good.infolist():
            data = good.read(info)
            if info.filename == "train_images.npy":
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                             "shape": (n, 28, 28, 3)})
                data = header.getvalue() + b"\0" * 1000
            z.writestr(info.filename, data)
    return out.getvalue()


def fetch_args(tmp: Path, name: str, content: bytes, size: str = "28") -> list[str]:
    FakeEndpoint.FILES[name] = content
    base = endpoint().removesuffix("/ok/v1") + "/files"
    return ["data", "fetch", "dermamnist", "--size", size, "--url", base, "--out", str(tmp / "dm")]


def outside_image() -> Path:
    """An image outside any test's folder (the shared data's first ISIC image)."""
    return sorted((SHARED_DATA / "isic_cc0" / "images").glob("*.jpg"))[0]


def csv_text(tmp: Path, text: str) -> Path:
    isic(tmp)
    path = tmp / "labels.csv"
    path.write_text(text)
    return path


def rows_text(tmp: Path) -> str:
    return "".join(f"{p.name},{'melanoma' if i % 2 else 'nevus'}\n" for i, p in enumerate(isic(tmp)))


def shorter_than(n: int) -> Callable[[Path, str], None]:
    def check(tmp: Path, output: str) -> None:
        assert len(output) < n, f"{len(output)} characters echoed"

    return check


BOMB = "bomb:\n  - &a [x, x, x, x, x, x, x, x, x]\n  - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "  - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n  - [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
HUGE = "x" * 1_000_000


def with_bomb(path: Path) -> Path:
    path.write_text(path.read_text() + BOMB.replace("bomb:", "# alias bomb\nzz_bomb:"))
    return path


SECOND_SWEEP = [
    # ---- data loss: one output rule for every command that writes; run names; a lock per run
    Case("merge into a foreign folder", lambda t: (foreign_folder(t), ["model", "merge", str(adapter(t)), "--out",
                                                                      str(t / "out")])[-1],
         ["--out", "was not written by dermvlm", "--force"], check=intact(), cls="output rule"),
    Case("merge onto its own adapter", lambda t: ["model", "merge", str(adapter(t)), "--out", str(t / "adapter")],
         ["that is (or holds, or is inside) the input"], cls="output rule",
         check=lambda t, o: json.loads((t / "adapter" / "adapter_config.json").read_text())),
    Case("eval into a foreign folder", lambda t: (foreign_folder(t, "ev"), eval_args(t))[-1],
         ["--out", "was not written by dermvlm"], check=intact("ev"), cls="output rule"),
    Case("kg export over a file", lambda t: ((t / "mine.json").write_text("my notes"),
                                            ["kg", "export", "--out", str(t / "mine.json")])[-1],
         ["the file exists", "--force"], cls="output rule",
         check=lambda t, o: (t / "mine.json").read_text() == "my notes" or pytest.fail("replaced")),
    Case("init --out naming a folder", lambda t: ((t / "cfgdir").mkdir(), ["init", "--images", str(t / "imgs"),
                                                 "--labels", str(labels_csv(t, good_rows(t))), "--out",
                                                 str(t / "cfgdir"), "--force"])[-1],
         ["--out", "cfgdir: is a folder; give a file name"], cls="output rule"),
    Case("run name with ..", check_args(lambda c: c.update(name="../../escaped")),
         ["run name '../../escaped'", "no '/' or '..'"], cls="output rule"),
    Case("pipeline with an absolute run name", lambda t: ["pipeline", str(run_config(
        t, lambda c: c.update(name=str(t / "elsewhere"))))], ["run name", "no '/' or '..'"], cls="output rule",
        check=lambda t, o: (t / "elsewhere").exists() and pytest.fail("a folder outside output_dir was made")),
    Case("pipeline while another holds the run", lambda t: (hold_run_lock(t), ["pipeline", str(run_config(
        t, lambda c: None))])[-1], ["`dermvlm pipeline` (pid 4242) is already training this run"],
        cls="output rule", check=release_run_lock),
    Case("train while another holds the run", lambda t: (hold_run_lock(t), ["train", "dpo", str(run_config(
        t, lambda c: None))])[-1], ["(pid 4242) is already training this run"], cls="output rule",
        check=release_run_lock),
    # ---- bounded resources: YAML aliases refused in every file read, echoed values cut, downloads checked
    Case("alias bomb in a run config", lambda t: ["config", "check", str(with_bomb(run_config(t, lambda c: None)))],
         ["YAML aliases are not accepted"], cls="bounded"),
    Case("alias bomb in a recipe", lambda t: (shutil.copy(ROOT / "data_recipes" / "sample.yaml", t / "r.yaml"),
                                              ["data", "build", str(with_bomb(t / "r.yaml")), "--out",
                                               str(t / "out")])[-1],
         ["r.yaml", "YAML aliases are not accepted"], cls="bounded"),
    Case("alias bomb in a suite", lambda t: (shutil.copy(ROOT / "eval" / "sample.yaml", t / "s.yaml"),
                                             ["eval", str(with_bomb(t / "s.yaml")), "--endpoint", endpoint(),
                                              "--model", "m"])[-1], ["s.yaml", "YAML aliases"], cls="bounded"),
    Case("a megabyte value in a config", check_args(stage_edit(4, trl={"loss_type": HUGE})),
         ["loss_type", "more characters"], cls="bounded", check=shorter_than(3000)),
    Case("a megabyte option value", lambda t: ["eval", str(ROOT / "eval" / "sample.yaml"), "--endpoint", endpoint(),
                                               "--model", "m", "--corruption", HUGE, "--severity", "1"],
         ["--corruption", "more characters"], cls="bounded", check=shorter_than(3000)),
    Case("fetch: a .npz claiming a billion images", lambda t: fetch_args(t, "dermamnist.npz",
                                                                         npz_claiming(10**9)),
         ["claims 1,000,000,000 images"], cls="bounded",
         check=lambda t, o: (t / "dm").exists() and pytest.fail("a failed fetch must leave nothing")),
    Case("fetch: images of another size", lambda t: fetch_args(t, "dermamnist.npz", npz((3, 64, 64, 3))),
         ["the images are 64 px, not the 28 px asked for"], cls="bounded"),
    Case("eval --limit reads only the rows it asks", lambda t: eval_args(
        t, "--limit", "2", data=benchmark(t, rows=6, broken_after=3)), ["report:"], 0, ["ev"], cls="bounded"),
    # ---- a dependency's bad answer: an error naming it, non-zero exit when the work was not done
    Case("judge answers HTTP 500", judged("e500"), ["the judge 'm' at", "e500/v1 gave no verdict on 3 answers",
                                                    "HTTP 500"], 1, ["ev"], cls="dependency"),
    Case("judge answers an HTML page", judged("html"), ["gave no verdict", "not a chat completion"], 1, ["ev"],
         cls="dependency"),
    Case("judge answers {}", judged("empty"), ["gave no verdict", "not a chat completion"], 1, ["ev"],
         cls="dependency"),
    Case("judge answers no choices", judged("nochoices"), ["gave no verdict", "not a chat completion"], 1, ["ev"],
         cls="dependency"),
    Case("judge answers cut-off JSON", judged("cut"), ["gave no verdict"], 1, ["ev"], cls="dependency"),
    Case("fetch: the mirror answers an HTML page", lambda t: fetch_args(
        t, "dermamnist.npz", b"<html><body>Please log in</body></html>"), ["not a DermaMNIST .npz (not a zip",
                                                                          "error page"], cls="dependency"),
    Case("endpoint answers an HTML page", lambda t: eval_args(t, mode="html"),
         ["html/v1: POST /chat/completions answered something that is not a chat completion"], 2, ["ev"],
         cls="dependency"),
    # ---- messages that name the file, row or field and what to do
    Case("CSV with a stray quote", lambda t: build_args(t, csv_text(t, "file,dx\n" + rows_text(t).replace(
        ",nevus\n", ',"nevus\n', 1))), ["labels.csv: lines 2-", "a quote (\") opened on line 2"], cls="messages"),
    Case("CSV label with a line break", lambda t: build_args(t, csv_text(t, "file,dx\n" + rows_text(t) + (
        f'{isic(t)[0].name},"mela\nnoma"\n'))), ["labels.csv: lines 8-9 are read as one row"], cls="messages"),
    Case("CSV header with spaces", lambda t: build_args(t, csv_text(t, "file, dx \n" + rows_text(t))),
         ["missing column(s) dx", "' dx '", "has spaces around it"], cls="messages"),
    Case("CSV row with an empty image cell", lambda t: build_args(t, csv_text(t, "file,dx\n" + rows_text(t)
                                                                             + ",nevus\n")),
         ["skipped 1 file(s)"], 0, ["out"], skipped_has("empty 'file' cell"), cls="messages"),
    Case("no image usable says why", lambda t: (
        (t / "imgs").mkdir(exist_ok=True), (t / "imgs" / "a.jpg").write_bytes(b""), (t / "imgs" / "b.jpg").write_text(
            "hi"), build_args(t, labels_csv(t, [("a.jpg", "nevus"), ("b.jpg", "nevus")])))[-1],
         ["no image could be used: all 2 were skipped", "a.jpg: empty file"], cls="messages"),
    Case("Latin-1 benchmark TSV", lambda t: ((t / "b.tsv").write_bytes(
        "index\timage\tquestion\tanswer\n1\tx\tQ?\tna\xefve\n".encode("latin-1")),
        eval_args(t, data=t / "b.tsv"))[-1], ["b.tsv: line 2: not UTF-8", "re-save"], cls="messages"),
    Case("Latin-1 benchmark JSONL", lambda t: ((t / "b.jsonl").write_bytes(
        benchmark(t, rows=1).read_bytes() + b'{"question": "caf\xe9"}\n'), eval_args(t, data=t / "b.jsonl"))[-1],
         ["b.jsonl: line 2: not UTF-8"], cls="messages"),
    Case("eval --out naming a file", lambda t: ((t / "ev").write_text("x"), eval_args(t))[-1],
         ["--out", "exists and is a file"], cls="messages"),
    Case("fetch --out naming a file", lambda t: ((t / "dm").write_text("x"),
                                                 fetch_args(t, "dermamnist.npz", npz((2, 28, 28, 3))))[-1],
         ["--out", "exists and is a file"], cls="messages"),
    Case("eval --serve of a stage folder", lambda t: (
        (t / "stage" / "model").mkdir(parents=True), (t / "stage" / "model" / "config.json").write_text("{}"),
        ["eval", str(ROOT / "eval" / "sample.yaml"), "--serve", str(t / "stage"), "--out", str(t / "ev")])[-1],
         ["stage: not a model folder (no config.json)", "stage/model: serve that"], cls="messages"),
    Case("chat --serve of a stage folder", lambda t: (
        (t / "stage" / "model").mkdir(parents=True), (t / "stage" / "model" / "config.json").write_text("{}"),
        ["chat", "--serve", str(t / "stage")])[-1], ["not a model folder", "serve that"], cls="messages"),
    Case("learning rate 1e308", check_args(stage_edit(3, trl={"learning_rate": 1e308})),
         ["sft).trl.learning_rate", "in (0, 1]"], cls="messages"),
    Case("learning rate true", check_args(stage_edit(1, trl={"learning_rate": True})),
         ["trl.learning_rate: true is not a float"], cls="messages"),
    Case("seed 2**70", check_args(lambda c: c.update(seed=2**70)), ["seed", "4294967295"], cls="messages"),
    Case("trl seed 2**70", check_args(stage_edit(2, trl={"seed": 2**70})), ["trl.seed", "at most 4,294,967,295"],
         cls="messages"),
    Case("max_steps 10**18", check_args(stage_edit(1, trl={"max_steps": 10**18})),
         ["max_steps: must be at most 10,000,000"], cls="messages"),
    Case("save_steps 10**12", check_args(stage_edit(3, trl={"save_steps": 10**12})),
         ["save_steps: must be at most"], cls="messages"),
    Case("chat page beyond loopback without a password", lambda t: ["chat", "--endpoint", endpoint(), "--model", "m",
                                                                    "--host", "0.0.0.0"],
         ["--host 0.0.0.0", "--page-password"], cls="messages"),
    # ---- eval --data may not send files from anywhere on disk
    Case("benchmark image_path absolute", lambda t: ((t / "b.jsonl").write_text(json.dumps(
        {"image_path": str(outside_image()), "question": "Q?", "answer": "a"}) + "\n"),
        eval_args(t, data=t / "b.jsonl"))[-1],
        ["row 1, field image_path", "points outside the benchmark file's folder", "--allow-outside-images"],
        cls="outside paths"),
    Case("benchmark image_path with ..", lambda t: (isic(t), (t / "sub").mkdir(), (t / "sub" / "b.jsonl").write_text(
        json.dumps({"image_path": "../imgs/" + isic(t)[0].name, "question": "Q?", "answer": "a"}) + "\n"),
        eval_args(t, data=t / "sub" / "b.jsonl"))[-1], ["points outside the benchmark file's folder"],
        cls="outside paths"),
    Case("benchmark image_path outside, allowed", lambda t: ((t / "b.jsonl").write_text(json.dumps(
        {"image_path": str(outside_image()), "question": "Q?", "answer": "a"}) + "\n"),
        eval_args(t, "--allow-outside-images", data=t / "b.jsonl"))[-1], ["report:"], 0, ["ev"],
        cls="outside paths"),
    Case("audit: a labels path leaves --images", lambda t: (
        shutil.copy(isic(t)[0], t / "outside.jpg"),
        ["data", "audit", str(ROOT / "data_recipes" / "my_images.yaml"), "--out", str(t / "out"), "--images",
         str(t / "imgs"), "--labels", str(labels_csv(t, [*good_rows(t), ("../outside.jpg", "nevus")])),
         "--image-col", "file", "--label-col", "dx"])[-1], ["row 8, column 'file'", "points outside the images"],
        cls="outside paths"),
]
CASES += SECOND_SWEEP
SECOND_SWEEP_CLASSES = {"output rule", "bounded", "dependency", "messages", "outside paths"}


@pytest.mark.parametrize("cls", sorted(SECOND_SWEEP_CLASSES))
def test_each_class_has_two_or_more_cases_on_different_commands(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = set()
    for i, case in enumerate(c for c in SECOND_SWEEP if c.cls == cls):
        (tmp_path / str(i)).mkdir()
        argv = case.setup(tmp_path / str(i))
        release_run_lock(tmp_path, "")
        commands.add(" ".join(argv[:2] if argv[0] in ("data", "model", "kg", "config", "nano") else argv[:1]))
    assert len(commands) >= 2, (cls, commands)



# ---- security at the front door (in process, no vLLM: a request that passes the policy gets 502 from the absent
# upstream, a refused one 400/413 and never reaches it)

DATA_URL = "data:image/png;base64," + base64.b64encode(png_bytes(8)).decode()
CANARY = "http://127.0.0.1:9/x.png"


def chat_body(*parts: dict, **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "Dx?"}]}],
            **extra}


@dataclass
class Request:
    name: str
    body: dict | bytes
    status: int
    expect: str


REQUESTS = [
    Request("image_pil part with a URL", chat_body({"type": "image_pil", "image_pil": CANARY}), 400,
            "content part type 'image_pil' is not accepted"),
    Request("type-less part with a uuid", chat_body({"uuid": "u1", "image_pil": CANARY}), 400,
            "a content part without a 'type'"),
    Request("input_audio part", chat_body({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
            400, "'input_audio' is not accepted"),
    Request("video_url part", chat_body({"type": "video_url", "video_url": {"url": CANARY}}), 400,
            "'video_url' is not accepted"),
    Request("image_embeds part", chat_body({"type": "image_embeds", "image_embeds": "AAAA"}), 400,
            "'image_embeds' is not accepted"),
    Request("image_url part hiding a second key", chat_body({"type": "image_url", "image_url": {"url": DATA_URL},
                                                             "image_pil": CANARY}), 400, "with key 'image_pil'"),
    Request("a repeated key", b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", '
                              b'"type": "image_pil", "text": "x", "image_pil": "http://127.0.0.1:9/"}]}]}', 400,
            "appears twice"),
    Request("responses input_image", {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": CANARY}]}]}, 400, "'input_image' is not accepted"),
    Request("n=1000", chat_body({"type": "image_url", "image_url": {"url": DATA_URL}}, n=1000), 400,
            "n: at most 16 completions"),
    Request("max_tokens 10**9", chat_body({"type": "image_url", "image_url": {"url": DATA_URL}},
                                          max_tokens=10**9), 400, "max_tokens: at most 1024 tokens"),
    Request("best_of 64", {"model": "m", "prompt": "hi", "best_of": 64}, 400, "best_of: at most 16"),
    Request("a data-URL image and text pass", chat_body({"type": "image_url", "image_url": {"url": DATA_URL}}),
            502, "vLLM did not answer"),
]


@pytest.mark.parametrize("req", REQUESTS, ids=[r.name for r in REQUESTS])
def test_front_door_request(req: Request, tmp_path):
    import asyncio

    import httpx

    from dermvlm.serving.proxy import FrontDoor

    async def send() -> httpx.Response:
        door = FrontDoor(str(tmp_path / "absent.sock"), "k", "internal", frozenset(), max_tokens=1024)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://t") as client:
            body = req.body if isinstance(req.body, bytes) else json.dumps(req.body).encode()
            return await client.post("/v1/chat/completions", content=body, headers={
                "Authorization": "Bearer k", "content-type": "application/json"})

    r = asyncio.run(send())
    assert r.status_code == req.status and req.expect in r.json()["error"]["message"], (r.status_code, r.text[:300])


def test_front_door_request_body_limit(tmp_path, monkeypatch):
    import asyncio

    import httpx

    from dermvlm.serving import proxy

    monkeypatch.setattr(proxy, "MAX_BODY", 1 << 20)

    async def send() -> httpx.Response:
        door = proxy.FrontDoor(str(tmp_path / "absent.sock"), None, None, frozenset())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://t") as client:
            return await client.post("/v1/chat/completions", content=b"x" * (2 << 20))

    r = asyncio.run(send())
    assert r.status_code == 413 and "over 1 MiB" in r.json()["error"]["message"]


def test_an_error_vllm_answers_reaches_the_client_whole_with_its_message_cut():
    """vLLM echoes refused values; the front door cuts the message and must still send the whole (new) body (it once
    sent the headers of the cut answer and no body: the client read 'peer closed connection')."""
    import asyncio

    import httpx

    from dermvlm.echo import LINE_LIMIT
    from dermvlm.serving.proxy import _clipped, _pump

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def relay() -> None:
        upstream = httpx.Response(400, headers={"content-type": "application/json"}, stream=httpx.ByteStream(
            json.dumps({"error": {"message": "bad value: " + HUGE, "code": 400}}).encode()))
        await _pump(await _clipped(upstream), send)

    asyncio.run(relay())
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 400 and int(headers[b"content-length"]) == len(body)
    message = json.loads(body)["error"]["message"]
    assert message.startswith("bad value: ") and message.endswith("more characters)")
    assert len(message) < LINE_LIMIT + 40


def test_matrix_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch):
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = case.setup(work)
    allowed = [work / o for o in case.out]
    before = snapshot(work, allowed)
    result = runner.invoke(app, argv)
    output = result.output
    assert result.exit_code == case.code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    for text in case.expect:
        assert text in output, f"{text!r} not in {output!r}"
    if case.code != 0:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) <= 1, output  # one clear line (config errors list their fields under it)
    assert snapshot(work, allowed) == before  # nothing outside the command's own output changed
    assert not [p for p in work.rglob(".*.tmp-*")], "a temporary folder was left behind"
    if case.check:
        case.check(work, output)


def _mount(kind: str, target: Path) -> bool:
    target.mkdir(parents=True)
    options = "ro" if kind == "ro" else "size=256k"
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True).returncode
    return ok == 0


@pytest.mark.parametrize(("kind", "expect"), [("ro", "read-only"), ("full", "no space left")])
def test_read_only_and_full_disks_give_one_line(kind, expect, tmp_path):
    target = tmp_path / kind
    if not _mount(kind, target):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = subprocess.run([sys.executable, "-m", "dermvlm.cli", "nano", "build", "--out", str(target / "m")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expect in lines[0], proc.stderr[-2000:]
        assert not list(target.iterdir())  # the atomic build left nothing
        if kind == "full":
            return  # --debug is checked once, on the read-only disk
        debug = subprocess.run([sys.executable, "-m", "dermvlm.cli", "--debug", "nano", "build", "--out",
                                str(target / "m")], capture_output=True, text=True, timeout=300)
        assert "Traceback" in debug.stderr  # --debug shows it
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_stage_folder_not_written_by_the_pipeline_is_refused(tmp_path):
    cfg = run_config(tmp_path, lambda c: c.update(stages=c["stages"][:1], evaluate=[]))
    stage_dir = tmp_path / "runs" / "nano-cpu" / "vision"
    stage_dir.mkdir(parents=True)
    (stage_dir / "notes.txt").write_text("mine")
    (tmp_path / "runs" / "nano-cpu" / "manifest.json").write_text(json.dumps({}))
    result = runner.invoke(app, ["pipeline", str(cfg)])
    assert result.exit_code == 2 and "was not written by the pipeline (no key.txt)" in result.output
    assert (stage_dir / "notes.txt").read_text() == "mine"


def test_a_disk_filling_during_a_checkpoint_is_named(tmp_path):
    """torch.save on a full disk raises ``RuntimeError: [enforce fail at inline_container.cc] ...``; the trainer's
    checkpoint save turns it into the one-line disk error naming the folder."""
    import errno

    import torch

    from dermvlm.disk import write_failure

    target = tmp_path / "full"
    if not _mount("full", target):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(RuntimeError) as raised, (target / "optimizer.pt").open("wb") as fh:
            torch.save({"w": torch.zeros(200_000)}, fh)  # a file object: closed here, so the disk can be unmounted
        assert "inline_container.cc" in str(raised.value)
        err = write_failure(raised.value, target)
        assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == str(target)
        other = RuntimeError("CUDA out of memory")
        assert write_failure(other, target) is other
    finally:
        assert subprocess.run(["umount", str(target)], capture_output=True).returncode == 0, "the tmpfs is busy"
