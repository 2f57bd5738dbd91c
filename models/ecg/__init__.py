"""The ECG model families.

- ``ecg-measure``: rule-based measurement and interpretation (``models.ecg.engine``).
- ``merl``: MERL zero-shot ECG classification (``models.ecg.merl``); torch and transformers are
  imported only when a MERL engine is built.

Importing this package registers both with ``models.base``.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, register
from models.ecg.engine import FAMILY as MEASURE_FAMILY
from models.ecg.engine import EcgMeasureEngine
from models.ecg.merl_tree import MERL_TREE
from models.ecg.phrasing import ECG_PHRASING
from models.phrasing import register_phrasing
from models.runtime.tree import register_tree

MERL_FAMILY = "merl"
register_phrasing(MEASURE_FAMILY, ECG_PHRASING)
register_phrasing(MERL_FAMILY, ECG_PHRASING)
register_tree(MERL_TREE)


@register(MEASURE_FAMILY)
def _build_measure(spec: ModelSpec) -> Engine:
    return EcgMeasureEngine(spec)


@register(MERL_FAMILY)
def _build_merl(spec: ModelSpec) -> Engine:
    from models.ecg.merl import MerlEngine

    return MerlEngine(spec)


__all__ = ["EcgMeasureEngine", "MEASURE_FAMILY", "MERL_FAMILY"]
