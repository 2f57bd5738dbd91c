"""A real DICOM VL Whole Slide Microscopy slide for tests: a region of the Aperio SVS
(CMU-1-Small-Region, H&E, 0.499 µm/px) written as TILED_FULL instances with native RGB frames.

The header comes from highdicom's ``sm_image.dcm`` (itself made from CMU-1: same acquisition
date and time, and its Total Pixel Matrix Origin is the SVS's ``Top``/``Left``): patient,
study, equipment, specimen, optical path (with its ICC profile) and container modules are
copied, then the identity (UIDs, patient, specimen identifiers), geometry and pixels are
replaced. One file per pyramid level; level n is level 0 downsampled 2**n times (2x2 means).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import shared_file

__all__ = ["DEFAULT_BOX", "SVS", "TEMPLATE", "WSM_SOP_CLASS", "make_wsm"]

SVS = "pathology/CMU-1-Small-Region.svs"
TEMPLATE = "pathology/sm_image.dcm"
WSM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
# 1024x1024 base pixels below the centre of the 2220x2967 slide, on the epidermis and dermis
# of the skin section: 79 % of its pixels are stained (HSV saturation > 0.05), against 68 % for
# the box exactly at the centre and 36 % for the whole slide; no tile of 256 is blank glass.
DEFAULT_BOX = (768, 1280, 1024, 1024)
TEMPLATE_SPECIMEN_PREFIX = "S19-1"  # the template's specimen / container identifiers
WHITE = 255


def make_wsm(svs: Path, out: Path, *, box: tuple[int, int, int, int] = DEFAULT_BOX,
             tile: int = 256, patient_id: str = "SLIDE-1", study_uid: str | None = None,
             series_uid: str | None = None, levels: int = 1, study_date: str | None = None,
             patient_name: str = "Test^Slide") -> list[Path]:
    """Write ``box`` = (x, y, w, h) of ``svs`` (base-level pixels) as a DICOM WSM series in the
    folder ``out`` (created), ``level-<n>.dcm`` per level, base level first; return the paths.

    Every level: TILED_FULL frames of ``tile`` x ``tile`` (edge tiles padded with white),
    native Explicit VR Little Endian RGB, Pixel Spacing = SVS mpp x 2**n. The series, frame of
    reference and specimen UIDs are shared by the levels; a new study UID unless given;
    ``study_date`` (YYYYMMDD) defaults to today.
    """
    from models.pathology.slide import open_slide

    x, y, w, h = (int(v) for v in box)
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    if not 1 <= tile <= 65535:
        raise ValueError(f"tile must be 1..65535 pixels, got {tile}")
    with open_slide(svs) as slide:
        sw, sh = slide.dimensions
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > sw or y + h > sh:
            raise ValueError(f"box {box} is not inside the {sw}x{sh} slide")
        if slide.mpp is None:
            raise ValueError(f"{svs.name} has no microns-per-pixel calibration")
        mpp_x, mpp_y = slide.mpp
        pixels = slide.read_region(0, x, y, w, h)
    lossy = _lossy(svs)

    template = pydicom.dcmread(shared_file(TEMPLATE))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    # derived from the series, so levels written by separate calls still share them
    for_uid = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    dim_uid = generate_uid(entropy_srcs=[series_uid, "dimension-organization"])
    specimen_uid = generate_uid(entropy_srcs=[series_uid, "specimen"])
    now = dt.datetime.now()
    study_date = study_date or now.strftime("%Y%m%d")
    origin = template.TotalPixelMatrixOriginSequence[0]
    slide_x0, slide_y0 = float(origin.XOffsetInSlideCoordinateSystem), float(
        origin.YOffsetInSlideCoordinateSystem)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    img = pixels
    for n in range(levels):
        if n:
            img = _halve(img)
        factor = 2 ** n
        ds = copy.deepcopy(template)
        _identity(ds, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid,
                  series_uid=series_uid, for_uid=for_uid, dim_uid=dim_uid,
                  specimen_uid=specimen_uid, study_date=study_date, now=now)
        ds.InstanceNumber = n + 1
        image_type = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if n == 0
                      else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        ds.ImageType = image_type
        # level spacing in mm: (row spacing, column spacing) = (y, x)
        row_mm, col_mm = mpp_y * factor / 1000.0, mpp_x * factor / 1000.0
        shared = ds.SharedFunctionalGroupsSequence[0]
        pm = shared.PixelMeasuresSequence[0]
        pm.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
        pm.SliceThickness = template.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[
            0].SliceThickness
        shared.WholeSlideMicroscopyImageFrameTypeSequence[0].FrameType = image_type
        lh, lw = img.shape[:2]
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = lw, lh
        ds.ImagedVolumeWidth = lw * col_mm
        ds.ImagedVolumeHeight = lh * row_mm
        # Image Orientation (Slide) [0,-1,0,-1,0,0] (the template's): along a row the slide Y
        # falls, down a column the slide X falls; the box's corner moves the origin so.
        org = ds.TotalPixelMatrixOriginSequence[0]
        org.XOffsetInSlideCoordinateSystem = _ds(slide_x0 - y * mpp_y / 1000.0)
        org.YOffsetInSlideCoordinateSystem = _ds(slide_y0 - x * mpp_x / 1000.0)
        frames = _tiles(img, tile)
        ds.Rows = ds.Columns = tile
        ds.NumberOfFrames = len(frames)
        if n:
            ds.DerivationDescription = f"Level 0 downsampled {factor}x by repeated 2x2 means"
        if lossy is not None:  # the SVS tiles are JPEG (or JPEG 2000): say so
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = lossy[0]
            ds.LossyImageCompressionRatio = _ds(lossy[1])
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"level-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _identity(ds: Dataset, *, patient_id: str, patient_name: str, study_uid: str,
              series_uid: str, for_uid: str, dim_uid: str, specimen_uid: str,
              study_date: str, now: dt.datetime) -> None:
    ds.SOPClassUID = WSM_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.StudyDate, ds.StudyTime = study_date, "090000"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDescription = "H&E whole slide (CMU-1 region)"
    ds.StudyDescription = "Pathology slide"
    ds.Modality = "SM"
    for item in ds.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dim_uid
    for item in ds.DimensionIndexSequence:
        item.DimensionOrganizationUID = dim_uid
    ds.SpecimenDescriptionSequence[0].SpecimenUID = specimen_uid
    # the specimen / container identifiers S19-1, S19-1_A, ... become <patient_id>...
    _rename_specimen(ds, patient_id)
    ds.AccessionNumber = ds.StudyID = ds.ContainerIdentifier[:16]


def _rename_specimen(ds: Dataset, prefix: str) -> None:
    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
            elif elem.keyword in ("ContainerIdentifier", "SpecimenIdentifier", "TextValue",
                                  "AccessionNumber", "StudyID"):
                val = str(elem.value)
                if val == TEMPLATE_SPECIMEN_PREFIX or val.startswith(
                        TEMPLATE_SPECIMEN_PREFIX + "_"):
                    elem.value = prefix + val[len(TEMPLATE_SPECIMEN_PREFIX):]

    visit(ds)


def _halve(img: np.ndarray) -> np.ndarray:
    """2x downsample by 2x2 means (rounded); an odd last row / column is repeated first."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    blocks = img.reshape(h // 2, 2, w // 2, 2, 3).astype(np.uint16).sum((1, 3))
    return ((blocks + 2) // 4).astype(np.uint8)


def _tiles(img: np.ndarray, tile: int) -> np.ndarray:
    """(frames, tile, tile, 3) in TILED_FULL order (row by row, columns fastest)."""
    h, w = img.shape[:2]
    ny, nx = math.ceil(h / tile), math.ceil(w / tile)
    full = np.full((ny * tile, nx * tile, 3), WHITE, np.uint8)
    full[:h, :w] = img
    return full.reshape(ny, tile, nx, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)


# TIFF Compression of the SVS base level -> DICOM Lossy Image Compression Method
LOSSY_METHODS = {6: "ISO_10918_1", 7: "ISO_10918_1", 33003: "ISO_15444_1", 33005: "ISO_15444_1"}


def _lossy(svs: Path) -> tuple[str, float] | None:
    """(method, uncompressed / compressed size) of the SVS base level when it is lossy."""
    import tifffile

    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        method = LOSSY_METHODS.get(int(page.compression))
        if method is None:
            return None
        raw = page.shape[0] * page.shape[1] * (page.samplesperpixel or 3)
        return method, raw / max(1, sum(page.databytecounts))


def _ds(value: float) -> str:
    """A DS value (16 characters at most)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.9e}"
