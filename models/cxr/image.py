"""Chest radiograph input: one DICOM CR/DX/Secondary Capture image, or a PNG/JPEG, to display-ready
pixels in [0, 1] (white = dense bone), as small named steps a test can run one by one.

Order (PS3.4 N.2.1.1, the grayscale pipeline): Modality LUT (PS3.3 C.11.1), VOI LUT (C.11.2),
MONOCHROME1 inversion (C.7.6.3.1.2), scaling to [0, 1]. ``STEPS`` names them for the model card;
``Radiograph.steps`` records the ones applied, with the choice made. This module never imports
``app``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut as _pydicom_rescale

from models.base import ContractError, InputError
from models.cxr.views import view_of

STEPS = ("modality_lut", "voi_lut", "invert_monochrome1", "scale_to_unit")
SUPPORTED_SOP_CLASSES = (
    uid.ComputedRadiographyImageStorage, uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing, uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage)
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # pydicom decodes YBR to RGB
# A For Processing image (PS3.3 C.8.11.1, Presentation Intent Type) is meant for further
# processing; without a VOI transform it has no display range, and this window stands in for one.
PROCESSING_PERCENTILES = (0.5, 99.5)


class CxrInputError(InputError):
    """A file that is not one chest radiograph image this family can read."""


@dataclass(frozen=True)
class Radiograph:
    """Display-ready pixels (float32 in [0, 1], (H, W) grey or (H, W, 3) colour) and where they
    came from. ``sop_class`` is the SOP Class UID ("" for PNG/JPEG); ``photometric`` is the
    Photometric Interpretation or, for PNG/JPEG, the Pillow mode, as received. Invalid pixels
    cannot be constructed."""

    pixels: np.ndarray
    source: str
    modality: str = ""
    sop_class: str = ""
    photometric: str = ""
    bits_stored: int | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "none"
    spacing_note: str = ""
    view: str = ""
    view_source: str = "none"
    steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        p = self.pixels
        if not (isinstance(p, np.ndarray) and p.dtype == np.float32
                and (p.ndim == 2 or (p.ndim == 3 and p.shape[2] == 3))):
            raise ContractError("radiograph pixels must be float32 (H, W) or (H, W, 3)")
        if p.size == 0 or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise ContractError("radiograph pixels must be finite and within [0, 1]")
        if self.source not in ("dicom", "png", "jpeg"):
            raise ContractError(f"radiograph source {self.source!r} is not dicom, png or jpeg")
        if self.spacing_source not in ("ImagerPixelSpacing", "PixelSpacing", "none"):
            raise ContractError(f"spacing source {self.spacing_source!r} is not known")

    def to_rgb_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8, for models that take RGB."""
        rgb = self.pixels if self.pixels.ndim == 3 else np.repeat(self.pixels[..., None], 3, 2)
        return np.rint(rgb * 255).astype(np.uint8)


def _sop_class(ds: Dataset) -> uid.UID:
    """SOP Class UID of the dataset, or of its file meta when the dataset lacks one."""
    meta = getattr(ds, "file_meta", Dataset())
    return uid.UID(str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")))


def check_image_object(ds: Dataset) -> None:
    """Refuse what is not one radiograph frame: no Pixel Data, another SOP class, several frames,
    a photometric interpretation or bit depth outside MONOCHROME1/2 or RGB at 8 to 16 bits."""
    sop = _sop_class(ds)
    sop_name = sop.name if sop else "(none)"
    if "PixelData" not in ds:
        raise CxrInputError(f"SOP class {sop_name} has no image (no Pixel Data)")
    if sop not in SUPPORTED_SOP_CLASSES:
        raise CxrInputError(f"SOP class {sop_name} is not a radiograph this family reads "
                            "(CR, DX For Presentation/Processing, Secondary Capture)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise CxrInputError(f"multi-frame object (NumberOfFrames {frames}): "
                            "a chest radiograph is one frame")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GREY + COLOUR:
        raise CxrInputError(f"Photometric Interpretation {photometric or '(none)'} is not "
                            "MONOCHROME1, MONOCHROME2 or RGB")
    bits = int(ds.get("BitsStored") or 0)
    if not 8 <= bits <= 16:
        raise CxrInputError(f"Bits Stored {bits}: a radiograph here has 8 to 16 bits stored")


def _lut(item: Dataset, ds: Dataset) -> tuple[np.ndarray, int]:
    """LUT Data and its first mapped value (PS3.3 C.11.1.1: 0 entries means 65536; the first
    value is signed when the pixels are)."""
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    if ds.get("PixelRepresentation", 0) == 1 and first >= 2**15:
        first -= 2**16
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16 bits a value, in the file's byte order
        order = "<" if ds.original_encoding[1] in (True, None) else ">"
        values = np.frombuffer(data, dtype=f"{order}u2")
    else:
        values = np.atleast_1d(np.asarray(data, dtype=np.float64))
    return values[:entries].astype(np.float64), first


def _look_up(arr: np.ndarray, item: Dataset, ds: Dataset) -> np.ndarray:
    # Values below the first mapped value take the first entry, above the last the last entry.
    # pydicom 3.0's own lookup indexes an 8-bit LUT with a uint8 (it wraps past 256 entries) and
    # refuses a 12-bit Modality LUT (pydicom#2317), so the lookup is done here.
    values, first = _lut(item, ds)
    index = np.clip(np.rint(arr.astype(np.float64)) - first, 0, len(values) - 1)
    return values[index.astype(np.intp)]


def apply_modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to modality values (PS3.3 C.11.1): the Modality LUT Sequence if present, else
    Rescale Slope/Intercept (pydicom's ``apply_modality_lut``), else unchanged. Grey only."""
    if ds.get("PhotometricInterpretation") not in GREY:
        return arr
    if ds.get("ModalityLUTSequence"):
        return _look_up(arr, ds.ModalityLUTSequence[0], ds)
    return np.asarray(_pydicom_rescale(arr, ds), dtype=np.float64)


def voi_kind(ds: Dataset) -> str:
    """"lut" (VOI LUT Sequence, preferred as pydicom does), "window" (Window Center/Width) or ""."""
    if ds.get("PhotometricInterpretation") not in GREY:
        return ""  # C.11.2 applies to grey images
    items = ds.get("VOILUTSequence") or []
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        return "lut"
    return "window" if "WindowCenter" in ds and "WindowWidth" in ds else ""


def _nth(value: object, index: int, what: str) -> float:
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if not 0 <= index < len(values):
        raise CxrInputError(f"{what} {index + 1} requested; the object has {len(values)}")
    return float(values[index])


def apply_voi_lut(arr: np.ndarray, ds: Dataset, index: int = 0) -> np.ndarray:
    """Modality values to [0, 1] by the VOI LUT Sequence item or the window ``index`` (the first
    unless told otherwise); unchanged without one. The VOI output range (ymin, ymax of C.11.2.1.2.1)
    is chosen as [0, 1]; a LUT's own lowest and highest entries map to 0 and 1, since the
    descriptor's bits-per-entry is not always true to the data."""
    kind = voi_kind(ds)
    if kind == "lut":
        items = ds.VOILUTSequence
        if not 0 <= index < len(items):
            raise CxrInputError(f"VOI LUT {index + 1} requested; the object has {len(items)}")
        values, _ = _lut(items[index], ds)
        lo, hi = float(values.min()), float(values.max())
        out = _look_up(arr, items[index], ds)
        return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if kind != "window":
        return arr
    c = _nth(ds.WindowCenter, index, "window")
    w = _nth(ds.WindowWidth, index, "window")
    x = arr.astype(np.float64)
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    if function == "LINEAR":  # C.11.2.1.2.1
        if w < 1:
            raise CxrInputError(f"Window Width {w} is below 1, invalid for LINEAR")
        if w == 1:
            return (x > c - 0.5).astype(np.float64)
        return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    if w <= 0:
        raise CxrInputError(f"Window Width {w} must be above 0 for {function}")
    if function == "LINEAR_EXACT":  # C.11.2.1.3.2
        return np.clip((x - c) / w + 0.5, 0, 1)
    if function == "SIGMOID":  # C.11.2.1.3.1
        return 1 / (1 + np.exp(-4 * (x - c) / w))
    raise CxrInputError(f"VOI LUT Function {function} is not LINEAR, LINEAR_EXACT or SIGMOID")


def output_range(arr: np.ndarray, ds: Dataset) -> tuple[float, float, str]:
    """The range the last transform wrote into, and its name: [0, 1] after a VOI transform; the
    percentile window for a For Processing image without one; otherwise the stored bit depth's
    range through the Modality LUT (no VOI is an identity VOI, PS3.4 N.2.1.1)."""
    if voi_kind(ds):
        return 0.0, 1.0, "voi output"
    processing = (_sop_class(ds) == uid.DigitalXRayImageStorageForProcessing
                  or str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING")
    if processing and ds.get("PhotometricInterpretation") in GREY:
        lo, hi = np.percentile(arr, PROCESSING_PERCENTILES)
        return float(lo), float(hi), "percentile {:g}-{:g}".format(*PROCESSING_PERCENTILES)
    bits = int(ds.BitsStored)
    signed = ds.get("PixelRepresentation", 0) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    if ds.get("ModalityLUTSequence") and ds.get("PhotometricInterpretation") in GREY:
        values, _ = _lut(ds.ModalityLUTSequence[0], ds)
        return float(values.min()), float(values.max()), "modality lut range"
    lo, hi = sorted(float(v) for v in apply_modality_lut(stored, ds))
    return lo, hi, f"bits stored {bits}"


def invert_monochrome1(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 shows its minimum as white (C.7.6.3.1.2): mirror within the output range so
    that white is dense bone, as MONOCHROME2 and a radiologist's screen have it."""
    if ds.get("PhotometricInterpretation") != "MONOCHROME1":
        return arr
    lo, hi, _ = output_range(arr, ds)
    return lo + hi - arr


def scale_to_unit(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """To float32 in [0, 1] over ``output_range`` (values outside it are clipped)."""
    lo, hi, _ = output_range(arr, ds)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0, 1).astype(np.float32)


def _spacing(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    value = ds.get(keyword)
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        return None
    return pair if min(pair) > 0 else None  # PS3.3 10.7.1.3: positive, row then column


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str, str]:
    """(row, column) spacing in mm, its attribute and a note. Per PS3.3 10.7.1.1 a Pixel Spacing
    that differs from Imager Pixel Spacing (at the detector front plane, C.8.11.4) was corrected
    for magnification or calibrated, so it is used and the difference recorded; when they agree
    the image is uncalibrated and Imager Pixel Spacing is named."""
    imager, patient = _spacing(ds, "ImagerPixelSpacing"), _spacing(ds, "PixelSpacing")
    if imager and patient and not np.allclose(imager, patient, rtol=1e-3):
        kind = str(ds.get("PixelSpacingCalibrationType") or "type not given")
        note = (f"Pixel Spacing {patient[0]:.4g}\\{patient[1]:.4g} mm differs from Imager Pixel "
                f"Spacing {imager[0]:.4g}\\{imager[1]:.4g} mm (at the detector): calibrated for "
                f"magnification or against an object ({kind}), PS3.3 10.7.1.1; Pixel Spacing used")
        return patient, "PixelSpacing", note
    if imager:
        return imager, "ImagerPixelSpacing", ""
    return (patient, "PixelSpacing", "") if patient else (None, "none", "")


def _read_dicom(path: Path, voi_index: int) -> Radiograph:
    ds = pydicom.dcmread(path)
    check_image_object(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # a decoder missing or the data broken: either way no image
        raise CxrInputError(f"Pixel Data cannot be decoded: {exc}") from exc
    steps = []
    if ds.PhotometricInterpretation in GREY:
        arr = apply_modality_lut(arr, ds)
        steps.append("modality_lut:" + ("lut" if ds.get("ModalityLUTSequence") else "rescale"
                                        if "RescaleSlope" in ds else "identity"))
        if kind := voi_kind(ds):
            arr = apply_voi_lut(arr, ds, voi_index)
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
            steps.append(f"voi_lut:{kind} {voi_index + 1}"
                         + ("" if kind == "lut" or function == "LINEAR" else f" {function}"))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = invert_monochrome1(arr, ds)
        steps.append("invert_monochrome1")
    name = output_range(arr, ds)[2]
    arr = scale_to_unit(arr, ds)
    spacing, spacing_source, note = pixel_spacing(ds)
    view, view_source = view_of(ds)
    return Radiograph(arr, "dicom", str(ds.get("Modality", "")), str(_sop_class(ds)),
                      ds.PhotometricInterpretation, int(ds.BitsStored), spacing, spacing_source,
                      note, view, view_source, (*steps, f"scale_to_unit:{name}"))


def _read_pillow(path: Path) -> Radiograph:
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise CxrInputError(f"{path.name} is neither DICOM (no 'DICM' at byte 128) nor an "
                            f"image Pillow reads: {exc}") from exc
    kind = image.format
    if kind not in ("PNG", "JPEG"):
        raise CxrInputError(f"{path.name} is {kind}, not DICOM, PNG or JPEG")
    if getattr(image, "n_frames", 1) > 1:
        raise CxrInputError(f"multi-frame {kind} ({image.n_frames} frames): "
                            "a chest radiograph is one frame")
    mode = image.mode
    if mode in ("1", "L", "LA"):  # alpha is dropped: a radiograph is opaque
        image = image.convert("L")
    elif mode in ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    elif not mode.startswith("I"):  # 16-bit PNG: "I;16", "I;16B", or "I" holding 16-bit values
        raise CxrInputError(f"{path.name}: Pillow mode {mode} is not a grey or RGB image")
    arr = np.asarray(image)
    photometric = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    bits = 16 if mode.startswith("I") else 8
    if bits == 16 and (arr.min() < 0 or arr.max() >= 2**16):
        raise CxrInputError(f"{path.name}: values outside 16 bits")
    ds = Dataset()  # the pieces of header the steps read, as a PNG implies them
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = photometric, bits, 0
    return Radiograph(scale_to_unit(arr, ds), kind.lower(), photometric=mode,
                      bits_stored=bits, steps=(f"scale_to_unit:bits stored {bits}",))


def read_radiograph(path: Path, voi_index: int = 0) -> Radiograph:
    """Read one radiograph: DICOM when 'DICM' is at byte 128 (PS3.10 7.1), else PNG or JPEG.
    ``voi_index`` picks the VOI window or LUT (the first unless told otherwise)."""
    path = Path(path)
    with path.open("rb") as f:
        is_dicom = f.read(132)[128:] == b"DICM"
    return _read_dicom(path, voi_index) if is_dicom else _read_pillow(path)
