"""The comparison guard: a Libra run without a real prior image must not speak of change.

Libra was trained to describe temporal change, and without a prior the authors feed the current
image twice; the model may still write "unchanged" or "new since". Such a sentence claims a
comparison that was never made, so ``strip_comparisons`` removes every sentence holding
comparison language and says which term removed it. The terms are temporal by themselves
(words like "increased" are not, as in "increased interstitial markings").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.cxr.labeller import split_sentences

TERMS = (
    r"unchanged", r"no (?:significant |interval )?change", r"interval(?:ly)?",
    r"compared (?:with|to)", r"comparison", r"new(?:ly)?", r"since (?:the )?(?:prior|previous|"
    r"last|earlier)", r"previous(?:ly)?", r"prior (?:study|exam|examination|radiograph|film|"
    r"image|imaging)", r"stable", r"again (?:seen|noted|demonstrated|visible)",
    r"persist(?:s|ent|ently|ing)?", r"improv(?:ed|ement|ing)", r"worsen(?:ed|ing)?",
    r"resolv(?:ed|ing)", r"resolution", r"re-?demonstrat(?:ed|es|ion)", r"as before",
    r"(?:has|have) (?:increased|decreased|enlarged|diminished)", r"progress(?:ed|ion)",
    r"regress(?:ed|ion)", r"redistribut(?:ed|ion) since",
)
_PATTERN = re.compile(r"\b(?:" + "|".join(TERMS) + r")\b", re.IGNORECASE)
@dataclass(frozen=True)
class Guarded:
    text: str
    removed: tuple[tuple[str, str], ...]  # (sentence, the term that removed it)


def comparison_term(sentence: str) -> str | None:
    m = _PATTERN.search(sentence)
    return m.group(0) if m else None


def strip_comparisons(text: str) -> Guarded:
    """``text`` without its sentences of comparison language."""
    kept: list[str] = []
    removed: list[tuple[str, str]] = []
    for start, end in split_sentences(text):
        sentence = text[start:end]
        term = comparison_term(sentence)
        if term is None:
            kept.append(sentence.strip())
        else:
            removed.append((sentence.strip(), term))
    return Guarded(" ".join(kept), tuple(removed))
