"""Committed records of finished learning-benchmark runs, so the benchmark can span sessions and machines.

A run folder under ``runs/learning/`` (checkpoints, served predictions) lives only on the machine that made it. When
a run finishes, its **record** is written to ``benchmarks/results/learning/records/<regime>/<run>.json.gz``: per test
and val item the id, the gold class and the class read from the served answer (exactly as the evaluation reads it),
the stages' facts (steps, seconds, losses, vision probe), the learning curves, and the data facts. A record is all
``report.py`` needs, and ``run.py`` skips a run whose record is committed (``--rerun`` to redo one).

Runs made before records existed survive only as the per-seed aggregates of ``learning.json``; ``--import-legacy``
turns those into records that keep the confusion matrix (so every single-run metric and its item bootstrap are
exact) but no item ids (so a comparison with them is paired over seeds, unpaired over items) and no curves.

    python benchmarks/learning/records.py --export runs/learning     # write records of every finished run there
    python benchmarks/learning/records.py --import-legacy benchmarks/results/learning.json
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ROOT

RECORDS = ROOT / "benchmarks" / "results" / "learning" / "records"
SUITES = {"test": "learning_test", "val": "learning_val"}


def record_path(regime: str, run: str, root: Path = RECORDS) -> Path:
    return root / regime / f"{run}.json.gz"


def read(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))


def write(path: Path, record: dict[str, Any]) -> Path:
    """Atomic write (gzip with a fixed mtime, so the same record gives the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(record, sort_keys=True).encode(), mtime=0))
    tmp.replace(path)
    return path


def load_regime(regime: str, root: Path = RECORDS) -> dict[str, dict[str, Any]]:
    """Every record of a regime, by run name (``s0-grpo_plus``, ``cnn-s1``, ...)."""
    folder = root / regime
    return {p.name.removesuffix(".json.gz"): read(p) for p in sorted(folder.glob("*.json.gz"))}


@functools.cache
def _graph():
    from dermvlm.knowledge import load_graph

    return load_graph()


def _read_predictions(run: Path, suite: str) -> list[dict[str, Any]] | None:
    path = run / "eval" / suite / "predictions.jsonl"
    if not path.exists():
        return None
    from dermvlm.evaluation.runner import kept_answers

    return kept_answers(path)  # as the evaluation reads them: a torn last line or an aborted answer is not one


def graded(preds: list[dict[str, Any]]) -> dict[str, list]:
    """ids, gold and predicted classes of open answers, read exactly as the evaluation reads them."""
    from dermvlm.evaluation.parsing import parse
    from dermvlm.evaluation.score import open_label_pair

    kg = _graph()
    rows = [(p["id"], *open_label_pair(p["label"], parse(p.get("response"), p, kg).prediction, kg)) for p in preds]
    rows.sort(key=lambda r: r[0])
    return {"ids": [r[0] for r in rows], "gold": [r[1] for r in rows], "pred": [r[2] for r in rows]}


def stage_info(run: Path) -> dict[str, Any]:
    out = {}
    for done in sorted(run.glob("*/done.json")):
        info = json.loads(done.read_text())
        out[done.parent.name] = {k: info.get(k) for k in ("kind", "steps", "seconds", "peak_rss_mb", "first_loss",
                                                           "last_loss", "reward_start", "reward_end", "pairs",
                                                           "probe")}
    return out


def curves(run: Path) -> dict[str, list[list[float]]]:
    """Per stage, the logged training loss (vision, SFT, DPO) or mean reward (GRPO) by step."""
    out = {}
    for hist in sorted(run.glob("*/log_history.json")):
        rows = json.loads(hist.read_text())
        key = "reward" if any("reward" in r for r in rows) else "loss"
        out[f"{hist.parent.name}:{key}"] = [[r["step"], r[key]] for r in rows if key in r and "step" in r]
    return out


def from_run(run: Path, regime: str) -> dict[str, Any] | None:
    """The record of a finished VLM run folder (None until its test predictions exist)."""
    test = _read_predictions(run, SUITES["test"])
    if test is None:
        return None
    seed, arm = run.name.split("-", 1)
    record: dict[str, Any] = {"kind": "vlm", "regime": regime, "run": run.name, "arm": arm, "seed": int(seed[1:]),
                              "source": "run", "test": graded(test), "stages": stage_info(run),
                              "curves": curves(run)}
    val = _read_predictions(run, SUITES["val"])
    if val is not None:
        record["val"] = graded(val)
    data: dict[str, Any] = {}
    if (run / "data" / "stats.json").exists():
        data["train_images"] = json.loads((run / "data" / "stats.json").read_text())["records_by_split"].get("train")
    if (run / "base" / "dermvlm_nano.json").exists():
        data["parameters"] = json.loads((run / "base" / "dermvlm_nano.json").read_text()).get("parameters")
    record["data"] = data
    return record


def from_cnn(result_path: Path, regime: str) -> dict[str, Any]:
    """The record of a CNN baseline result file (``cnn_baseline.py --out``): the file itself, labelled."""
    result = json.loads(result_path.read_text())
    return {"kind": "cnn", "regime": regime, "run": result_path.stem, "seed": result["seed"], "source": "run"} | result


def export(runs_root: Path, root: Path = RECORDS) -> list[Path]:
    """Write the record of every finished run (VLM run folders and CNN result files) under ``runs_root``."""
    written = []
    for regime_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        for run in sorted(p for p in regime_dir.glob("s*-*") if p.is_dir()):
            record = from_run(run, regime_dir.name)
            if record is not None:
                written.append(write(record_path(regime_dir.name, run.name, root), record))
        for result in sorted(regime_dir.glob("cnn-s*.json")):
            written.append(write(record_path(regime_dir.name, result.stem, root), from_cnn(result, regime_dir.name)))
    return written


def export_one(run_name: str, runs_root: Path, root: Path = RECORDS) -> Path | None:
    """Write the record of one finished job (``full/s2-sft_only``, ``full/cnn-s1``); None if it left nothing."""
    regime, name = run_name.split("/", 1)
    if name.startswith("cnn-"):
        result = runs_root / regime / f"{name}.json"
        return write(record_path(regime, name, root), from_cnn(result, regime)) if result.exists() else None
    record = from_run(runs_root / regime / name, regime)
    return write(record_path(regime, name, root), record) if record is not None else None


def _pairs_from_confusion(confusion: dict[str, Any]) -> dict[str, list]:
    """Gold/predicted lists with the counts of a confusion matrix (item order and ids are lost)."""
    gold, pred = [], []
    for label, row in zip(confusion["labels"], confusion["matrix"], strict=True):
        for column, count in zip(confusion["columns"], row, strict=True):
            predicted = column  # "(other)": anything outside the gold classes
            gold += [label] * int(count)
            pred += [predicted] * int(count)
    return {"ids": None, "gold": gold, "pred": pred}


def import_legacy(results: Path, root: Path = RECORDS) -> list[Path]:
    """Records of the runs in a ``learning.json`` written before records existed (skipping runs that have one)."""
    data = json.loads(results.read_text())
    note = (f"rebuilt from {results.name} ({data.get('date')}): the run folder was lost with its machine; "
            "confusion matrix kept, item ids and curves lost")
    written = []
    for regime, r in data["regimes"].items():
        for arm, summary in r["arms"].items():
            for seed, entry in (summary.get("per_seed") or {}).items():
                path = record_path(regime, f"s{seed}-{arm}", root)
                if path.exists():
                    continue
                record = {"kind": "vlm", "regime": regime, "run": f"s{seed}-{arm}", "arm": arm, "seed": int(seed),
                          "source": note, "test": _pairs_from_confusion(entry["test"]["confusion"]),
                          "stages": entry.get("stages", {}), "curves": {},
                          "data": {"train_images": r.get("train_images"), "parameters": r.get("parameters")}}
                if arm == "base":
                    record["stages"].setdefault("vision", {})["probe"] = (r.get("vision_probe") or {}).get(seed)
                if entry.get("val"):
                    record["val_metrics"] = entry["val"]
                written.append(write(path, record))
        cnn = r.get("cnn_baseline") or {}
        for seed, entry in (cnn.get("per_seed") or {}).items():
            path = record_path(regime, f"cnn-s{seed}", root)
            if path.exists():
                continue
            record = {"kind": "cnn", "regime": regime, "run": f"cnn-s{seed}", "source": note} | entry
            if len(cnn["seeds"]) == 1:  # one seed: its val metrics are the mean
                record["val"] = dict(cnn["val_mean"])
            written.append(write(path, record))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, help="runs folder (runs/learning) whose finished runs get records")
    ap.add_argument("--import-legacy", type=Path, help="a learning.json written before records existed")
    ap.add_argument("--records", type=Path, default=RECORDS)
    args = ap.parse_args()
    written = []
    if args.export:
        written += export(args.export.resolve(), args.records)
    if args.import_legacy:
        written += import_legacy(args.import_legacy, args.records)
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
