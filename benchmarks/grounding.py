"""KG factuality before and after grounding, on PAD-UFES-20's real records (their clinical fields).

For every PAD-UFES-20 record (2,298 rows of ``metadata.csv``; labels and clinical fields only: no image is read,
nothing is trained or selected, so every split is used) five kinds of response are written, then
scored by the evaluation's ``kg_factuality`` with the
scorer as it was before grounding (``KGScorer(grounded=False)``) and as it is now:

- ``legacy_trace``: the reasoning trace the recipes wrote before grounding (the earlier ``recipes/text.py`` read
  from git), which recites the gold class's typical features;
- ``grounded_trace``: today's trace ("Here:" the record's facts, "Typical of X:" class knowledge);
- ``stereotype_as_findings``: the gold class's typical features stated as findings about the image;
- ``wrong_record_fact``: today's trace with one record fact stated wrongly (a symptom denied or reported);
- ``wrong_label_stereotype``: a differential's typical features stated as findings, answering that differential.

    python benchmarks/grounding.py          # → benchmarks/results/grounding.json (a few seconds)
"""

from __future__ import annotations

import importlib.util
import json
import platform
import random
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "a95507e"  # the last commit whose recipes wrote ungrounded traces


def legacy_text_module():
    """``recipes/text.py`` as it was at ``BEFORE`` (the ungrounded traces)."""
    source = subprocess.run(["git", "show", f"{BEFORE}:src/dermvlm/recipes/text.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy_text.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("legacy_text", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def all_records(kg, source: Path, load_source) -> list:
    """Every record of ``metadata.csv`` through the real adapter, whether or not its image is in the folder (the
    benchmark reads labels and clinical fields only): the adapter sees an empty stand-in file per image."""
    import csv

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "metadata.csv").write_bytes((source / "metadata.csv").read_bytes())
        (tmp / "images").mkdir()
        with open(source / "metadata.csv", newline="") as f:
            for row in csv.DictReader(f):
                (tmp / "images" / row["img_id"]).touch()
        return load_source("pad_ufes_20", kg, tmp).records


def responses(kg, record, legacy, rng: random.Random) -> dict[str, str]:
    from dermvlm.recipes import text

    name = kg.name(record.label)
    refer = " " + text.REFERRAL[text.referral_level(kg, record.label)]
    grounded = text.reasoning(kg, record, random.Random(rng.random()))
    feats = text.typical_features(kg, record.label, random.Random(rng.random()), False)
    diffs = [d for d, _ in kg.differentials(record.label)]
    wrong = diffs[0] if diffs else "psoriasis"
    wrong_feats = text.typical_features(kg, wrong, random.Random(rng.random()), False)
    present, absent = record.meta.get("symptoms") or [], record.meta.get("symptoms_absent") or []
    facts = [("deny", s) for s in present] + [("report", s) for s in absent]
    how, symptom = rng.choice(facts) if facts else ("report", "bleed")
    word = text.SYMPTOM_WORDS[symptom]
    flipped = f" The record reports no {word}." if how == "deny" else f" Reported here: {word}."
    return {
        "legacy_trace": f"<think>{legacy.reasoning(kg, record, random.Random(rng.random()))}</think>"
                        f"<answer>{name}</answer>",
        "grounded_trace": f"<think>{grounded}</think><answer>{name}</answer>",
        "stereotype_as_findings": f"<think>The lesion shows {text.join(feats)}.{refer}</think><answer>{name}</answer>",
        "wrong_record_fact": f"<think>{grounded}{flipped}</think><answer>{name}</answer>",
        "wrong_label_stereotype": f"<think>The lesion shows {text.join(wrong_feats)}.{refer}</think>"
                                  f"<answer>{kg.name(wrong)}</answer>",
    }


def main() -> None:
    from dermvlm.data_root import rerooted
    from dermvlm.datasets.adapters import load_source
    from dermvlm.evaluation.score import score_predictions
    from dermvlm.knowledge import KGScorer, load_graph
    from dermvlm.knowledge.grounding import RecordFacts

    kg = load_graph()
    legacy = legacy_text_module()
    records = all_records(kg, ROOT / rerooted("../shared/data/pad_ufes_20"), load_source)
    rng = random.Random(0)
    rows: dict[str, list[dict]] = {}
    for i, r in enumerate(records):
        for kind, response in responses(kg, r, legacy, rng).items():
            rows.setdefault(kind, []).append({
                "id": str(i), "question": "q", "options": [], "answer": kg.name(r.label), "type": "open",
                "label": r.label, "label_name": kg.name(r.label), "site": r.site or "",
                "fitzpatrick": r.fitzpatrick or 0, "record_facts": RecordFacts.from_meta(r.meta).to_json(),
                "response": response})
    scorers = {"before": KGScorer(kg, grounded=False), "after": KGScorer(kg)}
    table = {}
    for kind, items in rows.items():
        table[kind] = {}
        for when, scorer in scorers.items():
            f = score_predictions([dict(x) for x in items], kg, bootstrap=0, scorer=scorer)["types"]["open"]
            feats = [scorer.score(x["response"], x["label"], site=x["site"] or None,
                                  fitzpatrick=x["fitzpatrick"] or None, facts=x["record_facts"]).feature_score
                     for x in items]
            known = [v for v in feats if v is not None]
            table[kind][when] = {**f["kg_factuality"],
                                 "mean_feature_score": round(sum(known) / len(known), 4) if known else None,
                                 "answers_with_a_feature_score": round(len(known) / len(items), 4)}
    out = {"benchmark": "grounding", "records": len(records), "dataset": "pad_ufes_20 (all splits; nothing trained)",
           "before_commit": BEFORE, "table": table,
           "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
           "date": datetime.now(UTC).isoformat(timespec="seconds")}
    path = ROOT / "benchmarks" / "results" / "grounding.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'response':24} {'':6} {'mean score':>10} {'feature':>8} {'record+':>8} {'contra':>7} {'stereo':>7}")
    for kind, by in table.items():
        for when, f in by.items():
            print(f"{kind:24} {when:6} {f['mean_score']:10.3f} {f['mean_feature_score'] or 0:8.3f} "
                  f"{f.get('record_supported_claims_per_answer', 0):8.2f} {f['contradicted_claims_per_answer']:7.2f} "
                  f"{f.get('stereotype_claims_per_answer', 0):7.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
