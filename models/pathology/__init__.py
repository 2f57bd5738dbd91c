"""Whole-slide images: one slide abstraction over Aperio SVS / TIFF (tiffslide) and DICOM VL
Whole Slide Microscopy (wsidicom) read lazily by tile (``slide``); tissue detection
(``tissue``), H&E stain vectors and tile quality (``stain``), nuclei by a classical method
(``nuclei``); the ``slide-quant`` engine (``engine``).

Importing this package registers the family and its phrasing table.
"""

from __future__ import annotations

from models.base import Engine, ModelSpec, register
from models.phrasing import UNIT_WORDS, Phrasing, register_phrasing

FAMILY = "slide-quant"
VERSION = "1.0.0"

register_phrasing(FAMILY, Phrasing(
    key_measurements=(("Tissue area", ("tissue_area",)),
                      ("Nuclei per mm² of tissue analysed", ("nuclei_density",)),
                      ("Tiles analysed", ("tiles_analysed",)),
                      ("Tiles flagged for quality", ("tiles_flagged",))),
    unit_words={**UNIT_WORDS, "mm2": "mm²", "/mm2": "/mm²"}))


@register(FAMILY)
def _build(spec: ModelSpec) -> Engine:
    from models.pathology.engine import SlideQuantEngine

    return SlideQuantEngine(spec)


__all__ = ["FAMILY", "VERSION"]
