"""One answer as one card in the conversation: the diagnosis read from it, the model's own words, a "cut off" or
"abstained" badge, the differential, the referral advice and the reasoning folded away (``<details>``). HTML with
every model-written string escaped; no blank line inside, so the chat's Markdown keeps it one block."""

from __future__ import annotations

from html import escape

from dermvlm.app.reading import Reading
from dermvlm.knowledge.lexicon import normalise
from dermvlm.recipes.text import REFERRAL

CUT_OFF = {
    "reasoning": "Cut off inside its reasoning, before any answer",
    "answer": "Cut off before its </answer>: this is the answer so far",
    "no answer": "Cut off before it gave an answer",
}
CSS = """
.answer-card {display: flex; flex-direction: column; gap: .35rem}
.answer-card .card-title {font-size: 1.15em; font-weight: 600}
.answer-card .badge {display: inline-block; margin-left: .5em; padding: 0 .5em; border-radius: .6em;
  font-size: .75em; font-weight: 600; vertical-align: middle}
.answer-card .badge-cut-off {background: #fde68a; color: #78350f}
.answer-card .badge-abstained {background: #e5e7eb; color: #1f2937}
.answer-card .card-note {font-size: .9em; color: #78350f}
.answer-card .card-referral {padding: .3em .6em; border-left: 3px solid #b45309; background: #fffbeb}
.answer-card .card-referral.urgent {border-color: #b91c1c; background: #fef2f2}
.answer-card details summary {cursor: pointer; color: #4b5563}
.answer-card .card-streaming {color: #4b5563}
#examples .caption-label {max-width: 100%; white-space: normal; font-size: .75em; line-height: 1.15}
"""


def _text(text: str) -> str:
    """Model-written text, escaped, line breaks kept without blank lines."""
    return "<br>".join(escape(line) for line in text.strip().splitlines() if line.strip())


def _badge(kind: str, text: str, title: str = "") -> str:
    tip = f' title="{escape(title)}"' if title else ""
    return f'<span class="badge badge-{kind}"{tip}>{escape(text)}</span>'


def _cut_note(r: Reading) -> str:
    """Why the cut-off badge is there, and what to do."""
    where = "no answer" if r.cut_off == "answer" and not r.answer else r.cut_off
    return f"{CUT_OFF[where]}; raise --max-tokens or ask again." if r.cut_off else ""


def _title(r: Reading) -> str:
    badges = _badge("cut-off", "cut off", _cut_note(r)) if r.cut_off else ""
    if r.abstained:
        return f'<div class="card-title">The model abstained{_badge("abstained", "abstained")}{badges}</div>'
    if r.diagnosis_name:
        name = escape(r.diagnosis_name[:1].upper() + r.diagnosis_name[1:])
        where = "" if r.read_from == "answer" else f" <small>(read from the {r.read_from})</small>"
        return f'<div class="card-title">{name}{where}{badges}</div>'
    what = "No answer" if r.cut_off and not r.answer else "No diagnosis the knowledge graph knows"
    return f'<div class="card-title">{what}{badges}</div>'


def _answer_line(r: Reading) -> str:
    """The model's own answer when it says more than the diagnosis read from it."""
    if not r.answer:
        empty = '<div class="card-answer"><i>(the model returned no answer text)</i></div>'
        return "" if r.reasoning and r.cut_off else empty
    if normalise(r.answer) == normalise(r.diagnosis_name or ""):
        return ""
    return f'<div class="card-answer"><b>The model\'s answer:</b> {_text(r.answer)}</div>'


def card_html(r: Reading) -> str:
    """The card of one finished answer."""
    parts = [_title(r)]
    if r.cut_off:
        parts.append(f'<div class="card-note">{escape(_cut_note(r))}</div>')
    parts.append(_answer_line(r))
    if r.differential:
        source = " (from the knowledge graph; the model named none)" if r.differential_from_graph else ""
        parts.append(f'<div class="card-differential"><b>Differential{source}:</b> '
                     f'{escape(", ".join(r.differential))}</div>')
    if r.referral:
        urgent = " urgent" if r.referral == REFERRAL["urgent"] else ""
        parts.append(f'<div class="card-referral{urgent}"><b>Referral advice:</b> {escape(r.referral)}</div>')
    reasoning = _text(r.reasoning) if r.reasoning else "<i>The answer gave no separate reasoning.</i>"
    parts.append(f'<details class="card-reasoning"><summary>Reasoning (the model\'s &lt;think&gt;)</summary>'
                 f"<div>{reasoning}</div></details>")
    return f'<div class="answer-card">{"".join(p for p in parts if p)}</div>'


def streaming_html(text: str) -> str:
    """The answer while it streams in: the raw text so far, tags shown as written."""
    return f'<div class="answer-card"><div class="card-streaming">{_text(text) or "…"}</div></div>'
