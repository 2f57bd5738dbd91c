"""The header facts kept per instance for routing, engines and descriptions, read without pixel
data. No patient names or identifiers are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Header keywords kept per instance: enough to route, to describe, and for engines that need
# acquisition context. No patient names or identifiers.
HEADER_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "BodyPartExamined", "StudyDescription", "SeriesDescription", "SeriesNumber", "InstanceNumber",
    "ViewPosition", "ImageType", "Manufacturer", "PatientAge", "PatientSex", "StudyDate",
    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "ImagePositionPatient", "ImageOrientationPatient", "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
)


def _plain(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def read_header(path: Path) -> dict[str, Any]:
    """Routing metadata of one DICOM file (DICOM keywords as keys); raises ValueError if the
    file is not readable DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read ({exc})") from exc
    except Exception as exc:  # pydicom raises assorted errors on corrupt headers
        raise ValueError(f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc
    if "SOPClassUID" not in ds and "Modality" not in ds:
        raise ValueError("DICOM file without SOPClassUID or Modality (not an instance)")
    meta: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        value = ds.get(keyword)
        if value is not None and value != "":
            meta[keyword] = _plain(value)
    codes = ds.get("ViewCodeSequence") or []
    if codes:
        meta["ViewCodeSequence"] = [{k: str(item.get(k) or "") for k in
                                     ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")}
                                    for item in codes]
    return meta
