"""Run the DermaMNIST learning benchmark v3: per regime (full, low_resource) and seed, the shared base (vision stage
+ language pretrain), then every arm and the CNN anchor (same rows and augmentation, a fixed epoch count per
regime), each VLM evaluated on val and test through the served model (vLLM; the DermIQ arm also on the KG
factuality suite, before and after its DPO); two jobs at a time, one CPU core each. Finished runs are reused (the
pipeline's stage keys; the CNN's result file), so a killed benchmark resumes where it stopped; each finished run
leaves a committed record (``records.py``) that names the code it ran from, and a run whose record was made by
the current code is not run again, on this machine or another, so the benchmark can be run in parts across
sessions (commit the records); a record of other code is run again. Then ``report.py`` tabulates and plots.

    python benchmarks/learning/run.py                          # both regimes, 3 seeds, main arms and the CNN
    python benchmarks/learning/run.py --regimes low_resource --seeds 0 --arms grpo_plus --no-cnn
    python benchmarks/learning/run.py --only low_resource/grpo_plus/0 --keep-model /tmp/grpo_plus-s0
    python benchmarks/learning/run.py --ablations no_curriculum --arms --no-cnn     # a one-seed ablation
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import (
    ABLATION_SEED,
    BASE_VARIANTS,
    BUDGET,
    CNN_EPOCHS,
    FACTUALITY_SUITE,
    REGIME_ARMS,
    REGIMES,
    ROOT,
    SSL_CNN_EPOCHS,
    arm_config,
    base_run_config,
)
from records import RECORDS, code_state, export_one, mark_code, read, record_path, run_code

OUT = ROOT / "runs" / "learning"


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")})
    return env


CODE = code_state()  # the code this benchmark process runs: noted in every run it starts and in its record


def pipeline_argv(cfg: dict, path: Path) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return [str(Path(sys.executable).parent / "dermvlm"), "pipeline", str(path)]


def job_log(name: str, out_root: Path) -> Path:
    """The log file of the job ``<regime>/<run>`` (its folder created)."""
    log = out_root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def run_job(name: str, job, out_root: Path) -> dict:
    """Run one job: a pipeline config (dict) or a command (callable returning argv, a list of argvs run in turn, or
    None when already done). The code it starts with is noted beside its folder (``records.mark_code``)."""
    log = job_log(name, out_root)
    regime, run = name.split("/", 1)
    set_aside_other_code(out_root / regime / run)
    argvs = [pipeline_argv(job, out_root / "configs" / f"{name}.yaml")] if isinstance(job, dict) else job()
    mark_code(out_root / regime / run, CODE)
    if argvs is None:
        return {"name": name, "rc": 0, "seconds": 0.0, "log": str(log), "reused": True}
    if argvs and isinstance(argvs[0], str):
        argvs = [argvs]
    start = time.time()
    rc = 0
    with log.open("a") as fh:
        for argv in argvs:
            rc = subprocess.call(argv, cwd=ROOT, env=job_env(), stdout=fh, stderr=subprocess.STDOUT)
            if rc:
                break
    return {"name": name, "rc": rc, "seconds": round(time.time() - start, 1), "log": str(log)}


_EXPORT_LOCK = threading.Lock()  # records are read with datasets' load_from_disk, whose tqdm lock is not thread-safe


def run_and_record(name: str, job, out_root: Path, records: bool) -> dict:
    """Run one job and, when it finished, write its committed record (unless smoke-run suites are in use)."""
    result = run_job(name, job, out_root)
    if result["rc"] == 0 and records:
        with _EXPORT_LOCK:
            path = export_one(name, out_root)
        result["record"] = str(path) if path else None
    return result


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


def set_aside_other_code(run: Path) -> None:
    """A run another code version started is moved to ``<regime>/.other-code/`` (kept, not deleted), so this code
    trains it again from the start instead of reusing that code's stages."""
    noted = run_code(run)
    if noted is None or noted.get("code") == CODE["code"]:
        return
    aside = run.parent / ".other-code" / noted["code"]
    aside.mkdir(parents=True, exist_ok=True)
    for path in (run, run.with_suffix(".json"), run.parent / f".{run.name}.code.json"):
        if path.exists():
            path.rename(aside / path.name)


def same_code(run: Path) -> bool:
    """Whether a run (folder or result) was started by this process's code (a finished one is reused only then)."""
    return (run_code(run) or {}).get("code") == CODE["code"]


def cnn_job(regime: str, seed: int, out_root: Path, keep: Path | None = None, epochs: float | None = None,
            unlabelled: bool = False):
    """The CNN anchor of a regime and seed: the regime's data and epochs (``epochs``: another count, for smoke
    runs) (a callable, resolved when run); ``keep``: also save the selected network there; ``unlabelled``: first
    SimCLR on the images the regime leaves unlabelled (the full regime's train split), as the VLM's ``base_ssl``."""
    result = out_root / regime / f"{'cnn_ssl' if unlabelled else 'cnn'}-s{seed}.json"

    def argv():
        if same_code(result.with_suffix("")) and result.exists() and (keep is None or keep.exists()):
            return None
        return [sys.executable, str(ROOT / "benchmarks" / "learning" / "cnn_baseline.py"), "--data",
                str(regime_data(regime, seed, out_root)), "--epochs", str(epochs or CNN_EPOCHS[regime]),
                "--seed", str(seed), "--out", str(result), *(["--save", str(keep)] if keep else []),
                *(["--unlabelled", str(regime_data("full", seed, out_root)), "--ssl-epochs",
                   str(SSL_CNN_EPOCHS if epochs is None else 1)] if unlabelled else [])]

    return argv


def with_factuality_before_dpo(cfg: dict, out_root: Path, name: str):
    """The DermIQ arm: its pipeline, then the model its DPO started from (the SFT stage's) asked the KG
    factuality suite, served alone (``<run>/eval_before_dpo/kg_factuality``)."""
    run = Path(cfg["output_dir"]) / cfg["name"]
    sft = next(s["name"] for s in cfg["stages"] if s["kind"] == "sft")

    def argvs():  # the suite as the config names it when the job runs (a smoke run cuts it)
        suite = next(e for e in cfg["evaluate"] if e.endswith(Path(FACTUALITY_SUITE).name))
        return [pipeline_argv(cfg, out_root / "configs" / f"{name}.yaml"),
                [str(Path(sys.executable).parent / "dermvlm"), "eval", str(ROOT / suite), "--serve",
                 str(run / sft / "model"), "--out", str(run / "eval_before_dpo" / "kg_factuality"), "--dtype",
                 cfg["serve"]["dtype"], "--max-model-len", str(cfg["serve"]["max_model_len"])]]

    argvs.config = cfg
    return argvs


def finished_base(cfg: dict, out_root: Path):
    """A base job: run the pipeline unless this base already finished and was evaluated. A base is trained once
    per regime and seed; later code changes that alter stage keys (not what the base is) must not retrain it."""
    run = Path(cfg["output_dir"]) / cfg["name"]

    def argv():
        manifest = run / "manifest.json"
        if same_code(run) and manifest.exists() and (run / "pretrain" / "done.json").exists():
            evaluated = json.loads(manifest.read_text()).get("evaluation", {})
            if {"learning_val", "learning_test"} <= set(evaluated):
                return None
        path = out_root / "configs" / f"{run.parent.name}" / f"{cfg['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return [str(Path(sys.executable).parent / "dermvlm"), "pipeline", str(path)]

    argv.config = cfg
    return argv


def recorded(name: str, root: Path = RECORDS, code: str | None = None) -> bool:
    """True when the job ``<regime>/<run>`` has a committed record made by the code ``code`` (default: this
    process's code)."""
    regime, run = name.split("/", 1)
    path = record_path(regime, run, root)
    return path.exists() and ((read(path).get("code") or {}).get("code") == (code or CODE["code"]))


def drop_recorded(jobs: list[tuple[str, object, str | None]], root: Path = RECORDS, code: str | None = None
                  ) -> list[tuple[str, object, str | None]]:
    """The jobs still to run: those without a record of this code, and a base only while a job that needs it has
    none (the CNN needs only the base's data, which it can build itself)."""
    todo = [j for j in jobs if not recorded(j[0], root, code)]
    needed = {j[2] for j in todo if j[2] and not j[0].split("/", 1)[1].startswith("cnn")}
    return [(n, job, dep if dep in needed else None) for n, job, dep in jobs
            if n in needed or not recorded(n, root, code)]


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
            try:
                result = run_and_record(name, job, out_root, records)
            except Exception as exc:  # the job fails (its dependents are skipped), not the whole run
                log = job_log(name, out_root)
                with log.open("a") as fh:
                    fh.write(traceback.format_exc())
                result = {"name": name, "rc": -1, "seconds": 0.0, "log": str(log),
                          "error": f"{type(exc).__name__}: {exc} (traceback in {log})"}
            print(f"[{time.strftime('%H:%M:%S')}] done  {name}: rc {result['rc']} in {result['seconds']} s"
                  + (f" ({result['error']})" if "error" in result else ""), flush=True)
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


def limited_suite(out_root: Path, suite: str, limit: int) -> str:
    """A copy of a suite cut to ``limit`` items (for smoke runs; never for reported numbers)."""
    data = yaml.safe_load((ROOT / suite).read_text())
    data["limit"] = limit
    for src in data.get("sources", []):
        if src.get("root"):
            src["root"] = str((ROOT / src["root"]).resolve())
    path = out_root / "suites" / Path(suite).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def keep_model(name: str, out_root: Path, dest: Path) -> Path:
    """Copy a finished VLM run's final model folder (the manifest's ``final_model``) to ``dest``."""
    import shutil

    regime, run = name.split("/", 1)
    manifest = json.loads((out_root / regime / run / "manifest.json").read_text())
    if dest.exists():
        raise SystemExit(f"--keep-model {dest}: exists; give a new folder")
    shutil.copytree(manifest["final_model"], dest)
    return dest


def parse_only(value: str) -> tuple[str, str, int]:
    """``REGIME/ARM/SEED`` (ARM: base, cnn or an arm) → its parts, checked."""
    try:
        regime, arm, seed = value.split("/")
        return regime, arm, int(seed)
    except ValueError:
        raise SystemExit(f"--only {value!r}: give REGIME/ARM/SEED, e.g. low_resource/grpo_plus/0") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="*", default=None, help="default: each regime's arms (arms.REGIME_ARMS)")
    ap.add_argument("--ablations", nargs="*", default=[], help="GRPO++ ablation arms (one seed: never a claim)")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[ABLATION_SEED])
    ap.add_argument("--ablation-regimes", nargs="+", default=["low_resource"], choices=list(REGIMES))
    ap.add_argument("--base-variants", nargs="*", default=[],
                    help="base variants (the ablation seeds and regimes): base_align, base_ssl (with a CNN given the "
                         "same unlabelled images)")
    ap.add_argument("--variant-arms", nargs="*", default=[], help="arms trained on each base variant, e.g. grpo_plus")
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--only", default=None,
                    help="one job, REGIME/ARM/SEED (ARM: base, cnn or an arm); an arm with its base, the CNN alone")
    ap.add_argument("--keep-model", type=Path, default=None,
                    help="with --only: copy the final model (the CNN: its weights) here when it finishes")
    ap.add_argument("--budget", type=int, default=BUDGET, help="post-training sequences per arm")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override the config's pretrain max_steps")
    ap.add_argument("--vision-epochs", type=float, default=None, help="override the vision stage's epochs (smoke runs)")
    ap.add_argument("--cnn-epochs", type=float, default=None, help="override the CNN's epochs (smoke runs)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N items only (smoke runs)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rerun", action="store_true", help="run jobs even when their records are committed")
    args = ap.parse_args()
    out_root = args.out.resolve()
    if args.keep_model and not args.only:
        ap.error("--keep-model needs --only REGIME/ARM/SEED")
    keep = args.keep_model.resolve() if args.keep_model else None
    if args.only:
        regime, arm, seed = parse_only(args.only)
        if regime not in REGIMES:
            ap.error(f"--only: regime {regime!r}; choose one of {', '.join(REGIMES)}")
        args.regimes, args.seeds, args.ablations, args.base_variants = [regime], [seed], [], []
        args.arms = [] if arm in ("base", "cnn") else [arm]
        args.no_cnn = arm != "cnn"

    # Jobs in priority order: bases first (every arm waits for its base), then arms and CNNs, then ablations.
    jobs: list[tuple[str, object, str | None]] = []
    for regime in args.regimes:
        for seed in args.seeds:
            jobs.append((f"{regime}/s{seed}-base",
                         finished_base(base_run_config(regime, seed, out_root, args.pretrain_steps,
                                                       vision_epochs=args.vision_epochs), out_root), None))
    for seed in args.seeds:
        for regime in args.regimes:
            dep = f"{regime}/s{seed}-base"
            for arm in REGIME_ARMS[regime] if args.arms is None else args.arms:
                cfg = arm_config(arm, regime, seed, out_root, args.budget)
                name = f"{regime}/s{seed}-{arm}"
                jobs.append((name, with_factuality_before_dpo(cfg, out_root, name) if arm == "dermiq" else cfg, dep))
            if not args.no_cnn:
                jobs.append((f"{regime}/cnn-s{seed}", cnn_job(regime, seed, out_root, keep, args.cnn_epochs), dep))
    for regime in args.ablation_regimes:
        for seed in args.ablation_seeds:
            for arm in args.ablations:
                jobs.append((f"{regime}/s{seed}-{arm}", arm_config(arm, regime, seed, out_root, args.budget),
                             f"{regime}/s{seed}-base"))
            for variant in args.base_variants:
                if variant not in BASE_VARIANTS:
                    ap.error(f"--base-variants: {variant!r}; choose from {', '.join(BASE_VARIANTS)}")
                base = f"{regime}/s{seed}-{variant}"  # trained from scratch: it needs no other job
                jobs.append((base, base_run_config(regime, seed, out_root, args.pretrain_steps, variant,
                                                   args.vision_epochs), None))
                for arm in args.variant_arms:
                    jobs.append((f"{base}-{arm}", arm_config(arm, regime, seed, out_root, args.budget, variant), base))
                if variant == "base_ssl" and not args.no_cnn:
                    jobs.append((f"{regime}/cnn_ssl-s{seed}", cnn_job(regime, seed, out_root, None, args.cnn_epochs,
                                                                      unlabelled=True), base))
    if args.only and parse_only(args.only)[1] == "cnn":  # the CNN alone: it needs the regime's data, not the base
        jobs = [(n, job, None) for n, job, _ in jobs if not n.endswith("-base")]
    jobs = [j for j in jobs if j[2] is None or any(d[0] == j[2] for d in jobs)]
    if args.eval_limit:
        for _, job, _ in jobs:
            cfg = job if isinstance(job, dict) else getattr(job, "config", None)
            if isinstance(cfg, dict):
                cfg["evaluate"] = [limited_suite(out_root, e, args.eval_limit) for e in cfg["evaluate"]]
    smoke = args.eval_limit or args.vision_epochs or args.cnn_epochs or args.pretrain_steps
    if smoke and not args.eval_limit:
        ap.error("--vision-epochs, --cnn-epochs and --pretrain-steps are for smoke runs: add --eval-limit N")
    elif not args.rerun and not args.only and not smoke:  # --only always runs (finished stages are reused)
        jobs = drop_recorded(jobs)
    done = run_jobs(jobs, out_root, args.workers, records=not args.eval_limit)
    (out_root / "jobs.json").write_text(json.dumps(done, indent=2) + "\n")
    failed = [n for n, r in done.items() if r["rc"] != 0]
    print(f"{len(done) - len(failed)} of {len(done)} runs finished" + (f"; failed: {', '.join(failed)}" if failed
                                                                        else ""))
    if keep and not failed and args.only.split("/")[1] != "cnn":
        regime, arm, seed = parse_only(args.only)
        print(f"final model copied to {keep_model(f'{regime}/s{seed}-{arm}', out_root, keep)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
