"""One DICOM image instance, or a PNG/JPEG, to 8-bit RGB for the image-to-text families, as small
named steps, with the choices made recorded in ``DisplayImage.steps``.

Routes:

- CR, DX (For Presentation and For Processing) and single-frame Secondary Capture go through the
  chest-radiograph reader, ``models.cxr.image.read_radiograph`` (Modality LUT, VOI LUT,
  MONOCHROME1 inversion, scaling), then ``Radiograph.to_rgb_uint8``;
- every other DICOM object holding an image (CT, MR, US, XA, MG, NM, OP/OCT, RT Dose, SM tiles,
  multi-frame Secondary Capture, ...) through pydicom, in the grey pipeline's order (PS3.4
  N.2.1.1): decode one frame (``frame`` is 1-based; the default is frame 1, not the middle one),
  pydicom's ``apply_modality_lut``, pydicom's ``apply_voi_lut`` with the first VOI LUT or window
  (pydicom prefers a VOI LUT Sequence to Window Center/Width, and so does this reader) or, when
  there is neither, the frame's own minimum and maximum; MONOCHROME1 inverted (PS3.3
  C.7.6.3.1.2) so that white is high signal; colour kept as colour (pydicom decodes YBR_FULL,
  YBR_FULL_422, YBR_ICT and YBR_RCT to RGB; PALETTE COLOR goes through pydicom's
  ``apply_color_lut``). An enhanced multi-frame object keeps its rescale and window in the
  functional groups (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10); the chosen frame's are used;
- PNG and JPEG through Pillow's ``convert("RGB")``; a 16-bit grey PNG (Pillow modes ``I;16``
  and ``I``), which ``convert`` would clip at 255, is scaled from its 16 bits instead.

What cannot be read raises ``VlmInputError`` with a specific message; messages name no file and
carry no patient data.
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
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from models.base import ContractError, InputError
from models.cxr import image as cxr_image

STEPS = ("decode_frame", "modality_lut", "voi_lut", "invert_monochrome1", "to_uint8")
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # pydicom decodes YBR to RGB
PALETTE = "PALETTE COLOR"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Objects with Pixel Data that are not pictures to describe.
NOT_PICTURES = {uid.SegmentationStorage: "a segmentation (labels, not an image)"}


class VlmInputError(InputError):
    """A file that is not one image the image-to-text families can read."""


@dataclass(frozen=True)
class DisplayImage:
    """8-bit RGB pixels, (H, W, 3), and where they came from. ``modality`` is the DICOM Modality
    ("" for PNG/JPEG); ``photometric`` the Photometric Interpretation as received or, for
    PNG/JPEG, the Pillow mode; ``steps`` the steps applied, with the choices made."""

    rgb: np.ndarray
    width: int
    height: int
    modality: str = ""
    photometric: str = ""
    steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        p = self.rgb
        if not (isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim == 3
                and p.shape[2] == 3 and p.size > 0):
            raise ContractError("display image pixels must be a non-empty (H, W, 3) uint8 array")
        if (self.height, self.width) != p.shape[:2]:
            raise ContractError(f"display image is {p.shape[1]}x{p.shape[0]}, "
                                f"not {self.width}x{self.height}")


def _sop_class(ds: Dataset) -> uid.UID:
    meta = getattr(ds, "file_meta", Dataset())
    return uid.UID(str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")))


def _sop_name(ds: Dataset) -> str:
    sop = _sop_class(ds)
    return sop.name if sop else "(none)"


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008); 1 when absent."""
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError) as exc:
        raise VlmInputError(f"Number of Frames {ds.get('NumberOfFrames')!r} is not a number") \
            from exc


def frame_index(ds: Dataset, frame: int | None) -> tuple[int, int]:
    """The 0-based index of the 1-based ``frame`` (frame 1 when ``None``), and the frame count;
    a frame outside 1..count is refused."""
    frames = number_of_frames(ds)
    chosen = 1 if frame is None else frame
    if isinstance(chosen, bool) or not isinstance(chosen, int | np.integer) \
            or not 1 <= chosen <= frames:
        raise VlmInputError(f"frame {frame!r} requested; the object has {frames} "
                            f"frame{'s' if frames > 1 else ''} (1 to {frames})")
    return int(chosen) - 1, frames


def check_image_object(ds: Dataset) -> None:
    """Refuse what holds no picture: no Pixel Data (RT Plan, SR, a waveform, ...), or a
    segmentation."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise VlmInputError(f"SOP class {_sop_name(ds)} is not an image (no Pixel Data)")
    if _sop_class(ds) in NOT_PICTURES:
        raise VlmInputError(f"SOP class {_sop_name(ds)} is {NOT_PICTURES[_sop_class(ds)]}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GREY + COLOUR + (PALETTE,):
        raise VlmInputError(f"Photometric Interpretation {photometric or '(none)'} is not "
                            "MONOCHROME1/2, RGB, YBR or PALETTE COLOR")


def _is_radiograph(ds: Dataset) -> bool:
    """CR, DX or Secondary Capture that the radiograph reader takes: one frame, grey or RGB/YBR,
    8 to 16 bits stored; any other goes the general way."""
    try:
        bits = int(ds.get("BitsStored") or 0)
    except (TypeError, ValueError):
        bits = 0
    return (_sop_class(ds) in cxr_image.SUPPORTED_SOP_CLASSES and number_of_frames(ds) == 1
            and ds.get("PhotometricInterpretation") in cxr_image.GREY + cxr_image.COLOUR
            and 8 <= bits <= 16)


def decode_frame(ds: Dataset, index: int, frames: int) -> np.ndarray:
    """The pixels of one frame (0-based ``index``), as pydicom decodes them (YBR to RGB)."""
    try:
        if frames > 1:
            ds.pixel_array_options(index=index)
        arr = ds.pixel_array
    except Exception as exc:  # a decoder missing or the data broken: either way no image
        syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
        name = uid.UID(str(syntax)).name if syntax else "(no transfer syntax)"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise VlmInputError(f"Pixel Data ({name}) cannot be decoded: {reason}") from exc
    if frames > 1 and arr.ndim == (4 if ds.get("SamplesPerPixel", 1) > 1 else 3):
        arr = arr[index]  # a decoder that ignored the index
    return np.asarray(arr)


_FRAME_GROUPS = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
                 "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction")}


def apply_frame_groups(ds: Dataset, index: int) -> bool:
    """Copy the chosen frame's rescale and window from the functional groups (per-frame first,
    then shared) to the top level, where pydicom's LUT functions look, unless the top level has
    them. ``ds`` is this read's own dataset. True when anything was copied."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = [per_frame[index]] if index < len(per_frame) else []
    groups += list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    copied = False
    for sequence, keywords in _FRAME_GROUPS.items():
        for group in groups:
            items = group.get(sequence)
            if not items:
                continue
            for keyword in keywords:
                if keyword in items[0] and keyword not in ds:
                    setattr(ds, keyword, items[0][keyword].value)
                    copied = True
            break
    return copied


def _count(value: object) -> int:
    return len(value) if isinstance(value, list | tuple | MultiValue) else 1


def voi_kind(ds: Dataset) -> str:
    """What pydicom's ``apply_voi_lut`` will apply: "lut", "window" or "" (neither)."""
    items = ds.get("VOILUTSequence") or []
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        return "lut"
    return "window" if "WindowCenter" in ds and "WindowWidth" in ds else ""


def window_output_range(ds: Dataset) -> tuple[float, float]:
    """What pydicom's windowing (``apply_windowing``) writes below and above the window: the
    ends of the stored bit depth's range (or the Modality LUT's, unsigned), through Rescale
    Slope/Intercept when present; reversed by a negative slope, as pydicom has it."""
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("PixelRepresentation", 0) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def lut_output_range(ds: Dataset) -> tuple[float, float]:
    """The lowest and highest entries of the first VOI LUT, read through pydicom's own lookup
    (every input the LUT maps), as black and white: the descriptor's bits per entry is not always
    true to the data."""
    entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
    table = apply_voi_lut(np.arange(first, first + (entries or 2**16)), ds, index=0)
    return float(np.min(table)), float(np.max(table))


def _to_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo`` to 0 and ``hi`` to 1 (either may be the larger), clipped; zeros when equal."""
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.float64)
    return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def grey_to_unit(arr: np.ndarray, ds: Dataset, steps: list[str]) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window (else min-max), to [0, 1]; MONOCHROME1
    mirrored. Appends the steps taken to ``steps``."""
    if ds.get("ModalityLUTSequence"):
        kind = "lut"
    else:
        kind = "rescale" if "RescaleSlope" in ds or "RescaleIntercept" in ds else "identity"
    try:
        values = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise VlmInputError(f"the Modality LUT cannot be applied: {exc}") from exc
    steps.append(f"modality_lut: {kind}")
    voi = voi_kind(ds)
    try:
        if voi == "lut":
            if np.issubdtype(values.dtype, np.floating):  # a LUT indexes integers
                values = np.rint(values).astype(np.int64)
            out = apply_voi_lut(values, ds, index=0)
            lo, hi = lut_output_range(ds)
            steps.append(f"voi_lut: lut 1 of {len(ds.VOILUTSequence)}")
        elif voi == "window":
            out = apply_voi_lut(values, ds, index=0)
            lo, hi = window_output_range(ds)
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
            steps.append(f"voi_lut: window 1 of {_count(ds.WindowCenter)}"
                         + ("" if function == "LINEAR" else f" {function}"))
        else:
            out = values
            lo, hi = float(np.min(out)), float(np.max(out))
            steps.append("voi_lut: none, min-max" + (" (constant image)" if hi == lo else ""))
    except VlmInputError:
        raise
    except Exception as exc:  # an invalid window width, an unsupported LUT depth, ...
        raise VlmInputError(f"the VOI LUT cannot be applied: {exc}") from exc
    unit = _to_unit(np.asarray(out), lo, hi)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
        steps.append("invert_monochrome1")
    return unit


def colour_to_uint8(arr: np.ndarray, ds: Dataset, steps: list[str]) -> np.ndarray:
    """RGB (decoded by pydicom) or PALETTE COLOR (through its lookup tables) to 8 bits."""
    photometric = ds.PhotometricInterpretation
    if photometric == PALETTE:
        try:
            arr = apply_color_lut(arr, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as exc:
            raise VlmInputError(f"the palette colour lookup tables cannot be applied: {exc}") \
                from exc
        steps.append("palette_color_lut")
    else:
        bits = int(ds.get("BitsStored") or 8)
        steps.append("colour: RGB" if photometric == "RGB"
                     else f"colour: {photometric} decoded to RGB by pydicom")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise VlmInputError(f"colour pixels of shape {tuple(arr.shape)} are not (rows, columns, 3)")
    if bits == 8 and arr.dtype == np.uint8:
        steps.append("to_uint8: 8 bits")
        return np.ascontiguousarray(arr)
    steps.append(f"to_uint8: from {bits} bits")
    return np.rint(_to_unit(arr, 0.0, float(2**bits - 1)) * 255).astype(np.uint8)


def _read_generic(ds: Dataset, frame: int | None) -> DisplayImage:
    index, frames = frame_index(ds, frame)
    arr = decode_frame(ds, index, frames)
    steps = [f"decode_frame: {index + 1} of {frames}"]
    if ds.PhotometricInterpretation in GREY:
        if arr.ndim != 2:
            raise VlmInputError(f"grey pixels of shape {tuple(arr.shape)} are not one frame")
        if apply_frame_groups(ds, index):
            steps.append(f"functional_groups: frame {index + 1}")
        unit = grey_to_unit(arr, ds, steps)
        steps.append("to_uint8: rint(x * 255), grey to RGB")
        rgb = np.repeat(np.rint(unit * 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        rgb = colour_to_uint8(arr, ds, steps)
    return DisplayImage(rgb, rgb.shape[1], rgb.shape[0], str(ds.get("Modality", "")),
                        str(ds.PhotometricInterpretation), tuple(steps))


def _read_radiograph(path: Path, ds: Dataset, frame: int | None) -> DisplayImage:
    frame_index(ds, frame)
    try:
        radiograph = cxr_image.read_radiograph(path)
    except InputError as exc:
        raise VlmInputError(str(exc)) from exc
    rgb = radiograph.to_rgb_uint8()
    steps = ("read_radiograph", *radiograph.steps, "to_rgb_uint8: rint(x * 255)")
    return DisplayImage(rgb, rgb.shape[1], rgb.shape[0], radiograph.modality,
                        radiograph.photometric, steps)


def read_dicom(path: Path, frame: int | None = None) -> DisplayImage:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise VlmInputError(f"the file cannot be read as DICOM: {type(exc).__name__}") from exc
    check_image_object(ds)
    if _is_radiograph(ds):
        return _read_radiograph(path, ds, frame)
    return _read_generic(ds, frame)


def read_pillow(path: Path, frame: int | None = None) -> DisplayImage:
    """PNG or JPEG through Pillow: ``convert("RGB")``; 16-bit grey scaled from 16 bits."""
    try:
        image = Image.open(path)
        kind = image.format
        frames = int(getattr(image, "n_frames", 1))
        if kind in ("PNG", "JPEG"):
            chosen = 1 if frame is None else frame
            if isinstance(chosen, bool) or not isinstance(chosen, int) \
                    or not 1 <= chosen <= frames:
                raise VlmInputError(f"frame {frame!r} requested; the {kind} has {frames} "
                                    f"frame{'s' if frames > 1 else ''} (1 to {frames})")
            image.seek(chosen - 1)
            image.load()
    except VlmInputError:
        raise
    except Exception as exc:
        raise VlmInputError("the file is neither DICOM (no 'DICM' at byte 128) nor an image "
                            f"Pillow reads: {type(exc).__name__}") from exc
    if kind not in ("PNG", "JPEG"):
        raise VlmInputError(f"the file is a {kind} image, not DICOM, PNG or JPEG")
    mode = image.mode
    steps = [f"pillow: {kind} frame {chosen} of {frames}"]
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image).astype(np.float64)
        if arr.min() < 0 or arr.max() >= 2**16:
            raise VlmInputError(f"Pillow mode {mode} values are outside 16 bits")
        grey = np.rint(arr / (2**16 - 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        steps.append(f"to_uint8: {mode} from 16 bits, grey to RGB")
    else:
        try:
            rgb = np.asarray(image.convert("RGB"))
        except Exception as exc:
            raise VlmInputError(f"Pillow mode {mode} cannot be converted to RGB") from exc
        steps.append(f"convert_rgb: from {mode}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return DisplayImage(rgb, rgb.shape[1], rgb.shape[0], "", mode, tuple(steps))


def is_dicom(path: Path) -> bool:
    """'DICM' at byte 128 (PS3.10 7.1)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError as exc:
        raise VlmInputError(f"the file cannot be opened: {type(exc).__name__}") from exc


def read_display_image(path: Path, frame: int | None = None) -> DisplayImage:
    """One DICOM image instance (DICOM when 'DICM' is at byte 128), PNG or JPEG, as 8-bit RGB.
    ``frame`` is 1-based; ``None`` means frame 1."""
    path = Path(path)
    return read_dicom(path, frame) if is_dicom(path) else read_pillow(path, frame)
