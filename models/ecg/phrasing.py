"""The ECG families' report wording: the summary intervals and axes stated together, and
measurements placed by lead."""

from __future__ import annotations

from models.base import Where
from models.phrasing import Phrasing, plain_where

# Summary measurements stated together in one findings sentence, in this order, with the words a
# report uses for them. Several spellings map to one entry; per-lead values are not summaries.
KEY_MEASUREMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Heart rate", ("heart_rate", "hr", "ventricular_rate")),
    ("Atrial rate", ("atrial_rate",)),
    ("RR interval", ("rr_interval", "rr")),
    ("PR interval", ("pr_interval", "pr")),
    ("QRS duration", ("qrs_duration", "qrs")),
    ("QT interval", ("qt_interval", "qt")),
    ("QTc", ("qtc_interval", "qtc")),
    ("QTc (Bazett)", ("qtc_bazett",)),
    ("QTc (Fridericia)", ("qtc_fridericia",)),
    ("QTc (Framingham)", ("qtc_framingham",)),
    ("P axis", ("p_axis",)),
    ("QRS axis", ("qrs_axis", "axis")),
    ("T axis", ("t_axis",)),
)


def lead_where(where: Where) -> str:
    return f" in lead {where.lead}" if where.lead else plain_where(where)


ECG_PHRASING = Phrasing(key_measurements=KEY_MEASUREMENTS, where=lead_where)
