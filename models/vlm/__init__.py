"""Image-to-text LLM families on one runtime.

The runtime (``hub``: hub-layout checkpoint folders loaded strictly onto a meta-built tree;
``templates``: conversation templates; ``splice``: image features into the prompt's
embeddings; ``generation``: settings as configuration and batch-of-one generation with a time
limit; ``reference``: random weights and a tokenizer made on the spot) serves each family,
which adds its vision tower, connector, template choice and answer parser:

- ``libra``: temporal CXR findings from the current and the prior image (``models.vlm.libra``);
- ``medrega``: region-aware, bilingual answers and grounded reports (``models.vlm.medrega``).

Importing this package registers the families and their module trees with ``models.base``;
torch and transformers are imported only when an engine or a tree is built.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, register
from models.runtime.tree import register_tree
from models.vlm.libra.tree import FAMILY as LIBRA_FAMILY
from models.vlm.libra.tree import LIBRA_TREE
from models.vlm.medrega.tree import FAMILY as MEDREGA_FAMILY
from models.vlm.medrega.tree import MEDREGA_TREE

register_tree(LIBRA_TREE)
register_tree(MEDREGA_TREE)


@register(LIBRA_FAMILY)
def _build_libra(spec: ModelSpec) -> Engine:
    from models.vlm.libra.engine import LibraEngine

    return LibraEngine(spec)


@register(MEDREGA_FAMILY)
def _build_medrega(spec: ModelSpec) -> Engine:
    from models.vlm.medrega.engine import MedRegAEngine

    return MedRegAEngine(spec)


__all__ = ["LIBRA_FAMILY", "MEDREGA_FAMILY"]
