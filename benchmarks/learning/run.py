"""Run the DermaMNIST learning benchmark: per seed, the shared pretrain, then every arm, each evaluated on val and
test through the served model (vLLM), two jobs at a time (one CPU core each). Finished runs are reused (the
pipeline's stage keys), so a killed benchmark resumes. Then ``report.py`` tabulates and plots.

    python benchmarks/learning/run.py                          # 3 seeds x main arms + ablations on seed 0
    python benchmarks/learning/run.py --seeds 0 --arms grpo_plus --no-ablations
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ABLATIONS, BUDGET, MAIN_ARMS, ROOT, arm_config, pretrain_config

OUT = ROOT / "runs" / "learning"


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")})
    return env


def run_job(cfg: dict, out_root: Path) -> dict:
    """Write the config and run the pipeline on it; return timing and status."""
    cfg_dir = out_root / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = out_root / "logs" / f"{cfg['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with log.open("a") as fh:
        cli = str(Path(sys.executable).parent / "dermvlm")
        rc = subprocess.call([cli, "pipeline", str(path)], cwd=ROOT, env=job_env(), stdout=fh,
                             stderr=subprocess.STDOUT)
    return {"name": cfg["name"], "rc": rc, "seconds": round(time.time() - start, 1), "log": str(log)}


def limited_suites(out_root: Path, limit: int) -> list[str]:
    """Copies of the config's suites cut to ``limit`` items (for smoke runs; never for reported numbers)."""
    paths = []
    for suite in yaml.safe_load((ROOT / "configs" / "dermamnist-micro.yaml").read_text())["evaluate"]:
        data = yaml.safe_load((ROOT / suite).read_text())
        data["limit"] = limit
        for src in data.get("sources", []):
            if src.get("root"):
                src["root"] = str((ROOT / src["root"]).resolve())
        path = out_root / "suites" / Path(suite).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(str(path))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=MAIN_ARMS)
    ap.add_argument("--ablations", nargs="*", default=ABLATIONS, help="GRPO++ ablation arms (seed --ablation-seed)")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablation-seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=BUDGET, help="post-training optimizer sequences per arm")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override the config's pretrain max_steps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N items only (smoke runs)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out_root = args.out.resolve()
    suites = None
    if args.eval_limit:
        suites = limited_suites(out_root, args.eval_limit)

    # Jobs in priority order; an arm waits for its seed's pretrain.
    jobs: list[tuple[str, dict, str | None]] = []
    for seed in args.seeds:
        jobs.append((f"s{seed}-pretrain", pretrain_config(seed, out_root, args.pretrain_steps), None))
    for seed in args.seeds:
        for arm in args.arms:
            jobs.append((f"s{seed}-{arm}", arm_config(arm, seed, out_root, args.budget), f"s{seed}-pretrain"))
    if not args.no_ablations:
        for arm in args.ablations:
            s = args.ablation_seed
            jobs.append((f"s{s}-{arm}", arm_config(arm, s, out_root, args.budget), f"s{s}-pretrain"))

    if suites:
        for _, cfg, _ in jobs:
            cfg["evaluate"] = suites
    done: dict[str, dict] = {}
    running: set[str] = set()
    lock = threading.Condition()

    def worker() -> None:
        while True:
            with lock:
                while True:
                    pending = [j for j in jobs if j[0] not in done and j[0] not in running]
                    if not pending:
                        return
                    ready = [j for j in pending if j[2] is None or j[2] in done]
                    if ready:
                        name, cfg, dep = ready[0]
                        if dep and done[dep]["rc"] != 0:
                            done[name] = {"name": name, "rc": -1, "skipped": f"{dep} failed"}
                            lock.notify_all()
                            continue
                        running.add(name)
                        break
                    lock.wait()
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            result = run_job(cfg, out_root)
            print(f"[{time.strftime('%H:%M:%S')}] done  {name}: rc {result['rc']} in {result['seconds']} s",
                  flush=True)
            with lock:
                running.discard(name)
                done[name] = result
                lock.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (out_root / "jobs.json").write_text(json.dumps(done, indent=2) + "\n")
    failed = [n for n, r in done.items() if r["rc"] != 0]
    print(f"{len(done) - len(failed)} of {len(done)} runs finished" + (f"; failed: {', '.join(failed)}" if failed
                                                                        else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
