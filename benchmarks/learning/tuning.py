"""The measurements on **val** that decided the v3 micro model and post-training settings (never test): one seed
(0), the low-resource regime, one job at a time. Each variant changes one thing against the one before it:

- vision stage alone (60 epochs, as the base's): label smoothing 0.1 vs 0 under the logit-adjusted loss, and 4 vs 16
  visual tokens (patch 7 on 28 px vs patch 4 on 32 px); scored by the temporary head on val (AUC, balanced
  accuracy at its argmax, which the logit-adjusted loss already balances) and the linear probe;
- language pretrain from the chosen vision model: the tower frozen vs trained at 0.1x the learning rate; scored by
  the served VLM on val (class-score AUC, accuracy and balanced accuracy as generated and prior-corrected);
- GRPO++ from the chosen base at a quarter of the arm's budget: 8 vs 4 completions per prompt (twice the prompts for
  the same completions), and a curriculum that ends at the 0.8 difficulty quantile instead of the hardest tail.

τ of the prior-corrected decode is fitted on the same val split here (in-sample, the same for every variant), so
the comparisons are of variants, not estimates of test performance. Results: ``benchmarks/results/
learning_tuning.json`` and the table this prints (docs/BENCHMARKS.md quotes it).

    python benchmarks/learning/tuning.py --run vision-ls0-t16      # one variant (its dependencies must be done)
    python benchmarks/learning/tuning.py --collect                 # tabulate every finished variant
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ROOT, arm_stages, base_config, base_run_config

OUT = ROOT / "runs" / "tuning"
REGIME, SEED = "low_resource", 0
VAL_SUITE = "benchmarks/learning/dermamnist_val.yaml"
QUARTER = 800  # post-training sequences of an arm variant (a quarter of the benchmark's budget)
# name → (kind, what it starts from, overrides)
VARIANTS: dict[str, dict[str, Any]] = {
    "vision-ls0.1-t4": {"kind": "vision", "vision": {"label_smoothing": 0.1}},
    "vision-ls0-t4": {"kind": "vision", "vision": {"label_smoothing": 0.0}},
    "vision-ls0-t16": {"kind": "vision", "vision": {"label_smoothing": 0.0},
                       "nano": {"patch_size": 4, "min_pixels": 32 * 32, "max_pixels": 32 * 32}},
    "pretrain-frozen": {"kind": "pretrain", "from": "vision-ls0-t4",
                        "pretrain": {"freeze": ["vision"], "lr_scale": {}}},
    "pretrain-tower0.1": {"kind": "pretrain", "from": "vision-ls0-t4",
                          "pretrain": {"freeze": [], "lr_scale": {"vision": 0.1}}},
    # 16 tokens raised the head's AUC: does the served VLM keep it after the language pretrain?
    "pretrain-frozen-t16": {"kind": "pretrain", "from": "vision-ls0-t16",
                            "pretrain": {"freeze": ["vision"], "lr_scale": {}}},
    "grpo_plus-g8": {"kind": "arm", "from": "pretrain-frozen", "arm": "grpo_plus"},
    # the same with the pre-v3 trainer (zero-variance replacement by re-padding a second generation call): run as
    # `python <driver> runs/tuning/configs/...` with dermvlm.training.grpo.make_trainer_class taken from the trainer.py
    # of commit 186a43d; tuning.py only collects it
    "grpo_plus-g8-oldzv": {"kind": "arm", "from": "pretrain-frozen", "arm": "grpo_plus", "trainer": "186a43d"},
    "grpo_plus-g4": {"kind": "arm", "from": "pretrain-frozen", "arm": "grpo_plus",
                     "trl": {"num_generations": 4}},
    "grpo_plus-g8-cap0.8": {"kind": "arm", "from": "pretrain-frozen", "arm": "grpo_plus",
                            "plus": {"curriculum_cap": 0.8}},
}


def model_dir(name: str, out: Path) -> Path:
    """The model a finished variant hands on (its last stage's)."""
    last = {"vision": "vision", "pretrain": "pretrain"}.get(VARIANTS[name]["kind"])
    run = out / REGIME / name
    return run / last / "model" if last else Path(json.loads((run / "manifest.json").read_text())["final_model"])


def variant_config(name: str, out: Path) -> dict[str, Any]:
    v = VARIANTS[name]
    if v["kind"] == "vision":
        cfg = base_run_config(REGIME, SEED, out)
        cfg["model"]["nano"].update(v.get("nano", {}))
        vision = cfg["stages"][0]
        vision.update(v["vision"])
        cfg["stages"], cfg["evaluate"] = [vision], []
    else:
        cfg = base_config(REGIME)
        cfg["seed"] = SEED
        cfg["model"] = {k: val for k, val in cfg["model"].items() if k != "nano"} | {
            "name_or_path": str(model_dir(v["from"], out))}
        if v["kind"] == "pretrain":
            pre = base_run_config(REGIME, SEED, out)["stages"][1]
            pre.update(v["pretrain"])
            cfg["stages"] = [pre]
        else:
            stages = arm_stages(v["arm"], QUARTER)
            for stage in stages:
                stage["trl"].update(v.get("trl", {}))
                if stage.get("plus") is not None:
                    stage["plus"].update(v.get("plus", {}))
            cfg["stages"] = stages
        cfg["evaluate"] = [VAL_SUITE]
    cfg["name"], cfg["output_dir"] = name, str(out / REGIME)
    return cfg


def head_scores(run: Path) -> dict[str, Any]:
    """The vision stage's temporary head on val: log-softmax scores per image, as an evaluation record holds them."""
    import torch
    from datasets import load_from_disk
    from safetensors.torch import load_file
    from torch import nn

    from dermvlm.config import ModelSpec
    from dermvlm.models.loading import load_model
    from dermvlm.training.vision import extract

    info = json.loads((run / "vision" / "head" / "head.json").read_text())
    vlm, processor = load_model(ModelSpec(name_or_path=str(run / "vision" / "model"), dtype="float32"),
                                run / "vision" / "model")
    dim = vlm.config.get_text_config().hidden_size

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "vlm", vlm)
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(info["classes"])))

    objective = Head()
    objective.load_state_dict({k: v for k, v in load_file(str(run / "vision" / "head" / "head.safetensors")).items()
                               if k.startswith("head.")})
    val = load_from_disk(str(run / "data" / "image_label"))["val"]
    _, logits = extract(objective, processor, val, vlm.device)
    scores = torch.log_softmax(torch.from_numpy(logits), -1).numpy()
    return {"ids": list(range(len(val))), "gold": list(val["label"]), "classes": info["classes"],
            "pred": [info["classes"][i] for i in scores.argmax(1)], "scores": scores.round(4).tolist()}


def collect(name: str, out: Path) -> dict[str, Any] | None:
    """A finished variant's val figures (None while it is not finished)."""
    import records
    import report

    v, run = VARIANTS[name], out / REGIME / name
    if v["kind"] == "vision":
        done = run / "vision" / "done.json"
        if not done.exists():
            return None
        info = json.loads(done.read_text())
        split = head_scores(run)
        row: dict[str, Any] = {"seconds": info["seconds"], "probe_val": info["probe"]["val"]["probe"],
                               "scored_by": "the vision stage's temporary head"}
    else:
        if not (run / "eval" / "learning_val" / "predictions.jsonl").exists():
            return None
        split = records._split(run, "learning_val")
        row = {"seconds": sum(json.loads(d.read_text())["seconds"] for d in run.glob("*/done.json")),
               "scored_by": "the served VLM (vLLM)"}
    row["code"] = records.run_code(run)  # the code the variant ran from (noted when it started)
    rec = {"kind": "vlm", "val": split, "test": split}
    view = report.view(rec, "test")
    for stat in [("scores", "auc"), ("as_generated", "accuracy"), ("as_generated", "balanced_accuracy"),
                 ("balanced", "balanced_accuracy"), ("balanced", "accuracy"), ("accuracy", "accuracy")]:
        value = report.stat_value(view, stat)
        row[f"{stat[0]}:{stat[1]}"] = round(value, 4) if value is not None else None
    row["tau_in_sample"] = view.get("tau")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="*", default=[], choices=list(VARIANTS))
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "learning_tuning.json")
    args = ap.parse_args()
    out = args.out.resolve()
    if args.run:
        from run import run_jobs

        if any(VARIANTS[name].get("trainer") for name in args.run):
            raise SystemExit("a variant with another trainer runs outside tuning.py (see VARIANTS); --collect reads it")
        jobs = [(f"{REGIME}/{name}", copy.deepcopy(variant_config(name, out)), None) for name in args.run]
        done = run_jobs(jobs, out, workers=1, records=False)
        if any(r["rc"] for r in done.values()):
            sys.exit(1)
    if args.collect:
        # a variant not found under --out keeps what an earlier collect wrote (with the code it ran from, if noted)
        earlier = json.loads(args.results.read_text())["variants"] if args.results.is_file() else {}
        rows = {name: collect(name, out) or earlier.get(name) for name in VARIANTS}
        result = {"regime": REGIME, "seed": SEED, "split": "val", "quarter_budget": QUARTER,
                  "variants": {n: {"changes": {k: v for k, v in VARIANTS[n].items() if k != "kind"}, **r}
                               for n, r in rows.items() if r}}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=2) + "\n")
        print("| variant | AUC | acc. as generated | bal. as generated | bal. prior-corrected | acc. prior-corrected "
              "for acc. | seconds |\n|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            if r:
                print(f"| {name} | {r['scores:auc']} | {r['as_generated:accuracy']} | "
                      f"{r['as_generated:balanced_accuracy']} | {r['balanced:balanced_accuracy']} | "
                      f"{r['accuracy:accuracy']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
