"""ECG lead names: normalisation to the standard 12 names and derivation of missing limb leads.

The standard order is I, II, III, aVR, aVL, aVF, V1-V6. Vendors and databases spell leads in many
ways ("Lead II", "MLII", "AVL", "V5 lead", SCP-ECG and MDC codes); everything is mapped here so the
rest of the package only ever sees the standard names.
"""

from __future__ import annotations

import re

import numpy as np

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
LIMB_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF")
PRECORDIAL_LEADS: tuple[str, ...] = ("V1", "V2", "V3", "V4", "V5", "V6")

# Lead codes of DICOM CID 3001 "ECG Leads". MDC (ISO/IEEE 11073-10101) codes are the current
# ones; SCPECG (EN 1064) codes are the older scheme and still appear in files from the field.
MDC_LEAD_CODES: dict[str, str] = {
    "I": "2:1", "II": "2:2", "V1": "2:3", "V2": "2:4", "V3": "2:5", "V4": "2:6",
    "V5": "2:7", "V6": "2:8", "III": "2:61", "aVR": "2:62", "aVL": "2:63", "aVF": "2:64",
}
SCPECG_LEAD_CODES: dict[str, str] = {
    "I": "5.6.3-9-1", "II": "5.6.3-9-2", "V1": "5.6.3-9-3", "V2": "5.6.3-9-4",
    "V3": "5.6.3-9-5", "V4": "5.6.3-9-6", "V5": "5.6.3-9-7", "V6": "5.6.3-9-8",
    "III": "5.6.3-9-61", "aVR": "5.6.3-9-62", "aVL": "5.6.3-9-63", "aVF": "5.6.3-9-64",
}
_CODE_TO_LEAD = {code: lead for table in (MDC_LEAD_CODES, SCPECG_LEAD_CODES)
                 for lead, code in table.items()}

# Spellings seen in WFDB headers and DICOM code meanings, after lower-casing and stripping
# "lead" and punctuation. Modified limb leads of Holter records (MLII, MLIII) are close enough
# to the standard limb leads for rhythm and interval analysis, and are mapped to them.
_ALIASES: dict[str, str] = {
    "i": "I", "1": "I", "ii": "II", "2": "II", "iii": "III", "3": "III",
    "mli": "I", "mlii": "II", "mliii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF", "-avr": "-aVR",
    **{f"v{n}": f"V{n}" for n in range(1, 7)},
    **{f"mv{n}": f"V{n}" for n in range(1, 7)},
    **{f"c{n}": f"V{n}" for n in range(1, 7)},
}


def normalise_lead_name(name: str) -> str:
    """Return the standard name of a lead label or code, or the label unchanged if unknown."""
    raw = (name or "").strip()
    if raw in _CODE_TO_LEAD:
        return _CODE_TO_LEAD[raw]
    key = raw.lower()
    key = re.sub(r"\blead\b", "", key)
    key = re.sub(r"[\s_()\[\]]", "", key)
    key = key.replace("'", "")
    if key in _ALIASES:
        return _ALIASES[key]
    return raw


def derive_missing_leads(signals: np.ndarray, leads: list[str]) -> tuple[np.ndarray, list[str],
                                                                         list[str]]:
    """Add limb leads that follow exactly from the ones present (Einthoven's and Goldberger's
    equations). Returns the new signals, lead names and one note per derived lead.

    Only leads of the same hexaxial system are derived: any two of I, II, III give the third and
    all three augmented leads. Precordial leads can never be derived.
    """
    have = {name: signals[i] for i, name in enumerate(leads)}
    notes: list[str] = []
    extra: dict[str, np.ndarray] = {}

    def get(n: str) -> np.ndarray | None:
        return have.get(n, extra.get(n))

    # Einthoven: II = I + III
    if get("III") is None and get("I") is not None and get("II") is not None:
        extra["III"] = get("II") - get("I")
        notes.append("III derived as II - I (Einthoven)")
    if get("I") is None and get("II") is not None and get("III") is not None:
        extra["I"] = get("II") - get("III")
        notes.append("I derived as II - III (Einthoven)")
    if get("II") is None and get("I") is not None and get("III") is not None:
        extra["II"] = get("I") + get("III")
        notes.append("II derived as I + III (Einthoven)")
    lead_i, lead_ii, lead_iii = get("I"), get("II"), get("III")
    if lead_i is not None and lead_ii is not None and lead_iii is not None:
        # Goldberger's augmented leads from two limb leads.
        if get("aVR") is None:
            extra["aVR"] = -(lead_i + lead_ii) / 2.0
            notes.append("aVR derived as -(I + II) / 2 (Goldberger)")
        if get("aVL") is None:
            extra["aVL"] = (lead_i - lead_iii) / 2.0
            notes.append("aVL derived as (I - III) / 2 (Goldberger)")
        if get("aVF") is None:
            extra["aVF"] = (lead_ii + lead_iii) / 2.0
            notes.append("aVF derived as (II + III) / 2 (Goldberger)")
    if not extra:
        return signals, list(leads), notes
    names = list(leads) + list(extra)
    stacked = np.vstack([signals] + [extra[n][None, :] for n in extra])
    return stacked, names, notes


def standard_order(leads: list[str]) -> list[int]:
    """Indices that put the standard leads first in standard order, others after in file order."""
    pos = {name: i for i, name in enumerate(STANDARD_LEADS)}
    return sorted(range(len(leads)), key=lambda i: (pos.get(leads[i], len(pos)), i))
