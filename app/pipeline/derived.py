"""MedGate's own results stored back into the study as DICOM: each mask region of a result
becomes a binary Segmentation instance (PS3.3 A.51) that references its source image, and each
point set a result names in ``raw["annotations"]`` (nuclei on a slide) a Microscopy Bulk Simple
Annotations instance (its PS3.3 IOD) that references the slide. Both are stored through the one
store path (validated, durable, indexed) in a series marked derived, so QIDO-RS lists them and
WADO-RS returns them while routing and the engines never take them for input.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom

from app.dicom.annotations import (
    SQUARE_MICROMETER,
    AnnotationError,
    AnnotationGroup,
    build_bulk_annotations,
    store_bulk_annotations,
)
from app.dicom.seg import SegError, SegmentMask, build_segmentation, store_segmentation
from app.dicom.store import StoreError
from models.base import EngineResult, Region, StudyInput
from models.masks import read_mask

log = logging.getLogger("medgate.derived")

REFERENCE_NOTE = "reference model, not for clinical use"


def _segments(region: Region) -> list[SegmentMask]:
    """One segment per label value of the mask (a 0/1 mask is one segment)."""
    labels = read_mask(region.mask_path)
    values = [int(v) for v in np.unique(labels) if v]
    name = region.label or region.id
    if values == [1]:
        return [SegmentMask(label=name, mask=labels, code=region.code)]
    return [SegmentMask(label=region.labels.get(v, f"{name} {v}"),
                        mask=(labels == v).astype(np.uint8)) for v in values]


def _seg_of(study: StudyInput, result: EngineResult, region: Region) -> pydicom.Dataset:
    source = study.instance_path(region.instance_uid)
    if source is None:
        raise SegError(f"region {region.id} names instance {region.instance_uid}, which is "
                       "not in the job's input")
    family, version = result.model.family, result.model.version
    description = f"{family} {version} mask" + ("" if result.trained else
                                                 f" ({REFERENCE_NOTE})")
    # an ask's mask answers a person's prompt: semi-automatic (PS3.3 C.8.20.2)
    kind = "SEMIAUTOMATIC" if study.prompt is not None else "AUTOMATIC"
    return build_segmentation(pydicom.dcmread(source), _segments(region), family=family,
                              version=version, frame=region.frame,
                              series_description=description[:64], algorithm_type=kind)


def store_masks(factory, study: StudyInput, results: list[EngineResult]  # noqa: ANN001
                ) -> dict[str, dict[str, str]]:
    """Store every 2-D mask region of ``results`` as a SEG; the SOP Instance and Series UIDs
    of each stored one by region id. A mask that cannot be written is a warning on its result,
    never a failed job: the answer and the mask file stand without it."""
    stored: dict[str, dict[str, str]] = {}
    for result in results:
        for region in result.regions:
            if region.kind != "mask" or not region.mask_path:
                continue
            try:
                done = store_segmentation(factory, _seg_of(study, result, region))
            except (SegError, StoreError, ValueError, OSError) as exc:
                log.warning("mask %s of %s was not stored as a SEG: %s", region.id,
                            result.model.family, exc)
                result.warnings.append(f"mask {region.id} was not stored as DICOM SEG: {exc}")
                continue
            stored[region.id] = {"sop_instance_uid": done.sop_instance_uid,
                                 "series_uid": done.series_uid}
    return stored


def _annotations_of(study: StudyInput, result: EngineResult, item: dict) -> pydicom.Dataset:
    source = study.instance_path(item.get("instance_uid"))
    if source is None:
        raise AnnotationError(f"annotations name instance {item.get('instance_uid')}, which is "
                              "not in the job's input")
    with np.load(item["file"]) as data:
        points = np.asarray(data["points"], dtype=np.float64)
        areas = np.asarray(data["areas_um2"], dtype=np.float64) if "areas_um2" in data else None
    group = AnnotationGroup(label=str(item.get("label") or "Nuclei"), points=points,
                            measurements={"area": (areas, SQUARE_MICROMETER)}
                            if areas is not None else {})
    family, version = result.model.family, result.model.version
    return build_bulk_annotations(pydicom.dcmread(source, stop_before_pixels=True), [group],
                                  family=family, version=version,
                                  series_description=f"{family} {version} "
                                                     f"{group.label.lower()}"[:64])


def store_annotations(factory, study: StudyInput, results: list[EngineResult]  # noqa: ANN001
                      ) -> list[dict[str, str]]:
    """Store each point set of ``results`` (``raw["annotations"]``) as bulk annotations of its
    slide; a set that cannot be written is a warning on its result."""
    stored = []
    for result in results:
        for item in (result.raw.get("annotations") or []) if isinstance(result.raw, dict) else []:
            try:
                done = store_bulk_annotations(factory, _annotations_of(study, result, item))
            except (AnnotationError, StoreError, ValueError, OSError, KeyError) as exc:
                log.warning("annotations of %s were not stored: %s", result.model.family, exc)
                result.warnings.append(f"{item.get('label', 'annotations')} were not stored "
                                       f"as DICOM bulk annotations: {exc}")
                continue
            item["stored"] = {"sop_instance_uid": done.sop_instance_uid,
                              "series_uid": done.series_uid}
            stored.append(item["stored"])
    return stored
