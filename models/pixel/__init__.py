"""MedPLIB: pixel-level answers and masks (Huang et al., AAAI 2025).

A question about a point, a box or a drawn mask on one image is answered by a LLaVA-style
Llama with two-expert MoE layers; an answer that says ``<SEG>`` also gets a mask from
SAM-Med2D. ``net`` and ``sam`` hold the module tree with the released checkpoint's names,
``preprocess`` the authors' CLIP and SAM branches and region prompts, ``engine`` the engine.

Importing this package registers the family and its tree; torch is imported only when an
engine or a tree is built.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, register
from models.pixel.tree import FAMILY, MEDPLIB_TREE
from models.runtime.tree import register_tree

register_tree(MEDPLIB_TREE)


@register(FAMILY)
def _build_medplib(spec: ModelSpec) -> Engine:
    from models.pixel.engine import MedPLIBEngine

    return MedPLIBEngine(spec)


__all__ = ["FAMILY"]
