"""The version of each family the pipeline runs when no version of it is active: the built-in
rule-based engines at their own version, every learned family as its untrained reference."""

from __future__ import annotations

from models.base import ModelSpec
from models.technical import VERSION as TECHNICAL_VERSION

DEFAULT_VERSIONS: dict[str, tuple[str, str]] = {  # family -> (version, variant)
    "technical": (TECHNICAL_VERSION, "builtin"),
    "ecg-measure": ("1.1.0", "builtin"),
    "merl": ("reference", "reference"),
    "promptmrg": ("reference", "reference"),
    "libra": ("reference", "reference"),
    "medrega": ("reference", "reference"),
    "medplib": ("reference", "reference"),
    "ct-quant": ("1.0.0", "builtin"),
    "ct-assistant": ("reference", "reference"),
    "slide-quant": ("1.0.0", "builtin"),
}


def default_spec(family: str) -> ModelSpec:
    """The spec used when none is given: builtin for rule-based families, reference otherwise."""
    if family in DEFAULT_VERSIONS:
        version, variant = DEFAULT_VERSIONS[family]
    else:
        version, variant = "reference", "reference"
    return ModelSpec(family=family, version=version, variant=variant)  # type: ignore[arg-type]
