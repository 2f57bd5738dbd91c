"""The ``slide-quant`` engine: a whole-slide image measured with no learned weights.

The slide of the study (its DICOM VL Whole Slide Microscopy series, every pyramid level) is
opened lazily (``models.pathology.slide``); then:

- tissue detected at low magnification (Otsu on saturation), its area in mm²;
- H&E stain vectors (Macenko, the Ruifrok-Johnston matrix as fallback) from tissue tiles;
- a tile grid at ``config["tile_mpp"]`` (0.5 µm/px) over the tissue, and each tile's stain and
  focus quality, the tiles that fail flagged relative to the slide's own medians;
- nuclei on the haematoxylin channel (threshold and watershed) over up to
  ``config["nuclei_tiles"]`` of those tiles, counted per mm² of the tissue analysed; their
  centroids and areas are written beside the result (``nuclei-*.npz``) and named in
  ``raw["annotations"]``, from which the platform stores a DICOM Microscopy Bulk Simple
  Annotations instance referencing the slide.

Everything is a measurement or a technique fact; no diagnosis is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.base import (
    ContractError,
    EngineResult,
    InputError,
    Measurement,
    ModelInfo,
    ModelSpec,
    StudyInput,
    Where,
)
from models.runtime.tree import merge_config

FAMILY = "slide-quant"
BASE_CONFIG: dict[str, Any] = {"tile_mpp": 0.5, "tile_size": 224, "max_tiles": 64,
                               "nuclei_tiles": 16}
WSM_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"


class SlideQuantEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("measure",)
    domains: ClassVar[tuple[str, ...]] = ("pathology",)

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        if spec.variant != "builtin":
            raise ContractError("slide-quant is rule-based: it has only the 'builtin' variant")
        self.spec = spec
        self.config = merge_config(BASE_CONFIG, spec.config)

    def load(self) -> None:
        return None

    @staticmethod
    def _slide_paths(study: StudyInput) -> list[Path]:
        """The image instances of the study's largest slide series."""
        classes = {str(m.get("SOPInstanceUID")): str(m.get("SOPClassUID") or "")
                   for m in study.metadata}
        best: list[Path] = []
        for series in study.series:
            paths = [i.path for i in series.instances
                     if classes.get(i.sop_instance_uid, WSM_IMAGE) == WSM_IMAGE]
            if series.modality == "SM" and len(paths) > len(best):
                best = paths
        if not best:
            raise InputError("the study has no VL Whole Slide Microscopy image series")
        return best

    def run(self, study: StudyInput) -> EngineResult:
        from models.pathology.nuclei import count_nuclei
        from models.pathology.slide import SlideError, open_slide
        from models.pathology.stain import assess_tiles, read_tile, slide_stain_vectors, tile_grid
        from models.pathology.tissue import detect_tissue

        if study.domain != "pathology":
            raise InputError(f"slide-quant measures slides, not a {study.domain} study")
        cfg = self.config
        try:
            slide = open_slide(self._slide_paths(study))
        except SlideError as exc:
            raise InputError(str(exc)) from exc
        with slide:
            tissue = detect_tissue(slide)
            vectors = slide_stain_vectors(slide, tissue)
            tiles = tile_grid(slide, tissue, target_mpp=float(cfg["tile_mpp"]),
                              size=int(cfg["tile_size"]), max_tiles=int(cfg["max_tiles"]))
            quality, reference = assess_tiles([read_tile(slide, t) for t in tiles], vectors)
            nuclei = count_nuclei(slide, tissue, vectors, tiles[:int(cfg["nuclei_tiles"])])
            base_uid = slide.dicom.sop_instance_uids[0] if slide.dicom else None
            series_uid = slide.dicom.series_instance_uid if slide.dicom else None
            width, height = slide.dimensions
            mpp = slide.mpp
            levels = len(slide.levels)
        where = Where(instance_uid=base_uid, series_uid=series_uid)
        measurements: list[Measurement] = []
        facts: list[dict[str, Any]] = []

        def measure(name: str, value: float | None, unit: str) -> str | None:
            if value is None:
                return None
            m = Measurement(name, float(value), unit, where=where)
            measurements.append(m)
            return m.id

        flagged = [q for q in quality if q["flags"]]
        flags: dict[str, int] = {}
        for q in flagged:
            for f in q["flags"]:
                flags[f] = flags.get(f, 0) + 1
        area = measure("tissue_area", tissue.area_mm2, "mm2")
        fraction = measure("tissue_fraction", 100.0 * tissue.fraction, "%")
        analysed = measure("tiles_analysed", len(tiles), "{tiles}")
        failed = measure("tiles_flagged", len(flagged), "{tiles}")
        count = measure("nuclei_count", nuclei["count"], "{nuclei}")
        density = measure("nuclei_density", nuclei["density_per_mm2"], "/mm2")
        measure("nuclei_mean_area", nuclei["mean_area_um2"], "um2")
        resolution = (f" at {mpp[0]:.3g} µm per pixel" if mpp else
                      " without a stated pixel size (areas cannot be given)")
        facts.append({"text": f"Whole-slide image of {width} x {height} pixels{resolution}, "
                              f"{levels} pyramid level{'s' if levels != 1 else ''}.",
                      "acquisition": {"slide_width": width, "slide_height": height,
                                      "mpp": list(mpp) if mpp else None, "levels": levels}})
        method = {"otsu-saturation": "Otsu threshold on saturation"}.get(tissue.method,
                                                                         tissue.method)
        facts.append({"text": f"Tissue detected at low magnification ({method}): "
                              f"{tissue.fraction:.0%} of the slide.",
                      "measurements": [i for i in (area, fraction) if i]})
        described = ", ".join(f"{n} {k}" for k, n in sorted(flags.items())) or "none"
        facts.append({"text": f"{len(tiles)} tissue tiles of {cfg['tile_size']} px at "
                              f"{cfg['tile_mpp']} µm per pixel checked for stain and focus "
                              f"quality; flagged: {described}.",
                      "measurements": [i for i in (analysed, failed) if i]})
        if count is not None and tiles:
            facts.append({"text": f"Nuclei counted by threshold and watershed on the "
                                  f"haematoxylin channel over {nuclei['tiles_used']} tiles.",
                          "measurements": [i for i in (count, density) if i]})
        warnings = list(tissue.notes) + list(vectors.notes) + list(nuclei["notes"])
        if tiles and len(flagged) > 0.2 * len(tiles):
            warnings.append(f"{len(flagged)} of {len(tiles)} tissue tiles fail the stain or focus "
                            "checks: the measurements over them may not hold")
        raw: dict[str, Any] = {
            "slide": {"width": width, "height": height, "mpp": list(mpp) if mpp else None,
                      "levels": levels, "base_instance_uid": base_uid},
            "tissue": {"area_mm2": tissue.area_mm2, "fraction": tissue.fraction,
                       "threshold": tissue.threshold, "method": tissue.method},
            "stain_vectors": {"h": [float(v) for v in vectors.h],
                              "e": [float(v) for v in vectors.e], "method": vectors.method},
            "tiles": [{"base_box": list(t.base_box), "flags": list(q["flags"]),
                       "h_mean": q["h_mean"], "e_mean": q["e_mean"],
                       "laplacian_var": q["laplacian_var"]} for t, q in zip(tiles, quality,
                                                                             strict=True)],
            "quality_reference": None if reference is None else {
                k: getattr(reference, k) for k in ("laplacian_var", "h_mean", "e_mean")},
            "nuclei": {k: v for k, v in nuclei.items() if k not in ("points", "areas_um2")},
            "facts": facts,
        }
        if nuclei["points"] and base_uid and study.output_dir is not None:
            out = Path(study.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            file = out / f"nuclei-{base_uid[-16:]}.npz"
            np.savez_compressed(file, points=np.asarray(nuclei["points"], dtype=np.float64),
                                areas_um2=np.asarray(nuclei["areas_um2"], dtype=np.float64))
            raw["annotations"] = [{"file": str(file), "instance_uid": base_uid,
                                   "label": "Nuclei", "kind": "points",
                                   "measurement": "area", "unit": "um2"}]
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version), trained=True,
                            measurements=measurements, warnings=warnings, raw=raw)
