"""Which view each image of a chest study is, and which image goes to report generation.

The view comes from View Position (0018,5101), then View Code Sequence (0054,0220), then words of
Series Description (0008,103E): the coded attributes before free text. The frontal image goes to
the report model (PA before AP); the choice is one sentence for the technique section. Works on
pydicom datasets and on header dicts (pydicom keywords; ViewCodeSequence as a list of dicts).
This module never imports ``app``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.sr._snomed_dict import mapping as _snomed_rt  # SCT <-> legacy SNOMED RT codes
from pydicom.sr.codedict import codes

FRONTAL = ("PA", "AP", "FRONTAL")  # "FRONTAL": frontal, AP or PA not said
LATERAL = ("LL", "RL", "LAT", "LATERAL")

# View Position defined terms (PS3.3 C.8.11.5 DX Positioning; C.8.1.1 CR Series) and the words a
# series description uses for them.
_WORDS = {"PA": "PA", "AP": "AP", "FRONTAL": "FRONTAL", "LL": "LL", "RL": "RL", "LAT": "LAT",
          "LATERAL": "LAT", "LLD": "LLD", "RLD": "RLD", "LLO": "LLO", "RLO": "RLO"}

# PS3.16 CID 4010 "DX View", as pydicom ships it (SCT codes), with the SNOMED RT (SRT) codes of
# the same concepts that files written before 2019 carry. R-10214 (postero-anterior) is the SRT
# code older editions of CID 4010 listed; pydicom's SCT<->SRT map has only R-40888 for it.
_CID4010 = codes.cid4010
_CODED = {_CID4010.PosteroAnterior.value: "PA", _CID4010.AnteroPosterior.value: "AP",
          _CID4010.LeftLateral.value: "LL", _CID4010.RightLateral.value: "RL",
          _CID4010.LateralProjection.value: "LAT", _CID4010.Frontal.value: "FRONTAL"}
_CODED |= {_snomed_rt["SCT"][sct]: view for sct, view in list(_CODED.items())
           if sct in _snomed_rt["SCT"]}
_CODED["R-10214"] = "PA"
_MEANINGS = {"postero-anterior": "PA", "antero-posterior": "AP", "left lateral": "LL",
             "right lateral": "RL", "lateral": "LAT", "frontal": "FRONTAL"}

_SOURCE_WORDS = {"ViewPosition": "View Position", "ViewCodeSequence": "View Code Sequence",
                 "SeriesDescription": "series description"}


def _get(header: Any, keyword: str) -> Any:
    return header.get(keyword) if isinstance(header, Mapping) else getattr(header, keyword, None)


def _from_words(text: str) -> str:
    """The one view the words name ("CHEST PA" -> PA); "" for none or for two ("PA AND LAT")."""
    found = {_WORDS[w] for w in re.split(r"[^A-Z]+", text.upper()) if w in _WORDS}
    return found.pop() if len(found) == 1 else ""


def view_of(header: Any) -> tuple[str, str]:
    """(view, source) of one image header (a pydicom Dataset or a dict): view is "PA", "AP",
    "FRONTAL", "LL", "RL", "LAT", another View Position term, or "" with source "none"."""
    position = str(_get(header, "ViewPosition") or "").strip().upper()
    if position:
        return _WORDS.get(position, position), "ViewPosition"
    for item in _get(header, "ViewCodeSequence") or []:
        value = str(_get(item, "CodeValue") or "").strip()
        meaning = str(_get(item, "CodeMeaning") or "").strip().lower()
        view = _CODED.get(value) or _MEANINGS.get(meaning, "")
        if view:
            return view, "ViewCodeSequence"
    view = _from_words(str(_get(header, "SeriesDescription") or ""))
    return (view, "SeriesDescription") if view else ("", "none")


@dataclass(frozen=True)
class ViewSelection:
    """The image chosen for report generation, the laterals, and why, in one sentence."""

    frontal: Path | None
    frontal_view: str
    lateral: list[Path] = field(default_factory=list)
    reason: str = ""
    views: list[tuple[Path, str, str]] = field(default_factory=list)


def _count(n: int, what: str) -> str:
    return f"{n} {what} image{'s' if n != 1 else ''}"


def select_views(items: list[tuple[Path, Mapping[str, Any]]]) -> ViewSelection:
    """Pick the frontal image of a study: the first PA, else the first AP, else the first other
    frontal, else the first image (said so in the reason). Laterals are listed, not used."""
    views = [(Path(path), *view_of(header)) for path, header in items]
    if not views:
        return ViewSelection(None, "", [], "No image in the study for report generation.", [])
    lateral = [path for path, view, _ in views if view in LATERAL]
    chosen = next((v for want in FRONTAL for v in views if v[1] == want), None)
    if chosen is None:
        chosen = views[0]
        said = f"{chosen[1]} " if chosen[1] else ""
        reason = (f"No image is marked frontal; the first image ({said}"
                  f"{_SOURCE_WORDS.get(chosen[2], 'view unknown')}) used for report generation")
    else:
        label = "Frontal" if chosen[1] == "FRONTAL" else f"Frontal {chosen[1]}"
        reason = f"{label} image ({_SOURCE_WORDS[chosen[2]]}) used for report generation"
    unused_laterals = [p for p in lateral if p != chosen[0]]
    others = len(views) - 1 - len(unused_laterals)
    if unused_laterals:
        reason += f"; {_count(len(unused_laterals), 'lateral')} not used by the model"
    if others:
        reason += f"; {_count(others, 'other')} not used"
    return ViewSelection(chosen[0], chosen[1], lateral, reason + ".", views)
