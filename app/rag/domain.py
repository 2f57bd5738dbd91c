"""Domain identification for retrieval: which of cxr / ct / ecg / pathology a query is about.

Order of precedence: a domain given explicitly (for example the routing result of the study)
wins; then DICOM metadata (SOP Class UID, Modality, Body Part Examined); then, for a free-text
query, a text fallback that adds a keyword cue to each domain's best fused retrieval score.

This module decides a domain; it never searches on its own behalf beyond scoring the query
against the already-loaded indexes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app.config import DOMAINS
from app.rag.lexical import tokenize

# PS3.4 Annex B.5 (Standard SOP Classes): storage SOP classes that name the domain outright.
SOP_CLASS_DOMAIN = {
    "1.2.840.10008.5.1.4.1.1.1": "cxr",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "cxr",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1": "cxr",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.2": "ct",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1": "ct",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.9.1.1": "ecg",  # 12-lead ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.2": "ecg",  # General ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.3": "ecg",  # Ambulatory ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.77.1.6": "pathology",  # VL Whole Slide Microscopy Image Storage
}
# PS3.3 C.7.3.1.1.1 Modality (0008,0060) defined terms.
MODALITY_DOMAIN = {"CR": "cxr", "DX": "cxr", "CT": "ct", "ECG": "ecg", "SM": "pathology"}
_CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "RIBS", ""}

# Words that point at one domain (compared after ``lexical.tokenize``).
KEYWORDS: dict[str, frozenset[str]] = {
    "cxr": frozenset(
        "cxr x-ray xray radiograph radiography chest-x-ray film pa ap lateral costophrenic "
        "hemidiaphragm cardiothoracic ctr".split()
    ),
    "ct": frozenset(
        "ct hounsfield hu ctpa hrct cta slice axial attenuation laa-950 contrast-enhanced "
        "non-contrast agatston multiplanar".split()
    ),
    "ecg": frozenset(
        "ecg ekg electrocardiogram lead qrs qt qtc pr rhythm sinus bpm v1 v2 v3 v4 v5 v6 avf "
        "avl avr bundle branch block atrioventricular p-wave t-wave st-segment".split()
    ),
    "pathology": frozenset(
        "pathology histology histologic histopathology biopsy slide h&e stain staining ihc "
        "immunohistochemistry wsi mitose mitotic gleason margin grade nuclear".split()
    ),
}
KEYWORD_WEIGHT = 0.15


def _get(meta: Any, key: str) -> str:
    getter = getattr(meta, "get", None)
    value = getter(key) if getter else None
    if value is None:
        return ""
    value = getattr(value, "value", value)  # a pydicom DataElement
    return str(value).strip()


def domain_from_metadata(meta: Mapping[str, Any] | Any | None) -> str | None:
    """The domain that DICOM metadata (a dict of keywords or a pydicom Dataset) names, if any."""
    if meta is None:
        return None
    sop = _get(meta, "SOPClassUID")
    if sop in SOP_CLASS_DOMAIN:
        dom = SOP_CLASS_DOMAIN[sop]
    else:
        dom = MODALITY_DOMAIN.get(_get(meta, "Modality").upper())
    if dom == "cxr" and _get(meta, "BodyPartExamined").upper() not in _CHEST_PARTS:
        return None  # a radiograph, but not of the chest
    return dom


def keyword_hits(tokens: list[str]) -> dict[str, int]:
    """How many distinct domain keywords each domain's list has in the query tokens."""
    toks = set(tokens)
    return {d: len(toks & KEYWORDS[d]) for d in DOMAINS}


def text_scores(
    kb: Any, qvec: np.ndarray, qtoks: list[str], ranked: Mapping[str, list] | None = None
) -> dict[str, float]:
    """Per domain: best fused entry score of the query plus a keyword cue. ``ranked`` may give
    each domain's hits already computed with the default fusion (search() reuses them)."""
    hits = keyword_hits(qtoks)
    out = {}
    for d in DOMAINS:
        if ranked is not None and d in ranked:
            top = ranked[d][:1]
        else:
            top = kb.domains[d].search(qvec, qtoks, limit=1) if d in kb.domains else []
        out[d] = (top[0].score if top else 0.0) + KEYWORD_WEIGHT * hits[d]
    return out


def domain_from_text(
    kb: Any, qvec: np.ndarray, qtoks: list[str], ranked: Mapping[str, list] | None = None
) -> str | None:
    """The best-scoring domain for a free-text query, or None when nothing matches at all."""
    scores = text_scores(kb, qvec, qtoks, ranked)
    best = max(DOMAINS, key=lambda d: scores[d])
    return best if scores[best] > 0 else None


def identify_domain(
    query: str | None = None,
    *,
    domain: str | None = None,
    metadata: Mapping[str, Any] | Any | None = None,
    kb: Any = None,
    qvec: np.ndarray | None = None,
    ranked: Mapping[str, list] | None = None,
) -> str | None:
    """Explicit domain, else DICOM metadata, else the text fallback (needs ``kb`` and ``qvec``;
    ``ranked``, each domain's hits with the default fusion, saves searching them again)."""
    if domain:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain '{domain}' (one of {', '.join(DOMAINS)})")
        return domain
    dom = domain_from_metadata(metadata)
    if dom:
        return dom
    if query and kb is not None and qvec is not None:
        return domain_from_text(kb, qvec, tokenize(query), ranked)
    return None
