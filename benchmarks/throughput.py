"""All throughput benchmarks in one run, side by side as ratios against their targets (``make bench-throughput``).

Runs, one after another on an otherwise idle machine: the KG scorer, the recipes over all DermaMNIST records, every
training stage of the nano config (which also leaves the model the next two serve), the 2,005-item DermaMNIST
evaluation suite through vLLM, and vLLM vs transformers ``generate`` at 16 concurrent requests (on the nano model,
and on the learning benchmark's micro model when ``runs/learning`` has one). Each writes its own JSON to
``benchmarks/results/``; this script gathers them into ``throughput.json`` and ``throughput.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MICRO = ROOT / "runs" / "learning" / "s0-pretrain" / "pretrain" / "model"


def run(script: str, *args: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    print(f"== {script} {' '.join(args)}", flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env, check=True)
    return round(time.perf_counter() - t, 1)


def rows(results: dict[str, dict]) -> list[dict]:
    """One row per measure: value, unit, target and the ratio (better / target, so >= 1 meets it)."""
    out = []
    kg = results.get("kg_scorer_throughput")
    if kg:
        target = kg["target_responses_per_s"]
        out.append({"measure": "KG scorer (1 core)", "value": kg["responses_per_s"], "unit": "responses/s",
                    "target": target, "ratio": kg["responses_per_s"] / target})
    rec = results.get("recipes_throughput")
    if rec:
        out.append({"measure": f"recipes over {rec['records']:,} DermaMNIST records ({rec['rows_written']:,} rows)",
                    "value": rec["seconds"], "unit": "s", "target": rec["target_seconds"],
                    "ratio": rec["target_seconds"] / rec["seconds"]})
    st = results.get("stage_throughput")
    if st:
        pre = st["stages"].get("pretrain", {}).get("samples_per_s")
        for name, s in st["stages"].items():
            out.append({"measure": f"nano stage {name} ({s['kind']}, {'LoRA' if s['lora'] else 'full'})",
                        "value": s["samples_per_s"], "unit": "samples/s", "target": None,
                        "ratio": (s["samples_per_s"] / pre) if pre and s["samples_per_s"] else None,
                        "ratio_of": "pretrain samples/s"})
    for key, label in (("eval_throughput", "nano"), ("eval_throughput_micro", "micro")):
        ev = results.get(key)
        if not ev:
            continue
        if "suite_seconds" in ev and key == "eval_throughput":
            out.append({"measure": f"DermaMNIST test suite, {ev['suite_items']:,} questions on 2,005 images "
                                   f"({label}, vLLM, 16 concurrent)", "value": ev["suite_seconds"], "unit": "s",
                        "target": ev["targets"]["suite_seconds"],
                        "ratio": ev["targets"]["suite_seconds"] / ev["suite_seconds"]})
        out.append({"measure": f"vLLM vs transformers generate ({label}, 16 concurrent, {ev['max_tokens']} tokens)",
                    "value": ev["ratio_vllm_over_transformers"], "unit": "x",
                    "target": ev["targets"]["ratio"],
                    "ratio": ev["ratio_vllm_over_transformers"] / ev["targets"]["ratio"],
                    "detail": f"{ev['vllm_requests_per_s']} vs {ev['transformers_requests_per_s']} requests/s"})
    for r in out:
        r["ratio"] = round(r["ratio"], 2) if r["ratio"] is not None else None
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| measure | value | target | ratio (>= 1 meets the target) |", "|---|---|---|---|"]
    for r in table:
        target = f"{r['target']:,} {r['unit']}" if r["target"] is not None else "–"
        ratio = (f"{r['ratio']}" if r["target"] is not None else f"{r['ratio']} of {r.get('ratio_of')}"
                 if r["ratio"] is not None else "–")
        value = f"{r['value']:,} {r['unit']}" + (f" ({r['detail']})" if r.get("detail") else "")
        lines.append(f"| {r['measure']} | {value} | {target} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip", nargs="*", default=[], help="names of benchmarks to skip (their last JSON is used)")
    args = ap.parse_args()
    seconds = {}
    plan = [("kg_scorer_throughput.py", []), ("recipes_throughput.py", []), ("stage_throughput.py", []),
            ("eval_throughput.py", ["--model", str(ROOT / "runs" / "bench-nano" / "dpo" / "model")])]
    if (MICRO / "config.json").exists():
        plan.append(("eval_throughput.py", ["--model", str(MICRO), "--out",
                                            str(RESULTS / "eval_throughput_micro.json"), "--skip-suite"]))
    for script, extra in plan:
        name = Path(extra[extra.index("--out") + 1]).stem if "--out" in extra else Path(script).stem
        if name not in args.skip:
            seconds[name] = run(script, *extra)
    results = {}
    for name in ("kg_scorer_throughput", "recipes_throughput", "stage_throughput", "eval_throughput",
                 "eval_throughput_micro"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    table = rows(results)
    from dermvlm.manifest import versions

    out = {"table": table, "run_seconds": seconds, "sources": {k: f"benchmarks/results/{k}.json" for k in results},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
           "versions": versions(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    (RESULTS / "throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    md = markdown(table)
    (RESULTS / "throughput.md").write_text(md)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_tables import BENCHMARKS, update_readme

    update_readme("throughput", md, BENCHMARKS)
    print(md)


if __name__ == "__main__":
    main()
