"""Run the DermaMNIST learning benchmark v2: per regime (full, low_resource) and seed, the shared base (vision stage
+ language pretrain), then every arm and the CNN baseline (same rows, augmentation and wall budget as the base),
each VLM evaluated on val and test through the served model (vLLM); two jobs at a time, one CPU core each.
Finished runs are reused (the pipeline's stage keys; the CNN's result file), so a killed benchmark resumes where
it stopped; each finished run leaves a committed record (``records.py``), and a run whose record exists is not run
again, on this machine or another, so the benchmark can be run in parts across sessions (commit the records).
Then ``report.py`` tabulates and plots.

    python benchmarks/learning/run.py                          # both regimes, 3 seeds, main arms + ablations
    python benchmarks/learning/run.py --regimes low_resource --seeds 0 --arms grpo_plus --no-ablations
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
from arms import ABLATIONS, BASE_VARIANTS, BUDGET, MAIN_ARMS, REGIMES, ROOT, arm_config, base_run_config
from records import RECORDS, export_one, load_regime, record_path

OUT = ROOT / "runs" / "learning"


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")})
    return env


def run_job(name: str, job, out_root: Path) -> dict:
    """Run one job: a pipeline config (dict) or a command (callable returning argv, or None when already done)."""
    log = out_root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(job, dict):
        path = out_root / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        argv = [str(Path(sys.executable).parent / "dermvlm"), "pipeline", str(path)]
    else:
        argv = job()
        if argv is None:
            return {"name": name, "rc": 0, "seconds": 0.0, "log": str(log), "reused": True}
    start = time.time()
    with log.open("a") as fh:
        rc = subprocess.call(argv, cwd=ROOT, env=job_env(), stdout=fh, stderr=subprocess.STDOUT)
    return {"name": name, "rc": rc, "seconds": round(time.time() - start, 1), "log": str(log)}


def run_and_record(name: str, job, out_root: Path, records: bool) -> dict:
    """Run one job and, when it finished, write its committed record (unless smoke-run suites are in use)."""
    result = run_job(name, job, out_root)
    if result["rc"] == 0 and records:
        path = export_one(name, out_root)
        result["record"] = str(path) if path else None
    return result


def base_seconds(record: dict) -> float:
    """Wall seconds of a finished base (vision stage + pretrain), from its record's stages."""
    return sum((record["stages"].get(st) or {}).get("seconds") or 0 for st in ("vision", "pretrain"))


def cnn_budget(regime: str) -> float:
    """The CNN's budget (CPU seconds of its one thread): the budget the regime's first CNN got, so that every seed's
    CNN gets the same; for the first, the least wall time any finished base of the regime took (vision +
    pretrain): bases that shared the cores with other work took longer for the same work, and the least is the
    closest to the base's own cost."""
    records = load_regime(regime)
    budgets = [r["budget_seconds"] for r in records.values() if r["kind"] == "cnn" and r.get("budget_seconds")]
    if budgets:
        return budgets[0]
    return min(base_seconds(r) for r in records.values() if r["kind"] == "vlm" and r["arm"] == "base")


_DATA_LOCK = threading.Lock()


def regime_data(regime: str, seed: int, out_root: Path) -> Path:
    """The regime's built recipe: the seed's base has it; without that base (its record is committed, its folder
    is gone) it is built once into ``<regime>/data`` (the recipe does not depend on the benchmark seed)."""
    base = out_root / regime / f"s{seed}-base" / "data"
    if (base / "image_label").exists():
        return base
    out = out_root / regime / "data"
    with _DATA_LOCK:
        if not (out / "image_label").exists():
            subprocess.check_call([str(Path(sys.executable).parent / "dermvlm"), "data", "build",
                                   str(ROOT / REGIMES[regime]), "--out", str(out)], cwd=ROOT, env=job_env())
    return out


def cnn_job(regime: str, seed: int, out_root: Path):
    """The CNN baseline of a regime and seed: the regime's data and budget (a callable, resolved when run)."""
    result = out_root / regime / f"cnn-s{seed}.json"

    def argv():
        if result.exists():
            return None
        return [sys.executable, str(ROOT / "benchmarks" / "learning" / "cnn_baseline.py"), "--data",
                str(regime_data(regime, seed, out_root)), "--seconds", str(round(cnn_budget(regime))),
                "--seed", str(seed), "--out", str(result)]

    return argv


def finished_base(cfg: dict, out_root: Path):
    """A base job: run the pipeline unless this base already finished and was evaluated. A base is trained once
    per regime and seed; later code changes that alter stage keys (not what the base is) must not retrain it."""
    run = Path(cfg["output_dir"]) / cfg["name"]

    def argv():
        manifest = run / "manifest.json"
        if manifest.exists() and (run / "pretrain" / "done.json").exists():
            evaluated = json.loads(manifest.read_text()).get("evaluation", {})
            if {"learning_val", "learning_test"} <= set(evaluated):
                return None
        path = out_root / "configs" / f"{run.parent.name}" / f"{cfg['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return [str(Path(sys.executable).parent / "dermvlm"), "pipeline", str(path)]

    return argv


def recorded(name: str, root: Path = RECORDS) -> bool:
    """True when the job ``<regime>/<run>`` has a committed record."""
    regime, run = name.split("/", 1)
    return record_path(regime, run, root).exists()


def drop_recorded(jobs: list[tuple[str, object, str | None]], root: Path = RECORDS
                  ) -> list[tuple[str, object, str | None]]:
    """The jobs still to run: those without a record, and a base only while a job that needs it has none (the CNN
    needs only the base's data, which it can build itself)."""
    todo = [j for j in jobs if not recorded(j[0], root)]
    needed = {j[2] for j in todo if j[2] and not j[0].split("/", 1)[1].startswith("cnn-")}
    return [(n, job, dep if dep in needed else None) for n, job, dep in jobs
            if n in needed or not recorded(n, root)]


def run_jobs(jobs: list[tuple[str, object, str | None]], out_root: Path, workers: int, records: bool = True
             ) -> dict[str, dict]:
    """Run ``(name, job, dependency)`` jobs on ``workers`` threads, in priority order; a job waits for its
    dependency and is skipped when it failed. Returns each job's status."""
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
                        name, job, dep = ready[0]
                        if dep and done[dep]["rc"] != 0:
                            done[name] = {"name": name, "rc": -1, "skipped": f"{dep} failed"}
                            lock.notify_all()
                            continue
                        running.add(name)
                        break
                    lock.wait()
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            result = run_and_record(name, job, out_root, records)
            print(f"[{time.strftime('%H:%M:%S')}] done  {name}: rc {result['rc']} in {result['seconds']} s",
                  flush=True)
            with lock:
                running.discard(name)
                done[name] = result
                lock.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


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
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=MAIN_ARMS)
    ap.add_argument("--ablations", nargs="*", default=ABLATIONS, help="GRPO++ ablation arms")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ablation-regimes", nargs="+", default=["low_resource"], choices=list(REGIMES))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--base-variants", nargs="*", default=list(BASE_VARIANTS),
                    help="base variants (one seed, the ablation regimes): e.g. base_align")
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--budget", type=int, default=BUDGET, help="post-training sequences per arm")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override the config's pretrain max_steps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N items only (smoke runs)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rerun", action="store_true", help="run jobs even when their records are committed")
    args = ap.parse_args()
    out_root = args.out.resolve()
    suites = limited_suites(out_root, args.eval_limit) if args.eval_limit else None

    # Jobs in priority order: bases first (every arm waits for its base), then arms and CNNs, then ablations.
    jobs: list[tuple[str, object, str | None]] = []
    for regime in args.regimes:
        for seed in args.seeds:
            jobs.append((f"{regime}/s{seed}-base",
                         finished_base(base_run_config(regime, seed, out_root, args.pretrain_steps), out_root), None))
    for seed in args.seeds:
        for regime in args.regimes:
            dep = f"{regime}/s{seed}-base"
            for arm in args.arms:
                jobs.append((f"{regime}/s{seed}-{arm}", arm_config(arm, regime, seed, out_root, args.budget), dep))
            if not args.no_cnn:
                jobs.append((f"{regime}/cnn-s{seed}", cnn_job(regime, seed, out_root), dep))
    if not args.no_ablations:
        for regime in args.ablation_regimes:
            for seed in args.ablation_seeds:
                for arm in args.ablations:
                    jobs.append((f"{regime}/s{seed}-{arm}", arm_config(arm, regime, seed, out_root, args.budget),
                                 f"{regime}/s{seed}-base"))
                for variant in args.base_variants:
                    jobs.append((f"{regime}/s{seed}-{variant}",
                                 base_run_config(regime, seed, out_root, args.pretrain_steps, variant),
                                 f"{regime}/s{seed}-base"))
    jobs = [j for j in jobs if j[2] is None or any(d[0] == j[2] for d in jobs)]
    if suites:
        for _, job, _ in jobs:
            if isinstance(job, dict):
                job["evaluate"] = suites
    elif not args.rerun:
        jobs = drop_recorded(jobs)
    done = run_jobs(jobs, out_root, args.workers, records=not suites)
    (out_root / "jobs.json").write_text(json.dumps(done, indent=2) + "\n")
    failed = [n for n, r in done.items() if r["rc"] != 0]
    print(f"{len(done) - len(failed)} of {len(done)} runs finished" + (f"; failed: {', '.join(failed)}" if failed
                                                                        else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
