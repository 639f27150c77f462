"""The bad-input matrix: images, CSVs, configs, output folders, evaluation, serving and faults, as a hostile new
user would try them. Every case asserts the exit code, that the message names the file / field / row and what to
do, that no traceback reaches the user, and that nothing outside the command's own output folder changed (and
no temporary folder was left behind)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
         ["1 image(s) appear under two labels", "'nevus', 'psoriasis'", "on_conflict"]),
    Case("same bytes, two names, two labels", lambda t: (
        shutil.copy(isic(t)[0], t / "imgs" / "copy.jpg"),
        build_args(t, labels_csv(t, [*good_rows(t), ("copy.jpg", "psoriasis")])))[-1],
        ["1 image content(s) appear under two labels", "copy.jpg"]),
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
