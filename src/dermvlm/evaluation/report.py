"""``report.md`` of one evaluation (its plots: ``evaluation.plots``) and the side-by-side table of ``dermvlm eval
compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermvlm.evaluation.closed_set import report_lines as closed_set_lines
from dermvlm.evaluation.plots import plots
from dermvlm.io import atomic_write_text

__all__ = ["compare", "fairness_lines", "plots", "settings_line", "write_report"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple) and len(v) == 2:
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return "" if v is None else str(v)


def fairness_lines(primary: dict[str, Any], kind: str) -> list[str]:
    """The report's fairness section: per stratification, groups with n, accuracy, balanced accuracy and interval;
    the worst group and the largest gap (groups of at least ``min_n`` items)."""
    fair = {k: v for k, v in (primary.get("fairness") or {}).items() if v.get("groups")}
    if not fair:
        return []
    lines = ["", f"## Fairness ({kind})", ""]
    for name, f in fair.items():
        worst, gap = f.get("worst_group"), f.get("largest_gap")
        if not worst:
            head = f"no group has {f['min_n']} items; no worst group named"
        else:
            head = (f"worst group **{worst['group']}** (balanced accuracy {worst['balanced_accuracy']:.3f}, "
                    f"n={worst['n']})")
            head += (f"; largest gap {gap['balanced_accuracy']:.3f} ({gap['between'][0]} vs {gap['between'][1]})"
                     if gap else f"; the only group with {f['min_n']} items or more")
        lines += [f"**By {name}**: {head}", "",
                  f"| {name} | n | accuracy | balanced accuracy | 95% CI |", "|---|---|---|---|---|"]
        for g, v in f["groups"].items():
            ci = (v.get("ci95") or {}).get("balanced_accuracy")
            small = " (under min n)" if v["n"] < f["min_n"] else ""
            lines.append(f"| {g}{small} | {v['n']} | {v['accuracy']:.3f} | {v['balanced_accuracy']:.3f} | "
                         f"{_fmt(list(ci)) if ci else ''} |")
        lines.append("")
    return lines


def settings_line(key: dict[str, Any]) -> str:
    """The settings of a cache key (``evaluation.cache``) in one line."""
    s = key.get("sampling") or {}
    prompt = key.get("system_prompt")
    flat = " ".join(str(prompt).split()).replace("`", "'")
    shown = "none" if prompt is None else f"`{flat[:60]}{'…' if len(flat) > 60 else ''}`"
    weights = f", weights `{key['weights'][:12]}`" if key.get("weights") else ""
    serve = f" ({', '.join(f'{k} {v}' for k, v in key['serve'].items())})" if key.get("serve") else ""
    items = key.get("items") or {}
    return (f"model `{key.get('model')}`{weights} at `{key.get('endpoint')}`{serve}; temperature "
            f"{s.get('temperature')}, max_tokens {s.get('max_tokens')}, seed {s.get('seed')}, guided format "
            f"{'on' if s.get('guided_format') else 'off'}; system prompt {shown}; suite items "
            f"`{str(items.get('sha256', ''))[:12]}` ({items.get('n')})")


def write_report(result: dict[str, Any], out_dir: Path) -> Path:
    """The human-readable report of one run of one suite."""
    m = result["metrics"]
    lines = [f"# {result['suite']}: {result['model']}", "",
             f"{result.get('description', '')}", "",
             f"- endpoint: `{result['endpoint']}`, {m['n']} items, {m['errors']} request errors, "
             f"format compliance {m['format_compliance']:.3f}",
             f"- latency p50 {_fmt(m['latency']['p50_s'])} s, p95 {_fmt(m['latency']['p95_s'])} s, "
             f"{_fmt(m['latency']['tokens_per_s_per_request'])} tokens/s per request"]
    if result.get("settings"):
        lines.append(f"- settings: {settings_line(result['settings'])}")
    if result.get("errors"):
        lines.append(f"- **{result['errors']} of {result.get('n_items', '?')} items errored**: their requests failed, "
                     "they are not scored, they are listed in `errors.jsonl` and asked again on the next run"
                     + (f" (e.g. {result['error_examples'][0]})" if result.get("error_examples") else ""))
    lines.append("")
    lines += ["| type | n | accuracy [95% CI] | balanced acc. [95% CI] | macro-F1 [95% CI] | unparsable | abstained |",
              "|---|---|---|---|---|---|---|"]
    for kind, t in m["types"].items():
        ci = t.get("ci95", {})
        lines.append(f"| {kind} | {t['n']} | {_fmt(t.get('accuracy'))} {_fmt(ci.get('accuracy'))} | "
                     f"{_fmt(t.get('balanced_accuracy'))} {_fmt(ci.get('balanced_accuracy'))} | "
                     f"{_fmt(t.get('macro_f1'))} {_fmt(ci.get('macro_f1'))} | {_fmt(t.get('unparsable_rate'))} | "
                     f"{_fmt(t.get('abstention_rate'))} |")
    for kind, t in m["types"].items():
        extra = []
        if "hierarchical_accuracy" in t:
            extra.append("hierarchical accuracy by taxonomy level: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.3f}" for k, v in t["hierarchical_accuracy"].items()))
        if "top3_from_differential" in t:
            extra.append(f"top-3 from the stated differential: {t['top3_from_differential']:.3f}")
        if t.get("malignancy"):
            s = t["malignancy"]
            extra.append(f"malignancy (incl. premalignant) sensitivity {_fmt(s['sensitivity'])}, specificity "
                         f"{_fmt(s['specificity'])} (tp {s['tp']}, fn {s['fn']}, tn {s['tn']}, fp {s['fp']})")
        if "kg_factuality" in t:
            f = t["kg_factuality"]
            extra.append(f"KG factuality: mean score {f['mean_score']:.3f}, contradicted claims per answer "
                         f"{f['contradicted_claims_per_answer']:.3f}, hallucination rate {f['hallucination_rate']:.3f},"
                         f" referral advised when a malignancy is in play {f['referral_when_malignancy_in_play']:.3f}")
            if "record_supported_claims_per_answer" in f:
                extra.append(f"grounding: claims the record supports per answer "
                             f"{f['record_supported_claims_per_answer']:.3f}, stereotypes stated as findings per "
                             f"answer {f['stereotype_claims_per_answer']:.3f}, class-knowledge claims per answer "
                             f"{f['typical_claims_per_answer']:.3f} (wrong {f['knowledge_error_rate']:.3f})")
        if "token_f1" in t:
            ci = t.get("ci95", {})
            extra.append(f"open-ended text: exact match {t['exact_match']:.3f} {_fmt(ci.get('exact_match'))}, token F1 "
                         f"{t['token_f1']:.3f} {_fmt(ci.get('token_f1'))}, ROUGE-L {t['rouge_l']:.3f} "
                         f"{_fmt(ci.get('rouge_l'))}, BLEU {t['bleu']:.2f}")
        if "judge" in t:
            j, who = t["judge"], result.get("judge") or {}
            extra.append(f"LLM judge ({who.get('model', '?')} at {who.get('endpoint', '?')}): correct "
                         f"{j['accuracy']:.3f} {_fmt(j['ci95'])} of {j['n']} judged, verdict unparsable "
                         f"{j['unparsable_rate']:.3f}" + (f"; {who['failed']} judge requests failed (asked again "
                                                          "on the next run)" if who.get("failed") else ""))
        elif kind == "open_text" and (who := result.get("judge") or {}).get("unjudged"):
            example = f" (e.g. {who['failed_examples'][0]})" if who.get("failed_examples") else ""
            extra.append(f"LLM judge ({who.get('model', '?')} at {who.get('endpoint', '?')}): **no verdict** on "
                         f"{who['unjudged']} answers: its requests failed{example}; asked again on the next run")
        if extra:
            lines += ["", f"**{kind}**", ""] + [f"- {e}" for e in extra]
    lines += closed_set_lines(m["types"].get("open", {}).get("class_scores"))
    primary = m["types"].get(m["primary"] or "", {})
    if primary.get("per_class"):
        lines += ["", f"## Per class ({m['primary']})", "", "| class | precision | recall | F1 | support |",
                  "|---|---|---|---|---|"]
        for lab, v in primary["per_class"].items():
            lines.append(f"| {lab} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    for name in ("fitzpatrick", "site", "category"):
        st = primary.get("strata", {}).get(name)
        if st:
            lines += ["", f"## By {name} ({m['primary']})", "", f"| {name} | n | accuracy |", "|---|---|---|"]
            lines += [f"| {g} | {v['n']} | {v['accuracy']:.3f} |" for g, v in st.items()]
    lines += fairness_lines(primary, m["primary"])
    for png in ("summary.png", "per_class.png", "confusion_matrix.png", "per_fitzpatrick.png", "fairness.png"):
        if (out_dir / png).exists():
            lines += ["", f"![{png[:-4]}]({png})"]
    lines += ["", "Research use only: these numbers describe a model on a benchmark, not a diagnostic device.", ""]
    return atomic_write_text(out_dir / "report.md", "\n".join(lines))


KEYS = [("items", lambda m: m["n"]), ("format", lambda m: m["format_compliance"]),
        ("p50 latency s", lambda m: m["latency"]["p50_s"])]


def compare(dirs: list[Path]) -> str:
    """A markdown table of several runs' headline metrics, side by side."""
    rows = []
    for d in dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no metrics.json (not an evaluation output folder)")
        rows.append((Path(d), json.loads(path.read_text())))
    header = ["metric", *[f"{r['suite']} / {r['model']} ({d.name})" for d, r in rows]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    kinds = sorted({k for _, r in rows for k in r["metrics"]["types"]})
    for kind in kinds:
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "unparsable_rate"):
            vals = [_fmt(r["metrics"]["types"].get(kind, {}).get(key)) for _, r in rows]
            if any(vals):
                lines.append(f"| {kind} {key.replace('_', ' ')} | " + " | ".join(vals) + " |")
    for name, get in KEYS:
        lines.append(f"| {name} | " + " | ".join(_fmt(get(r["metrics"])) for _, r in rows) + " |")
    return "\n".join(lines)
