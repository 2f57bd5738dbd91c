"""CT: series assembled into volumes (``volume``), quantities measured without learned weights
(``quantify``, ``lung``, ``segments``; the ``ct-quant`` engine) and an OrthoDoc-style assistant
on the vision-language runtime (``assistant``; the ``ct-assistant`` engine).

Importing this package registers both families and the CT phrasing table; numpy-heavy modules
and torch are imported only when an engine is built.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, register
from models.ct.phrasing import CT_PHRASING
from models.phrasing import register_phrasing
from models.runtime.tree import TreeSpec, register_tree

QUANT_FAMILY = "ct-quant"
ASSISTANT_FAMILY = "ct-assistant"
QUANT_VERSION = "1.0.0"

register_phrasing(QUANT_FAMILY, CT_PHRASING)


@register(QUANT_FAMILY)
def _build_quant(spec: ModelSpec) -> Engine:
    from models.ct.engine import CtQuantEngine

    return CtQuantEngine(spec)


@register(ASSISTANT_FAMILY)
def _build_assistant(spec: ModelSpec) -> Engine:
    from models.ct.assistant import CtAssistantEngine

    return CtAssistantEngine(spec)


def _assistant_tree(variant: str, config_name: str):  # noqa: ANN202 - an nn.Module
    # the assistant is MedRegA's tree with a CT prompt around it
    from models.vlm.medrega.tree import build_medrega_tree

    return build_medrega_tree(variant, config_name)


register_tree(TreeSpec(family=ASSISTANT_FAMILY, build=_assistant_tree, configs=("40b",),
                       default_config="40b"))

__all__ = ["ASSISTANT_FAMILY", "QUANT_FAMILY", "QUANT_VERSION"]
