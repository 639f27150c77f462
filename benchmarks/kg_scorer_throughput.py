"""KG scorer throughput on one core: responses per second on a realistic mix of DermIQ-format answers.

Run: ``.venv/bin/python benchmarks/kg_scorer_throughput.py``. Target: at least 5,000 responses/s on one core.
Writes ``benchmarks/results/kg_scorer_throughput.json``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "kg_scorer_throughput.json"


def responses(kg, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(response, gold) pairs: correct, sibling, wrong, negated, free text and malformed answers."""
    rng = random.Random(seed)
    diseases = [d for d in kg.diseases() if not kg.node(d).get("umbrella")]
    out = []
    for _ in range(n):
        gold = rng.choice(diseases)
        feats = kg.features(gold)
        claim = ", ".join(kg.name(f) for f in rng.sample(feats, min(3, len(feats))))
        diffs = [kg.name(d) for d, _ in kg.differentials(gold)[:2]]
        said = rng.choice([gold, gold, rng.choice(diseases), *[d for d, _ in kg.differentials(gold)[:1]]])
        kind = rng.random()
        if kind < 0.6:
            text = (f"<think>The image shows {claim}. There is no ulceration. The differential includes "
                    f"{' and '.join(diffs)}.</think><answer>{kg.name(said)}</answer>")
        elif kind < 0.85:
            text = (f"This looks like {kg.name(said)} given the {claim}; {diffs[0]} is less likely. "
                    "Please see a dermatologist for a biopsy if it changes.")
        else:
            text = f"<think>{claim}</think> maybe {kg.name(said)}"
        out.append((text, gold))
    return out


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermvlm.knowledge import KGScorer, load_graph
    from dermvlm.manifest import versions

    t = time.perf_counter()
    kg = load_graph()
    load_s = time.perf_counter() - t
    scorer = KGScorer(kg)
    data = responses(kg, 20000)
    for text, gold in data[:500]:  # warm the per-gold caches like a training run would
        scorer.score(text, gold)
    t = time.perf_counter()
    total = sum(scorer.score(text, gold).score for text, gold in data)
    secs = time.perf_counter() - t
    cold = KGScorer(kg)
    t = time.perf_counter()
    for text, gold in data[:2000]:
        cold.score(text, gold)
    cold_rate = 2000 / (time.perf_counter() - t)
    res = {
        "responses": len(data), "seconds": round(secs, 3), "responses_per_s": round(len(data) / secs),
        "responses_per_s_cold_caches_first_2000": round(cold_rate), "mean_score": round(total / len(data), 4),
        "mean_tokens": round(sum(len(t.split()) for t, _ in data) / len(data), 1),
        "graph_load_s": round(load_s, 2), "target_responses_per_s": 5000,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1},
        "versions": versions(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("versions", "machine")}, indent=2))


if __name__ == "__main__":
    main()
