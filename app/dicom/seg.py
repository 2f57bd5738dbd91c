"""Masks -> DICOM Segmentation (SEG) instances that reference their source image.

A mask is a uint8 label image (rows x columns, values 0 and 1) on one instance, or one frame of a
multi-frame instance: the answer to an interactive "ask", or an engine's ``mask`` region
(``models.base.Region``, files read by ``models.masks.read_mask``). ``build_segmentation`` turns
one or more such masks of the same image into one BINARY Segmentation instance (SOP class
1.2.840.10008.5.1.4.1.1.66.4) with highdicom, one segment per mask, in list order (segment
numbers 1, 2, ...). Segments may overlap (BINARY allows it).

Choices, as PS3.3 C.8.20 and PS3.16 leave them to the writer:

- **Segmented Property Category** (CID 7150): SCT 49755003 "Morphologically Abnormal Structure"
  unless the mask names another (``SegmentMask.category``): MedGate's masks mostly outline
  findings; an anatomical mask should pass ``ANATOMICAL_STRUCTURE`` (SCT 91723000).
- **Segmented Property Type**: the mask's ``code`` (a ``models.base.Code``: SCT, RadLex, ...);
  without one, a code of MedGate's private scheme ``99MEDGATE`` (PS3.16 8.2) whose value is the
  label as a slug ("left-lung") and whose meaning is the label. A private scheme is declared in
  the Coding Scheme Identification Sequence. dciodvfy warns "Unrecognized defined term
  <99MEDGATE>" for such a code (it knows only the standard designators); that is not an error.
- **Algorithm Identification**: name = engine family, version = engine version, family = DCM
  123110 "Artificial Intelligence" (CID 7162); algorithm type AUTOMATIC (SEMIAUTOMATIC may be
  asked for, e.g. an interactive "ask" a person steered).
- Segment Label = the label, cut to 64 characters (LO).
- **Empty masks** are refused (``SegError``): a SEG segment with no pixels carries no frame, and
  "nothing found" is a finding's state, not a segmentation.
- **Multi-frame sources**: ``frame`` (1-based, PS3.3 C.7.6.6) names the frame the mask lies on.
  highdicom needs one mask plane per source frame, matched by position; the other planes are
  zero and, as empty frames, are left out of the SEG, whose one frame references the source frame
  ``frame`` (Derivation Image Sequence, Referenced Frame Number). This needs a Frame of Reference
  (Enhanced CT/MR, legacy-converted images, whole-slide tiles): highdicom 0.28 refuses a
  multi-frame source without one (cine ultrasound, XA, multi-frame secondary capture), and so does
  this module, with a ``SegError`` that says so.
- Sources without a Frame of Reference (CR, DX projection radiographs, secondary capture) are
  single frames: the SEG's pixels correspond one to one, its frames are indexed by segment number
  only, and Patient Orientation (General Image, type 2C: required when no Image Orientation
  (Patient) is) is copied from the source, empty where the source has none. Their Pixel
  Spacing is not repeated in a Pixel Measures group: highdicom would write one without Slice
  Thickness, which its own reader refuses (``Segmentation.from_dataset``) and which dciodvfy
  calls an error when the source has a Frame of Reference; the spacing stays the source's.
- Memory: a multi-frame source costs one zero plane per source frame while the SEG is built
  (frames x rows x columns x segments bytes).

Patient, study and specimen attributes are copied from the source by highdicom; the SEG gets a new
Series Instance UID and SOP Instance UID. Storing goes through ``app.dicom.store`` like every other
instance (``store_segmentation``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from models.base import Code

if TYPE_CHECKING:
    from app.dicom.store import Stored

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("SCT", "49755003", "Morphologically Abnormal Structure")
ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
PRIVATE_SCHEME = "99MEDGATE"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Patient and study attributes highdicom reads from the source as attributes; type 2 in their
# modules, so an absent one is written empty rather than failing.
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_LO_UNSAFE = re.compile(r"[\\\x00-\x1f]")
_CS_UNSAFE = re.compile(r"[^A-Z0-9_ ]")


class SegError(ValueError):
    """The masks or their source cannot make a valid Segmentation; the message says why."""


@dataclass(frozen=True)
class SegmentMask:
    """One segment: its label, its mask (rows x columns, 0/1), and optionally the coded
    concept it shows (Segmented Property Type) and its category (default: morphologically
    abnormal structure)."""

    label: str
    mask: np.ndarray
    code: Code | None = None
    category: Code | None = None


def medgate_version() -> str:
    """The installed MedGate package's version (the SEG's Software Versions)."""
    try:
        return importlib.metadata.version("medgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _lo(text: str) -> str:
    """A Long String value: no backslash or control characters, at most 64 characters, and at
    most 64 bytes in UTF-8 (dciodvfy counts bytes), cut on a character boundary."""
    value = _LO_UNSAFE.sub(" ", str(text)).strip()[:64]
    return value.encode("utf-8")[:64].decode("utf-8", "ignore").rstrip()


def _private_code(label: str, prefix: str = "seg") -> Code:
    """A code of MedGate's private scheme for a label: its slug ("left-lung"); a label with no
    ASCII letters or digits ("结节") gets ``prefix`` and a hash of it instead."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    if not slug:
        slug = f"{prefix}-" + hashlib.sha256(label.encode("utf-8")).hexdigest()[:8]
    return Code(PRIVATE_SCHEME, slug[:64], label)


def _private_scheme():
    """The Coding Scheme Identification item that declares ``99MEDGATE`` (PS3.16 8.2)."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        PRIVATE_SCHEME, name="MedGate private codes", responsible_organization="MedGate")


def _charset(texts) -> str | None:
    """UTF-8 (ISO_IR 192) when any of the texts written is not ASCII; otherwise None (the
    default repertoire, or the source's character set as highdicom copies it)."""
    return "ISO_IR 192" if any(not str(t).isascii() for t in texts) else None


def _content_label(family: str, fallback: str) -> str:
    """A Content Label (CS, 16 characters) from the engine family ("MEDSAM")."""
    return _CS_UNSAFE.sub("_", str(family).upper())[:16].strip("_ ") or fallback


def _algorithm(family: str, version: str):
    """Algorithm Identification: name = engine family, version = engine version, family = DCM
    123110 "Artificial Intelligence" (CID 7162)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=_lo(family), version=_lo(version), family=codes.cid7162.ArtificialIntelligence)


def _concept(code: Code):
    import highdicom as hd

    # highdicom writes a value over 16 characters as Long Code Value (UC)
    return hd.sr.CodedConcept(code.value, code.scheme, _lo(code.meaning))


def _has_pixels(ds: Dataset) -> bool:
    return any(kw in ds and ds[kw].value is not None and len(ds[kw].value) > 0
               for kw in _PIXEL_KEYWORDS)


def _header(source: Dataset) -> Dataset:
    """The source's attributes without its pixels (highdicom needs only the metadata), with
    what highdicom cannot take from a real file mended: an empty Specific Character Set (the
    default repertoire) is dropped, absent type 2 patient/study attributes are written empty."""
    head = Dataset()
    for elem in source:
        if elem.keyword not in _PIXEL_KEYWORDS:
            head.add(elem)
    if "SpecificCharacterSet" in head and not head.SpecificCharacterSet:
        del head.SpecificCharacterSet
    for kw in _TYPE2_COPIED:
        if kw not in head:
            setattr(head, kw, "")
    if getattr(source, "file_meta", None) is not None:
        head.file_meta = source.file_meta
    return head


def _binary(mask: np.ndarray, label: str, rows: int, cols: int) -> np.ndarray:
    a = np.asarray(mask)
    if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
        raise SegError(f"mask {label!r} must be a uint8 (or bool) 0/1 image, not {a.dtype}")
    if a.shape != (rows, cols):
        raise SegError(f"mask {label!r} is {'x'.join(map(str, a.shape))} but the source image is "
                       f"{rows}x{cols} (rows x columns)")
    values = np.unique(a)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(str(v) for v in values[:8].tolist())
        raise SegError(f"mask {label!r} is not binary: it holds {shown}"
                       f"{', ...' if values.size > 8 else ''} (only 0 and 1 allowed); write one "
                       "mask per label")
    if not values.size or values.max() == 0:
        raise SegError(f"mask {label!r} is empty: no pixel is set")
    return a.astype(np.uint8)


def _frames(source: Dataset) -> int:
    try:
        return max(1, int(source.get("NumberOfFrames") or 1))
    except (TypeError, ValueError) as exc:
        raise SegError(f"the source's Number of Frames {source.NumberOfFrames!r} is not a "
                       "number") from exc


def build_segmentation(source: Dataset, masks: Sequence[SegmentMask], *, family: str,
                       version: str, series_number: int = 9000, instance_number: int = 1,
                       series_description: str = "", manufacturer: str = "MedGate",
                       software_version: str | None = None, frame: int | None = None,
                       algorithm_type: str = "AUTOMATIC") -> pydicom.Dataset:
    """A BINARY Segmentation of ``source`` with one segment per mask.

    ``source`` is the full image instance (with its pixel data: a header alone is refused, since
    only an image can be segmented); ``frame`` (1-based) names the frame of a multi-frame source
    the masks lie on. ``family`` and ``version`` identify the engine (Algorithm Identification);
    ``software_version`` defaults to the MedGate package's version. Raises ``SegError``."""
    import highdicom as hd

    if not isinstance(source, Dataset):
        raise SegError(f"the source must be a pydicom Dataset, not {type(source).__name__}")
    if not masks:
        raise SegError("a segmentation needs at least one mask")
    if not str(family).strip() or not str(version).strip():
        raise SegError("a segmentation needs the algorithm's family and version")
    if algorithm_type not in ALGORITHM_TYPES:
        raise SegError(f"algorithm type must be one of {ALGORITHM_TYPES}, not {algorithm_type!r}")
    if not _has_pixels(source):
        raise SegError("the source has no pixel data: only an image can be segmented (read it "
                       "whole, not with stop_before_pixels)")
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(source.get(kw) or "").strip():
            raise SegError(f"the source has no {kw}")
    try:
        rows, cols = int(source.Rows), int(source.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SegError("the source has no usable Rows and Columns") from exc

    planes = [_binary(m.mask, m.label, rows, cols) for m in masks]
    n_frames = _frames(source)
    has_for = bool(source.get("FrameOfReferenceUID"))
    if n_frames == 1:
        if frame not in (None, 1):
            raise SegError(f"frame {frame} asked of a single-frame source")
        pixels = np.stack(planes, axis=-1)[np.newaxis]  # (1, rows, cols, segments)
    else:
        if frame is None:
            raise SegError(f"the source has {n_frames} frames: say which one the mask lies on")
        if not 1 <= int(frame) <= n_frames:
            raise SegError(f"frame {frame} is outside the source's frames 1..{n_frames}")
        if not has_for:
            kind = getattr(source.SOPClassUID, "name", source.SOPClassUID)
            raise SegError(f"a multi-frame source without a Frame of Reference ({kind}) "
                           "cannot be segmented: highdicom matches SEG frames to source "
                           "frames by position and supports only one frame without one")
        pixels = np.zeros((n_frames, rows, cols, len(planes)), dtype=np.uint8)
        pixels[int(frame) - 1] = np.stack(planes, axis=-1)

    texts = [m.label for m in masks] + [family, version, series_description]
    texts += [c.meaning for m in masks for c in (m.code, m.category) if c is not None]
    charset = _charset(texts)

    algorithm = _algorithm(family, version)
    descriptions, private = [], False
    for number, m in enumerate(masks, start=1):
        label = _lo(m.label)
        if not label:
            raise SegError(f"segment {number} needs a label")
        kind = m.code if m.code is not None else _private_code(label)
        category = m.category if m.category is not None else MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        private |= PRIVATE_SCHEME in (kind.scheme, category.scheme)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=_concept(category),
            segmented_property_type=_concept(kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues(algorithm_type),
            algorithm_identification=algorithm))
    extra = {}
    if private:
        extra["coding_schemes"] = [_private_scheme()]
    if charset:
        extra["specific_character_set"] = charset
    content_label = _content_label(family, "SEGMENTATION")
    try:
        seg = hd.seg.Segmentation(
            source_images=[_header(source)],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            **_instance_attributes(family, version, series_number, instance_number,
                                   manufacturer, software_version,
                                   series_description or f"{family} {version} segmentation"),
            content_label=content_label,
            omit_empty_frames=True,
            **extra,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SegError(f"highdicom could not build the segmentation: {exc}") from exc
    shared = seg.SharedFunctionalGroupsSequence[0]
    oriented = "PlaneOrientationSequence" in shared and \
        "ImageOrientationPatient" in shared.PlaneOrientationSequence[0]
    if not oriented and "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    measures = shared.get("PixelMeasuresSequence")
    if not oriented and measures and "SliceThickness" not in measures[0]:
        # An image without plane orientation and slice thickness (DX, CR, secondary capture):
        # highdicom copies its Pixel Spacing into a Pixel Measures group without Slice
        # Thickness, which its own reader refuses and which dciodvfy calls an error where the
        # source has a Frame of Reference (PS3.3 C.7.6.16.2.1, 1C). The group is left out: the
        # SEG's pixels are the source's, one to one (Spatial Locations Preserved YES).
        del shared.PixelMeasuresSequence
    return seg


def _instance_attributes(family: str, version: str, series_number: int, instance_number: int,
                         manufacturer: str, software_version: str | None,
                         series_description: str) -> dict[str, Any]:
    """The new series and instance, and who made them: shared by every object MedGate writes
    with highdicom (SEG, bulk annotations)."""
    import highdicom as hd

    return {"series_instance_uid": hd.UID(), "series_number": int(series_number),
            "sop_instance_uid": hd.UID(), "instance_number": int(instance_number),
            "manufacturer": _lo(manufacturer), "manufacturer_model_name": "MedGate",
            "software_versions": _lo(software_version or medgate_version()),
            "device_serial_number": "0", "series_description": _lo(series_description),
            "content_description": _lo(f"{family} {version}")}


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 bytes of a dataset (preamble, file meta, data set)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def store_segmentation(session_factory, ds: Dataset, source: str | None = None) -> Stored:
    """Store a SEG as MedGate's own derived result (``app.dicom.store.store_dataset``); raises
    ``store.StoreError`` as C-STORE and STOW-RS would see it."""
    from app.dicom import store

    return store.store_dataset(session_factory, ds, source or store.DERIVED)
