"""Points and polygons on a slide -> DICOM Microscopy Bulk Simple Annotations (ANN).

An engine that finds nuclei (or cells, mitoses, glands, ...) on a whole-slide image answers with
many small results of one kind: a centre point or an outline per object, often with a measured
value each (area). ``build_bulk_annotations`` writes them, one ``AnnotationGroup`` per kind, as
one Microscopy Bulk Simple Annotations instance (SOP class 1.2.840.10008.5.1.4.1.1.91.1, modality
ANN; the PS3.3 Microscopy Bulk Simple Annotations IOD) with highdicom, which keeps each group's
coordinates and values as flat binary arrays rather than one SR content item per object.

Choices, as the Microscopy Bulk Simple Annotations Module (PS3.3) and PS3.16 leave them to the
writer:

- **Source**: one VL Whole Slide Microscopy image instance (1.2.840.10008.5.1.4.1.1.77.1.6),
  the pyramid level the coordinates were measured on; MedGate's engines work on the base level
  (the highest resolution). Only its header is read (``stop_before_pixels`` is enough). Any other
  SOP class (CT, CR, ...) is refused: this IOD annotates a slide's total pixel matrix; a
  radiograph's or a CT slice's regions are a SEG (``app.dicom.seg``).
- **Coordinates**: Annotation Coordinate Type ``2D``, Pixel Origin Interpretation ``VOLUME``:
  each (x, y) is a (column, row) position in the source's Total Pixel Matrix, in pixels, as the
  engine gives it, not in a frame (tile) and not in slide millimetres. A coordinate outside
  0 <= x <= Total Pixel Matrix Columns, 0 <= y <= Total Pixel Matrix Rows is refused, as are NaN
  and infinite ones. They are stored as 32-bit floats (Point Coordinates Data, OF): a
  200 000-pixel-wide slide keeps about 1/60 pixel, at half the size of doubles.
- **Graphic Type**: ``POINT`` for ``points`` ((N, 2): one annotation per row), ``POLYGON`` for
  ``polygons`` (one (K, 2) outline each, K >= 3). The standard's polygon is implicitly closed:
  a ring given closed (last vertex repeated, as GeoJSON and shapely write it) loses the repeat.
- **Annotated Property Type** (CID 8135 "Microscopy Annotation Property Types"): default SCT
  84640000 "Nucleus". **Annotated Property Category** (CID 7150): default SCT 91723000
  "Anatomical Structure" (a nucleus is a cell structure, as in highdicom's own nuclei example);
  a finding (tumour cells, mitoses) should pass ``MORPHOLOGICALLY_ABNORMAL_STRUCTURE``.
- **Measurements**: per annotation, in annotation order; a name is a ``Code`` or one of
  ``MEASUREMENT_NAMES`` ("area" = SCT 42798000 "Area", "perimeter", "diameter", "length"), any
  other name a code of MedGate's private scheme ``99MEDGATE``; the unit must be a UCUM code
  (CID 7181: ``SQUARE_MICROMETER``, ``MICROMETER``, ...). Values are 32-bit floats; NaN means
  "not measured for this annotation" (written sparse, with an Annotation Index List); infinite
  values and a measurement with no value at all are refused.
- **Algorithm Identification**, private codes, Long String labels, character set: as
  ``app.dicom.seg`` (family = DCM 123110 "Artificial Intelligence"; generation type AUTOMATIC,
  or SEMIAUTOMATIC where a person steered the engine). Group Label = the label, cut to 64
  characters (LO).
- **Validation**: dciodvfy (dicom3tools 1.00~20220618) reports "Only valid for
  AnnotationCoordinateType of 3D - attribute <CommonZCoordinateValue> = <>" for every 2D group,
  highdicom's own minimal 2D instance included: its rule tests the coordinate type but not
  whether the attribute is there, and it is not (PS3.3 C.37.1.2: 1C, for 3D coordinates only).
  It also warns that the specimen attributes highdicom copies from the slide (Specimen
  Description Sequence, Container Identifier, ...) are not in the IOD (a Standard Extended SOP
  Class), and "Unrecognized defined term <99MEDGATE>" where a private code is used.

Patient, study and specimen attributes are copied from the source by highdicom; the instance
gets a new Series Instance UID and SOP Instance UID and references the source (Referenced Image
Sequence, Referenced Series Sequence). Storing goes through ``app.dicom.store`` like every other
instance (``store_bulk_annotations``), as MedGate's derived result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from app.dicom.seg import (
    ALGORITHM_TYPES,
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    PRIVATE_SCHEME,
    _algorithm,
    _charset,
    _concept,
    _content_label,
    _header,
    _instance_attributes,
    _lo,
    _private_code,
    _private_scheme,
)
from models.base import Code

if TYPE_CHECKING:
    from app.dicom.store import Stored

__all__ = [
    "ANATOMICAL_STRUCTURE", "ANN_STORAGE", "AnnotationError", "AnnotationGroup",
    "MEASUREMENT_NAMES", "MICROMETER", "MORPHOLOGICALLY_ABNORMAL_STRUCTURE", "NUCLEUS",
    "SQUARE_MICROMETER", "WSM_IMAGE_STORAGE", "build_bulk_annotations",
    "store_bulk_annotations",
]

ANN_STORAGE = "1.2.840.10008.5.1.4.1.1.91.1"  # Microscopy Bulk Simple Annotations Storage
WSM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
NUCLEUS = Code("SCT", "84640000", "Nucleus")  # CID 8135
SQUARE_MICROMETER = Code("UCUM", "um2", "square micrometer")
MICROMETER = Code("UCUM", "um", "micrometer")
MEASUREMENT_NAMES = {
    "area": Code("SCT", "42798000", "Area"),
    "perimeter": Code("SCT", "131191004", "Perimeter"),
    "diameter": Code("SCT", "81827009", "Diameter"),
    "length": Code("SCT", "410668003", "Length"),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class AnnotationError(ValueError):
    """The annotations or their source cannot make a valid Bulk Annotations instance; the
    message says why."""


@dataclass(frozen=True)
class AnnotationGroup:
    """One kind of result on a slide: ``points`` ((N, 2) x, y) or ``polygons`` (each (K, 2)),
    in pixels of the source's total pixel matrix; what they show (Annotated Property Type and
    Category); and optionally measurements, ``{name: (values, unit)}`` with one value per
    annotation (e.g. ``{"area": (areas, SQUARE_MICROMETER)}``)."""

    label: str
    points: np.ndarray | None = None
    polygons: Sequence[np.ndarray] | None = None
    property_type: Code = NUCLEUS
    property_category: Code = ANATOMICAL_STRUCTURE
    measurements: Mapping[str | Code, tuple[np.ndarray, Code]] | None = None


def _coordinates(a, what: str, cols: int, rows: int) -> np.ndarray:
    try:
        xy = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{what} must be numbers: {exc}") from exc
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise AnnotationError(f"{what} must be an (N, 2) array of (x, y), not shape "
                              f"{'x'.join(map(str, xy.shape))}")
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise AnnotationError(f"{what}: coordinate {int(np.argmax(bad))} is not finite "
                              f"({xy[bad][0].tolist()})")
    out = (xy[:, 0] < 0) | (xy[:, 0] > cols) | (xy[:, 1] < 0) | (xy[:, 1] > rows)
    if out.any():
        i = int(np.argmax(out))
        raise AnnotationError(f"{what}: coordinate {i} ({xy[i, 0]:g}, {xy[i, 1]:g}) is outside "
                              f"the total pixel matrix 0..{cols} x 0..{rows} (x, y)")
    return xy.astype(np.float32)


def _graphic_data(group: AnnotationGroup, label: str, cols: int, rows: int
                  ) -> tuple[str, list[np.ndarray]]:
    if (group.points is None) == (group.polygons is None):
        raise AnnotationError(f"group {label!r} needs either points or polygons (not both)")
    if group.points is not None:
        if not np.size(group.points):
            raise AnnotationError(f"group {label!r} is empty: no point")
        xy = _coordinates(group.points, f"points of {label!r}", cols, rows)
        return "POINT", list(xy[:, np.newaxis, :])
    if isinstance(group.polygons, np.ndarray) and group.polygons.ndim == 2:
        raise AnnotationError(f"polygons of {label!r} must be a list of (K, 2) arrays, one per "
                              "polygon, not one array")
    outlines = []
    for i, polygon in enumerate(group.polygons):
        xy = _coordinates(polygon, f"polygon {i} of {label!r}", cols, rows)
        if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
            xy = xy[:-1]  # a closed ring: the standard's polygon closes itself
        if len(np.unique(xy, axis=0)) < 3:
            raise AnnotationError(f"polygon {i} of {label!r} has fewer than 3 distinct vertices")
        outlines.append(xy)
    if not outlines:
        raise AnnotationError(f"group {label!r} is empty: no polygon")
    return "POLYGON", outlines


def _measurement_name(name: str | Code) -> Code:
    if isinstance(name, Code):
        return name
    text = str(name).strip()
    if not text:
        raise AnnotationError("a measurement needs a name")
    return MEASUREMENT_NAMES.get(text.lower()) or _private_code(text, prefix="measurement")


def _measurements(group: AnnotationGroup, label: str, count: int):
    import highdicom as hd

    out, codes = [], []
    for name, spec in (group.measurements or {}).items():
        code = _measurement_name(name)
        try:
            values, unit = spec
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"measurement {code.meaning!r} of {label!r} must be "
                                  "(values, unit)") from exc
        what = f"measurement {code.meaning!r} of {label!r}"
        if not isinstance(unit, Code) or unit.scheme != "UCUM":
            raise AnnotationError(f"{what} needs a UCUM unit code (CID 7181), not {unit!r}")
        try:
            v = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"{what} must be numbers: {exc}") from exc
        if v.ndim != 1 or len(v) != count:
            raise AnnotationError(f"{what} has {v.size} values for {count} annotations "
                                  "(one value per annotation, in order)")
        if np.isinf(v).any() or (np.abs(v[~np.isnan(v)]) > _FLOAT32_MAX).any():
            raise AnnotationError(f"{what} has an infinite value (NaN marks one not measured)")
        if np.isnan(v).all():
            raise AnnotationError(f"{what} has no value: every one is NaN")
        codes += [code, unit]
        out.append(hd.ann.Measurements(name=_concept(code), values=v.astype(np.float32),
                                       unit=_concept(unit)))
    return out, codes


def build_bulk_annotations(source: Dataset, groups: Sequence[AnnotationGroup], *, family: str,
                           version: str, series_number: int = 9001, instance_number: int = 1,
                           series_description: str = "", manufacturer: str = "MedGate",
                           software_version: str | None = None,
                           algorithm_type: str = "AUTOMATIC") -> pydicom.Dataset:
    """A Microscopy Bulk Simple Annotations instance of ``source`` (a VL Whole Slide Microscopy
    image instance; its header is enough) with one annotation group per ``groups`` item, in list
    order (group numbers 1, 2, ...). ``family`` and ``version`` identify the engine (Algorithm
    Identification); ``software_version`` defaults to the MedGate package's version. Raises
    ``AnnotationError``."""
    import highdicom as hd

    if not isinstance(source, Dataset):
        raise AnnotationError(f"the source must be a pydicom Dataset, not "
                              f"{type(source).__name__}")
    sop_class = str(source.get("SOPClassUID") or "")
    if sop_class != WSM_IMAGE_STORAGE:
        kind = getattr(source.get("SOPClassUID"), "name", "") or sop_class or "no SOP class"
        raise AnnotationError(f"the source is {kind}, not VL Whole Slide Microscopy Image "
                              "Storage: bulk annotations are drawn on a slide's total pixel "
                              "matrix (write a radiological image's regions as a SEG)")
    if not groups:
        raise AnnotationError("bulk annotations need at least one annotation group")
    if not str(family).strip() or not str(version).strip():
        raise AnnotationError("bulk annotations need the algorithm's family and version")
    if algorithm_type not in ALGORITHM_TYPES:
        raise AnnotationError(f"algorithm type must be one of {ALGORITHM_TYPES}, not "
                              f"{algorithm_type!r}")
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(source.get(kw) or "").strip():
            raise AnnotationError(f"the source has no {kw}")
    try:
        cols, rows = int(source.TotalPixelMatrixColumns), int(source.TotalPixelMatrixRows)
    except (AttributeError, TypeError, ValueError) as exc:
        raise AnnotationError("the source has no usable Total Pixel Matrix Columns and "
                              "Rows") from exc
    if cols < 1 or rows < 1:
        raise AnnotationError(f"the source's total pixel matrix is {cols} x {rows}")

    algorithm = _algorithm(family, version)
    written, texts, private = [], [family, version, series_description], False
    for number, group in enumerate(groups, start=1):
        if not isinstance(group, AnnotationGroup):
            raise AnnotationError(f"group {number} is a {type(group).__name__}, not an "
                                  "AnnotationGroup")
        label = _lo(group.label)
        if not label:
            raise AnnotationError(f"annotation group {number} needs a label")
        graphic_type, data = _graphic_data(group, label, cols, rows)
        measurements, codes = _measurements(group, label, len(data))
        codes += [group.property_type, group.property_category]
        texts += [group.label] + [c.meaning for c in codes]
        private |= any(c.scheme == PRIVATE_SCHEME for c in codes)
        try:
            written.append(hd.ann.AnnotationGroup(
                number=number, uid=hd.UID(), label=label,
                annotated_property_category=_concept(group.property_category),
                annotated_property_type=_concept(group.property_type),
                graphic_type=hd.ann.GraphicTypeValues(graphic_type), graphic_data=data,
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues(algorithm_type),
                algorithm_identification=algorithm, measurements=measurements or None))
        except (ValueError, TypeError) as exc:
            raise AnnotationError(f"highdicom refused group {label!r}: {exc}") from exc

    extra = {}
    if private:
        extra["coding_schemes"] = [_private_scheme()]
    charset = _charset(texts)
    if charset:
        extra["specific_character_set"] = charset
    try:
        return hd.ann.MicroscopyBulkSimpleAnnotations(
            source_images=[_header(source)],
            annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
            annotation_groups=written,
            **_instance_attributes(family, version, series_number, instance_number,
                                   manufacturer, software_version,
                                   series_description or f"{family} {version} annotations"),
            content_label=_content_label(family, "ANNOTATIONS"),
            pixel_origin_interpretation=hd.ann.PixelOriginInterpretationValues.VOLUME,
            **extra,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise AnnotationError(f"highdicom could not build the bulk annotations: {exc}") from exc


def store_bulk_annotations(session_factory, ds: Dataset, source: str | None = None) -> Stored:
    """Store a Bulk Annotations instance through the one validation and storage path of every
    channel (``app.dicom.store``), by default as MedGate's own derived result
    (``store.DERIVED``: its series is marked derived); raises ``store.StoreError``."""
    from app.dicom import store

    return store.store_dataset(session_factory, ds, source or store.DERIVED)
