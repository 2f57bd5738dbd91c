"""How a family's measurements read in a report, and how a domain's text is labelled.

The composer is domain-neutral: the words for a family's key measurements ("Heart rate",
"QTc"), units and where-phrases ("in lead V2") come from the phrasing table the family registers
here, beside its own code. A domain may also register a labeller, which reads the findings a
sentence of generated text expresses so the composer can check each one against grounded
sources (the CXR report labeller is one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from models.base import Statement, Where

Labeller = Callable[[str], "tuple[Statement, ...]"]

# UCUM symbols as a report writes them; the rest are written as they are.
UNIT_WORDS: Mapping[str, str] = {"/min": "/min", "{beats}/min": "/min", "1/min": "/min",
                                 "deg": "degrees", "um": "micrometres", "{pixels}": "pixels",
                                 "{beats}": "1"}  # "1": a plain count, no unit word


def format_number(value: float) -> str:
    """A number as a report writes it: 512, 1.25, 0.811, 1806."""
    if float(value).is_integer():
        return str(int(value))
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def plain_where(where: Where) -> str:
    """A where-phrase for any domain: the slice range of a series, else nothing."""
    if where.slices is not None:
        first, last = where.slices
        return f" on slice {first + 1}" if first == last else f" on slices {first + 1}-{last + 1}"
    return ""


@dataclass(frozen=True)
class Phrasing:
    """A family's report wording.

    ``key_measurements``: the summary measurements stated together in one findings sentence, in
    this order: (words, measurement names that mean it). ``where`` turns a measurement's place
    into a phrase appended to its name. ``unit_words`` overrides how units read."""

    key_measurements: tuple[tuple[str, tuple[str, ...]], ...] = ()
    where: Callable[[Where], str] = plain_where
    unit_words: Mapping[str, str] = field(default_factory=lambda: dict(UNIT_WORDS))

    def key_index(self) -> dict[str, int]:
        return {alias: i for i, (_, aliases) in enumerate(self.key_measurements)
                for alias in aliases}


NEUTRAL = Phrasing()
_PHRASING: dict[str, Phrasing] = {}
_LABELLERS: dict[str, Labeller] = {}


def register_phrasing(family: str, phrasing: Phrasing) -> None:
    _PHRASING[family] = phrasing


def phrasing_for(family: str) -> Phrasing:
    """The family's phrasing table, or the neutral one."""
    from models.base import families

    families()  # importing the built-in families registers their tables
    return _PHRASING.get(family, NEUTRAL)


def register_labeller(domain: str, labeller: Labeller) -> None:
    _LABELLERS[domain] = labeller


def labeller_for(domain: str | None) -> Labeller | None:
    from models.base import families

    families()
    return _LABELLERS.get(domain) if domain else None
