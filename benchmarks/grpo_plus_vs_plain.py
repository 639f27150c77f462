"""GRPO++ vs plain GRPO on the same short run: the same pretrained nano model, data, seed and step count.

Run: ``.venv/bin/python benchmarks/grpo_plus_vs_plain.py [--steps 30]`` (a few minutes on 2 cores). The nano model is
first pretrained (full SFT on the bundled sample's recipe data), then each arm trains LoRA GRPO from it. Reports the
mean reward (the arm's own weighted reward), the graph's partial credit and the format reward over the first and
last quarter of steps. Writes ``benchmarks/results/grpo_plus_vs_plain.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "grpo_plus_vs_plain.json"


def quarter_means(history: list[dict], key: str) -> tuple[float | None, float | None]:
    vals = [h[key] for h in history if key in h and "loss" in h]
    if not vals:
        return None, None
    k = max(1, len(vals) // 4)
    return round(sum(vals[:k]) / k, 4), round(sum(vals[-k:]) / k, 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    a = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermvlm.config import ModelSpec, RecipeConfig, load_config, make_stage
    from dermvlm.manifest import versions
    from dermvlm.models.nano import build_nano
    from dermvlm.recipes.build import build
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.grpo import run_grpo
    from dermvlm.training.sft import run_sft

    res: dict = {"steps": a.steps, "pretrain_steps": a.pretrain_steps, "arms": {}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = d / "data"
        build(load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig), data, progress=False)
        build_nano(d / "base", "nano", 0)
        spec = ModelSpec(name_or_path=str(d / "base"), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0})
        pre = run_sft(make_stage(name="pretrain", use_lora=False,
                                trl={"max_steps": a.pretrain_steps, "learning_rate": 3e-3}),
                      spec, d / "base", recipe_dataset(data, ["reasoning_trace", "mcq", "open_diagnosis"]), d / "pre")
        prompts = recipe_dataset(data, ["grpo_prompt"])
        trl = {"max_steps": a.steps, "num_generations": 4, "per_device_train_batch_size": 8,
               "max_completion_length": 160, "learning_rate": 1e-4, "save_strategy": "no"}
        # Zero-weight rewards are logged but do not train: both arms report exact and partial credit alike.
        arms = {
            "plain_grpo": make_stage(name="plain", kind="grpo", trl=trl,
                                    rewards={"format": 0.2, "exact": 1.0, "partial_credit": 0.0}),
            "grpo_plus": make_stage(name="plus", kind="grpo", trl=trl,
                                   rewards={"format": 0.2, "partial_credit": 1.0, "reasoning_consistency": 0.3,
                                            "overlong": 0.2, "exact": 0.0},
                                   plus={"max_resample_rounds": 1, "ref_sync_steps": 4}),
        }
        for name, stage in arms.items():
            r = run_grpo(stage, spec, pre.model_dir, prompts, d / name)
            h = r.log_history
            res["arms"][name] = {
                "seconds": round(r.seconds, 1),
                "reward": quarter_means(h, "reward"),
                "partial_credit": quarter_means(h, "rewards/partial_credit_reward/mean"),
                "exact": quarter_means(h, "rewards/exact_reward/mean"),
                "format": quarter_means(h, "rewards/format_reward/mean"),
                "frac_reward_zero_std": quarter_means(h, "frac_reward_zero_std"),
                "zero_variance_after_replacement": quarter_means(h, "zero_variance/frac_after"),
                "completion_length": quarter_means(h, "completions/mean_length"),
                "rewards": r.extra.get("rewards"),
            }
    res.update(machine={"platform": platform.platform(), "cpus": os.cpu_count()}, versions=versions(),
               date=datetime.now(UTC).isoformat(timespec="seconds"),
               note="(first quarter mean, last quarter mean) of each logged value; arms use their own reward mix")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["arms"], indent=2))


if __name__ == "__main__":
    main()
