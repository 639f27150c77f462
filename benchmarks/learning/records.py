"""Committed records of finished learning-benchmark runs, so the benchmark can span sessions and machines.

A run folder under ``runs/learning/`` (checkpoints, served predictions) lives only on the machine that made it. When
a run finishes, its **record** is written to ``benchmarks/results/learning/records/v3/<regime>/<run>.json.gz``: per
test and val item an image key (sha256 of the image's bytes, the same for the VLM's items and the CNN's rows, so the
two pair item by item), the gold class, the class read from the served answer (exactly as the evaluation reads it)
and the class scores (log P(answer) per class, ``evaluation/class_scores.py``; the CNN's log-softmax); the stages'
facts (steps, seconds, losses, vision probe), the learning curves, the data facts, per-item KG factuality where the
run was asked the ``kg_factuality`` suite, and the **code** it ran from (git commit and a digest of the code and
configs, ``code_state``: fixed when the run starts, in ``.<run>.code.json`` beside its folder). A record is all
``report.py`` needs, and ``run.py`` skips a run whose record was made by the current code (``--rerun`` to redo one);
a record of other code is run again, so one comparison never mixes code versions.

The v2 benchmark's records stay where v2 wrote them (``records/<regime>/``); v3 reads only ``records/v3``.

    python benchmarks/learning/records.py --export runs/learning     # write records of every finished run there
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

RECORDS = ROOT / "benchmarks" / "results" / "learning" / "records" / "v3"
SUITES = {"test": "learning_test", "val": "learning_val"}
FACTUALITY = "kg_factuality"
# What a run's result depends on: the package, the benchmark's scripts and suites, configs, recipes and suites.
CODE_PATHS = ["src", "configs", "data_recipes", "eval", "benchmarks/learning/*.py", "benchmarks/learning/*.yaml"]


def _git(*args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def code_state() -> dict[str, Any]:
    """The git commit, whether the code paths differ from it, and a digest of the code paths' working-tree content
    (equal digests: the same code, whatever commits only records or documents in between)."""
    import hashlib

    files = [f for f in _git("ls-files", "--", *CODE_PATHS).splitlines() if (ROOT / f).is_file()]
    blobs = _git("hash-object", "--", *files).split() if files else []
    digest = hashlib.sha256("\n".join(f"{f} {b}" for f, b in zip(files, blobs, strict=True)).encode()).hexdigest()
    return {"commit": _git("rev-parse", "HEAD").strip(), "dirty": bool(_git("status", "--porcelain", "--",
                                                                             *CODE_PATHS).strip()),
            "code": digest[:16]}


def _code_file(run: Path) -> Path:
    return run.parent / f".{run.name}.code.json"  # beside the run's folder: the pipeline owns the folder itself


def run_code(run: Path) -> dict[str, Any] | None:
    """The code a run was started with (noted by ``run.py``), if known."""
    path = _code_file(run)
    return json.loads(path.read_text()) if path.is_file() else None


def mark_code(run: Path, state: dict[str, Any]) -> None:
    """Note the code a run starts with, unless one is noted already (a resumed run keeps its first)."""
    path = _code_file(run)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state) + "\n")


def image_key(data: bytes) -> str:
    """An item's pairing key: its image bytes' sha256 (the recipes store the same bytes for the same image)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


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


def kept(path: Path) -> list[dict[str, Any]]:
    """The answers of a ``predictions.jsonl`` as the evaluation reads them (a torn last line or an aborted answer
    is not one)."""
    from dermvlm.evaluation.runner import kept_answers

    return kept_answers(path)


def _read_predictions(run: Path, suite: str) -> list[dict[str, Any]] | None:
    path = run / "eval" / suite / "predictions.jsonl"
    return kept(path) if path.exists() else None


def graded(preds: list[dict[str, Any]], keys: dict[str, str] | None = None,
           scores: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Image keys (``keys``: item id → key; else the item ids), gold and predicted classes of open answers, read
    exactly as the evaluation reads them, and the class scores (``scores``: item id → {class: log-probability})
    as one row per item over ``classes`` (``None`` for an item that has none)."""
    from dermvlm.evaluation.parsing import parse
    from dermvlm.evaluation.score import open_label_pair

    kg = _graph()
    rows = [((keys or {}).get(p["id"], p["id"]), p["id"], *open_label_pair(p["label"], parse(p.get("response"), p,
                                                                                              kg).prediction, kg))
            for p in preds]
    rows.sort(key=lambda r: r[0])
    out: dict[str, Any] = {"ids": [r[0] for r in rows], "gold": [r[2] for r in rows], "pred": [r[3] for r in rows]}
    if scores:
        classes = sorted({c for s in scores.values() for c in s})
        out["classes"] = classes
        out["scores"] = [[round(scores[r[1]][c], 4) for c in classes] if r[1] in scores else None for r in rows]
    return out


def _class_scores(folder: Path) -> dict[str, dict[str, float]]:
    """Item id → class log-probabilities of an evaluation folder (the candidate set of its latest line)."""
    from dermvlm.evaluation.class_scores import SCORES, read_scores
    from dermvlm.evaluation.runner import read_predictions

    lines = read_predictions(folder / SCORES)
    return read_scores(folder, lines[-1]["set"]) if lines else {}


def _item_keys(folder: Path) -> dict[str, str]:
    """Item id → image key of an evaluation folder's items (``items/eval_item``)."""
    from datasets import Image, List, load_from_disk

    path = folder / "items" / "eval_item"
    if not (path / "dataset_dict.json").exists():
        return {}
    keys = {}
    for split in load_from_disk(str(path)).values():
        for row in split.cast_column("images", List(Image(decode=False))):
            keys[row["id"]] = image_key(row["images"][0]["bytes"])
    return keys


def factuality(preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per open answer (sorted by item id) the KG scorer's contradicted claims and knowledge-error rate, as the
    evaluation's ``kg_factuality`` block averages them."""
    from dermvlm.knowledge import KGScorer
    from dermvlm.knowledge.scorer import knowledge_error_rate

    scorer = KGScorer(_graph())
    rows = sorted((p for p in preds if p.get("type") == "open"), key=lambda p: p["id"])
    out: dict[str, list] = {"ids": [], "contradicted": [], "knowledge_error_rate": [], "score": []}
    for p in rows:
        b = scorer.score(p.get("response"), p["label"], site=p.get("site") or None,
                         fitzpatrick=p.get("fitzpatrick") or None, facts=p.get("record_facts"))
        out["ids"].append(p["id"])
        out["contradicted"].append(len(b.contradicted))
        out["knowledge_error_rate"].append(round(knowledge_error_rate(b), 4))
        out["score"].append(round(b.score, 4))
    return out


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


def _split(run: Path, suite: str) -> dict[str, Any] | None:
    preds = _read_predictions(run, suite)
    if preds is None:
        return None
    folder = run / "eval" / suite
    return graded(preds, _item_keys(folder), _class_scores(folder))


def from_run(run: Path, regime: str) -> dict[str, Any] | None:
    """The record of a finished VLM run folder (None until its test predictions exist)."""
    test = _split(run, SUITES["test"])
    if test is None:
        return None
    seed, arm = run.name.split("-", 1)
    record: dict[str, Any] = {"kind": "vlm", "regime": regime, "run": run.name, "arm": arm, "seed": int(seed[1:]),
                              "source": "run", "code": run_code(run), "test": test, "stages": stage_info(run),
                              "curves": curves(run)}
    val = _split(run, SUITES["val"])
    if val is not None:
        record["val"] = val
    facts = {}
    for name, folder in (("final", run / "eval" / FACTUALITY), ("before_dpo", run / "eval_before_dpo" / FACTUALITY)):
        if (folder / "predictions.jsonl").exists():
            facts[name] = factuality(kept(folder / "predictions.jsonl"))
    if facts:
        record["factuality"] = facts
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
    return {"kind": "cnn", "regime": regime, "run": result_path.stem, "arm": result_path.stem.rsplit("-s", 1)[0],
            "seed": result["seed"], "source": "run", "code": run_code(result_path.with_suffix(""))} | result


def export(runs_root: Path, root: Path = RECORDS) -> list[Path]:
    """Write the record of every finished run (VLM run folders and CNN result files) under ``runs_root``."""
    written = []
    for regime_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        for run in sorted(p for p in regime_dir.glob("s*-*") if p.is_dir() and (p / "manifest.json").exists()):
            record = from_run(run, regime_dir.name)
            if record is not None:
                written.append(write(record_path(regime_dir.name, run.name, root), record))
        for result in sorted(regime_dir.glob("cnn*-s*.json")):
            written.append(write(record_path(regime_dir.name, result.stem, root), from_cnn(result, regime_dir.name)))
    return written


def export_one(run_name: str, runs_root: Path, root: Path = RECORDS) -> Path | None:
    """Write the record of one finished job (``full/s2-sft_only``, ``full/cnn-s1``); None if it left nothing."""
    regime, name = run_name.split("/", 1)
    if name.startswith("cnn"):
        result = runs_root / regime / f"{name}.json"
        return write(record_path(regime, name, root), from_cnn(result, regime)) if result.exists() else None
    record = from_run(runs_root / regime / name, regime)
    return write(record_path(regime, name, root), record) if record is not None else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, help="runs folder (runs/learning) whose finished runs get records")
    ap.add_argument("--records", type=Path, default=RECORDS)
    args = ap.parse_args()
    written = []
    if args.export:
        written += export(args.export.resolve(), args.records)
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
