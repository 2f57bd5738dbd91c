"""The chest-radiograph (CXR) model families.

- ``promptmrg``: report generation with PromptMRG (``models.cxr.promptmrg``); torch and
  transformers are imported only when an engine or its module tree is built.
- the report labeller (``models.cxr.labeller``) is the composer's labeller for the ``cxr``
  domain: it reads the findings a generated sentence expresses.

Importing this package registers the families and their module trees with ``models.base``.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, Statement, register
from models.cxr.promptmrg.tree import FAMILY as PROMPTMRG_FAMILY
from models.cxr.promptmrg.tree import PROMPTMRG_TREE
from models.phrasing import register_labeller
from models.runtime.tree import register_tree

register_tree(PROMPTMRG_TREE)


@register(PROMPTMRG_FAMILY)
def _build_promptmrg(spec: ModelSpec) -> Engine:
    from models.cxr.promptmrg.engine import PromptMrgEngine

    return PromptMrgEngine(spec)


def _statements(text: str) -> tuple[Statement, ...]:
    """The composer's CXR labeller: what a generated sentence says of each observation, so
    that it enters a draft only when trained, grounded findings agree with it."""
    from models.cxr.statements import statements

    return statements(text)


register_labeller("cxr", _statements)

__all__ = ["PROMPTMRG_FAMILY"]
