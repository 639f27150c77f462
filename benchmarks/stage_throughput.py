"""Training throughput per stage on the nano config: every stage of ``configs/nano-cpu.yaml`` (full pretrain, GRPO++,
SFT, DPO on the bundled sample) run by the pipeline in a scratch folder, with TRL's own samples/s per stage.

Run: ``.venv/bin/python benchmarks/stage_throughput.py [--keep DIR]`` (about 2 minutes on 2 cores). Writes
``benchmarks/results/stage_throughput.json``; the final model is left in ``--keep`` (default
``runs/bench-nano``) so that ``eval_throughput.py`` can serve it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "stage_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "nano-cpu.yaml"))
    parser.add_argument("--keep", default=str(ROOT / "runs"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermvlm.config import RunConfig, load_config
    from dermvlm.manifest import versions
    from dermvlm.pipeline import run_dir, run_pipeline

    cfg = load_config(args.config, RunConfig)
    cfg = cfg.model_copy(update={"name": "bench-nano", "output_dir": args.keep})
    out_dir = run_dir(cfg)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a fresh run: reused stages would report no time
    final = run_pipeline(cfg, args.config, evaluate=False)
    stages = {}
    for stage in cfg.stages:
        done = json.loads((out_dir / stage.name / "done.json").read_text())
        history = json.loads((out_dir / stage.name / "log_history.json").read_text())
        summary = next((h for h in reversed(history) if "train_samples_per_second" in h), {})
        stages[stage.name] = {
            "kind": stage.kind, "lora": stage.use_lora, "steps": stage.trl.get("max_steps"),
            "batch": stage.trl.get("per_device_train_batch_size"),
            "samples_per_s": summary.get("train_samples_per_second"),
            "train_seconds": summary.get("train_runtime"), "stage_seconds": done.get("seconds"),
            "peak_rss_mb": done.get("peak_rss_mb")}
    result = {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
              else args.config, "final_model": str(final), "stages": stages,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "omp_threads": os.environ.get("OMP_NUM_THREADS")},
              "versions": versions(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in stages.items():
        print(f"{name:10s} {s['kind']:5s} {s['samples_per_s']} samples/s ({s['stage_seconds']} s, "
              f"{s['peak_rss_mb']} MB)")


if __name__ == "__main__":
    main()
