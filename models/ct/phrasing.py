"""How CT quantities read in a report: the summary volumes and indices stated together, and
where each was measured (a slice range, a segment)."""

from __future__ import annotations

from models.base import Where
from models.phrasing import UNIT_WORDS, Phrasing

KEY_MEASUREMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Liver volume", ("liver_volume",)),
    ("Liver mean attenuation", ("liver_mean",)),
    ("Spleen volume", ("spleen_volume",)),
    ("Spleen mean attenuation", ("spleen_mean",)),
    ("Liver-spleen attenuation difference", ("liver_spleen_attenuation_difference",)),
    ("Aortic mean attenuation", ("aorta_mean",)),
    ("Portal vein mean attenuation", ("portal_vein_mean",)),
    ("T12 trabecular attenuation", ("t12_trabecular_mean",)),
    ("L1 trabecular attenuation", ("l1_trabecular_mean",)),
    ("L2 trabecular attenuation", ("l2_trabecular_mean",)),
    ("Lung volume", ("lung_volume",)),
    ("Right lung volume", ("right_lung_volume",)),
    ("Left lung volume", ("left_lung_volume",)),
    ("Emphysema index (LAA-950)", ("laa_950",)),
    ("Perc15", ("perc15",)),
    ("Mean lung attenuation", ("lung_mean_hu",)),
)


def ct_where(where: Where) -> str:
    """Where a CT quantity was measured: its slice range (its name says the region)."""
    if where.slices is None:
        return ""
    first, last = where.slices
    return (f" on slice {first + 1}" if first == last
            else f" over slices {first + 1}-{last + 1}")


CT_PHRASING = Phrasing(key_measurements=KEY_MEASUREMENTS, where=ct_where,
                       unit_words={**UNIT_WORDS, "[hnsf'U]": "HU"})
