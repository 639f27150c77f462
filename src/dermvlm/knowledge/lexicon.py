"""The graph's lexicon: phrases → node ids, found in free text by longest n-gram match, negation-aware.

Text and phrases are normalised the same way (lower case, punctuation to spaces, British/American variants
folded), so "Skin-coloured" and "skin colored" match alike. A mention is negated when a negation cue ("no",
"without", "absence of", "rules out", ...) precedes it within a short window in the same clause, so "no scale
or crust" claims neither scale nor crust. Lookups are dictionary hits on n-grams: tens of microseconds per answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SPELLING = [("colour", "color"), ("haem", "hem"), ("aemia", "emia"), ("tumour", "tumor"), ("naev", "nev"),
             ("seborrhoe", "seborrhe"), ("generalis", "generaliz"), ("localis", "localiz"), ("anaes", "anes"),
             ("oesophag", "esophag"), ("foet", "fet"), ("leukaem", "leukem"), ("leucaem", "leukem"),
             ("favour", "favor"), ("oeru", "eru"), ("ochre", "ocher"), ("centre", "center"), ("grey", "gray"),
             ("ageing", "aging"), ("coeliac", "celiac"), ("diarrhoe", "diarrhe"), ("orthopaed", "orthoped"),
             ("paediat", "pediat"), ("ischaem", "ischem")]
_NON_WORD = re.compile(r"[^a-z0-9']+")
_TOKEN = re.compile(r"[a-z0-9']+|[.;:!?]")

NEGATION_CUES = {
    ("no",), ("not",), ("without",), ("absent",), ("absence", "of"), ("negative", "for"), ("free", "of"),
    ("denies",), ("lacks",), ("lacking",), ("rules", "out"), ("ruled", "out"), ("rule", "out"), ("unlikely",),
    ("nor",), ("never",), ("excluded",), ("exclude",), ("against",), ("rather", "than"), ("instead", "of"),
    ("lack", "of"), ("neither",), ("isn't",), ("doesn't",), ("don't",), ("wasn't",), ("aren't",),
}
POST_NEGATION = {  # cues after a mention: "melanoma is unlikely", "scale was not seen"
    ("unlikely",), ("excluded",), ("absent",), ("ruled", "out"), ("not", "seen"), ("not", "present"),
    ("not", "favoured"), ("not", "favored"), ("not", "likely"), ("less", "likely"), ("is", "absent"),
    ("is", "unlikely"), ("are", "absent"), ("was", "excluded"), ("is", "excluded"), ("not", "seen"),
}
POST_WINDOW = 3
CLAUSE_BREAKS = {".", ";", ":", "!", "?", "but", "however", "although", "though", "whereas", "while", "yet",
                 "which", "except", "instead"}
SENTENCE_BREAKS = {".", ";", "!", "?"}
NEGATION_WINDOW = 6  # tokens after a cue that it can reach


@functools.lru_cache(maxsize=1 << 16)
def fold(word: str) -> str:
    """Fold British spellings onto American ones (both sides of every comparison go through this)."""
    if word.startswith("oedem"):
        word = word[1:]
    for gb, us in _SPELLING:
        if gb in word:
            word = word.replace(gb, us)
    return word


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, spelling folded: the key form of a phrase."""
    return " ".join(fold(w) for w in _NON_WORD.sub(" ", text.lower()).split())


def tokens(text: str) -> list[str]:
    """Word tokens plus sentence punctuation (kept as clause breaks for negation scope)."""
    return [t if not t[0].isalnum() and t != "'" else fold(t) for t in _TOKEN.findall(text.lower())]


@dataclass(frozen=True)
class Mention:
    """One lexicon hit: the node, its kind, the matched words, token position and whether it is negated."""

    node: str
    kind: str
    phrase: str
    start: int
    negated: bool
    sentence: int = 0  # index of the sentence (split at . ; : ! ?) the mention is in


class Lexicon:
    """An index of phrases → (node id, kind); ambiguous phrases map to several nodes."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        self.max_len = 1

    def add(self, phrase: str, node: str, kind: str) -> None:
        key = tuple(normalise(phrase).split())
        if not key:
            return
        hits = self.index.setdefault(key, [])
        if (node, kind) not in hits:
            hits.append((node, kind))
        self.max_len = max(self.max_len, len(key))

    def add_many(self, phrases: Iterable[str], node: str, kind: str) -> None:
        for p in phrases:
            self.add(p, node, kind)

    def lookup(self, phrase: str) -> list[tuple[str, str]]:
        return self.index.get(tuple(normalise(phrase).split()), [])

    def ambiguous(self) -> dict[str, list[tuple[str, str]]]:
        return {" ".join(k): v for k, v in self.index.items() if len(v) > 1}

    def find(self, text: str) -> list[Mention]:
        """Longest-match mentions in ``text``, left to right, each flagged negated or not."""
        toks = tokens(text)
        out: list[Mention] = []
        neg_until = -1
        sentence = 0
        i, n = 0, len(toks)
        while i < n:
            t = toks[i]
            if t in CLAUSE_BREAKS:
                neg_until = -1
                sentence += t in SENTENCE_BREAKS
                i += 1
                continue
            cue = _negation_cue(toks, i)
            if cue:
                neg_until = i + cue + NEGATION_WINDOW
                i += cue
                continue
            for length in range(min(self.max_len, n - i), 0, -1):
                key = tuple(toks[i:i + length])
                hits = self.index.get(key)
                if hits:
                    for node, kind in hits:
                        out.append(Mention(node, kind, " ".join(key), i, i <= neg_until, sentence))
                    i += length
                    break
            else:
                i += 1
        return [_post_negated(m, toks) for m in out]


def _post_negated(m: Mention, toks: list[str]) -> Mention:
    """Negate a mention followed closely (same clause) by a post-negation cue."""
    if m.negated:
        return m
    j = m.start + len(m.phrase.split())
    for k in range(j, min(j + POST_WINDOW, len(toks))):
        if toks[k] in CLAUSE_BREAKS:
            break
        if (toks[k],) in POST_NEGATION or tuple(toks[k:k + 2]) in POST_NEGATION:
            return Mention(m.node, m.kind, m.phrase, m.start, True, m.sentence)
    return m


def _negation_cue(toks: list[str], i: int) -> int:
    """Length of the negation cue starting at ``toks[i]`` (0 if none)."""
    if (toks[i],) in NEGATION_CUES:
        return 1
    if i + 1 < len(toks) and (toks[i], toks[i + 1]) in NEGATION_CUES:
        return 2
    return 0
