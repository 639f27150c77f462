"""All 10,015 DermaMNIST records through the default recipe set (data_recipes/dermamnist.yaml), timed.

Run: ``.venv/bin/python benchmarks/recipes_throughput.py``. Target: <= 30 s on 2 cores. Writes
``benchmarks/results/recipes_throughput.json`` (one process; the time includes image checks, duplicate search,
all nine kinds and writing the datasets, not the interpreter start).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "recipes_throughput.json"


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.knowledge import load_graph
    from dermvlm.manifest import versions
    from dermvlm.recipes.build import build

    load_graph()  # built once per process; timed separately
    cfg = load_config(ROOT / "data_recipes" / "dermamnist.yaml", RecipeConfig)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        result = build(cfg, Path(d) / "out", progress=False, base=ROOT / "data_recipes")
        secs = time.perf_counter() - t
    rows = sum(sum(v.values()) for k, v in result.stats["kinds"].items() if set(v) <= {"train", "val", "test"})
    res = {"records": result.stats["records"] + result.stats["skipped"], "kept": result.stats["records"],
           "rows_written": rows, "seconds": round(secs, 2), "records_per_s": round(result.stats["records"] / secs),
           "target_seconds": 30, "kinds": result.stats["kinds"], "duplicates": result.stats["duplicates"],
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "versions": versions(),
           "date": datetime.now(UTC).isoformat(timespec="seconds")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k in ("records", "kept", "rows_written", "seconds",
                                                              "records_per_s", "duplicates")}, indent=2))


if __name__ == "__main__":
    main()
