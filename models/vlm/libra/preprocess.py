"""Libra's test-time image preprocessing (``X-iZhang/Libra`` at commit 0d6c56a), as named steps a
test can run one by one:

1. ``voi_lut_minmax_uint8`` (``libra/eval/run_libra.py``, ``load_images``): a DICOM goes through
   pydicom's ``apply_voi_lut`` on the stored ``pixel_array`` (the authors import it from
   ``pydicom.pixel_data_handlers.util``, the same function as ``pydicom.pixels.apply_voi_lut``
   in pydicom 3; no Modality LUT before it, as theirs has none), MONOCHROME1 becomes
   ``max - data``, then ``data - min``, ``/ max``, ``* 255`` and ``astype(uint8)`` (truncation,
   not rounding), stacked to three channels; a PNG/JPEG is ``Image.open(...).convert("RGB")``;
2. ``pad_to_square_mean`` (``libra/mm_utils.py``, ``process_images`` with
   ``image_aspect_ratio == "pad"``, ``expand2square``): the image pasted onto a square of its
   longer side, offset ``(long - short) // 2`` on the short axis, the rest filled with
   ``tuple(int(x * 255) for x in image_processor.image_mean)``;
3. to 6. the ``microsoft/rad-dino`` ``AutoImageProcessor`` that
   ``libra/model/multimodal_encoder/dino_encoder.py`` loads: a ``BitImageProcessor`` (the slow,
   PIL one under the transformers 4.51.3 Libra pins): ``do_convert_rgb``; ``resize`` of the
   shortest edge to 518 and the other to ``int(518 * long / short)``, PIL bicubic (resample 3);
   ``center_crop`` 518 x 518 at offsets ``(side - 518) // 2``; ``rescale`` by 1/255 (in float64,
   then float32); ``normalize`` ``(x - mean) / std`` in float32.

Where the constants come from: ``SIZE`` 518 agrees with RAD-DINO's model card, whose encoder
gives a 37 x 37 patch grid (37 x 14 = 518), and with the research notes. ``IMAGE_MEAN`` 0.5307
and ``IMAGE_STD`` 0.2583 (the same on all three channels), bicubic resampling and the centre
crop are NOT CONFIRMED against ``microsoft/rad-dino``'s own ``preprocessor_config.json``, which
could not be read here: they are the values of third-party copies of that file cited in the
research notes (``Deepnoid/M4CXR-TNNLS``, ``tush-2ar/findxray-encoder``). A mismatch would
change every input tensor, so check them when the checkpoint's config is at hand.

Departures from the authors' code: a DICOM is recognised by 'DICM' at byte 128, not by a
``.dcm`` name; a blank image (one value after the VOI LUT), which theirs divides by zero, is
refused; so is a multi-frame object, which theirs cannot turn into one picture; colour DICOM
skips the VOI step (it is for grey, PS3.3 C.11.2; pydicom's windowing refuses colour) and is
min-maxed as theirs is; images other than PNG and JPEG (theirs takes whatever Pillow reads) are
refused, as elsewhere in MedGate; a 16-bit PNG, which ``convert("RGB")`` clips at 255 (a white
picture), is refused.

Each function takes ``size``, ``mean`` and ``std`` so that a reference model with a small
encoder can use, for example, ``preprocess(path, size=56)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from models.vlm.images import (
    COLOUR,
    GREY,
    VlmInputError,
    check_image_object,
    decode_frame,
    is_dicom,
    number_of_frames,
)

STEPS = ("voi_lut_minmax_uint8", "pad_to_square_mean", "resize_shortest_518_bicubic",
         "center_crop_518", "rescale_1_255", "normalise_rad_dino")
SIZE = 518
IMAGE_MEAN = (0.5307, 0.5307, 0.5307)  # NOT CONFIRMED against rad-dino's own config (above)
IMAGE_STD = (0.2583, 0.2583, 0.2583)  # NOT CONFIRMED, likewise
RESAMPLE = Image.Resampling.BICUBIC  # the processor's resample 3
RESCALE_FACTOR = 1 / 255


def pad_colour(mean: Sequence[float] = IMAGE_MEAN) -> tuple[int, int, int]:
    """The square's fill, as ``process_images`` computes it: ``int(x * 255)`` (truncation)."""
    r, g, b = (int(x * 255) for x in mean)
    return r, g, b


BACKGROUND = pad_colour(IMAGE_MEAN)  # (135, 135, 135)


def voi_lut_minmax_uint8(ds: Dataset) -> np.ndarray:
    """The authors' DICOM path, from a read dataset to (H, W, 3) uint8."""
    check_image_object(ds)
    frames = number_of_frames(ds)
    if frames > 1:
        raise VlmInputError(f"multi-frame object ({frames} frames): Libra reads one radiograph")
    photometric = ds.PhotometricInterpretation
    if photometric not in GREY + COLOUR:
        raise VlmInputError(f"Photometric Interpretation {photometric} is not grey or RGB")
    data = decode_frame(ds, 0, 1)
    if photometric in GREY:
        try:
            data = apply_voi_lut(data, ds)
        except Exception as exc:  # an invalid window width, an unsupported LUT depth, ...
            raise VlmInputError(f"the VOI LUT cannot be applied: {exc}") from exc
    # float64 from here: the values of the authors' integer arithmetic, without its overflow on
    # signed data
    data = np.asarray(data, dtype=np.float64)
    if photometric == "MONOCHROME1":
        data = np.max(data) - data
    data = data - np.min(data)
    top = np.max(data)
    if top == 0:
        raise VlmInputError("the image is blank: every pixel has the same value after the VOI "
                            "LUT, and Libra's min-max scaling would divide by zero")
    data = (data / top * 255).astype(np.uint8)
    if data.ndim == 2:
        data = np.stack([data] * 3, axis=-1)
    return np.ascontiguousarray(data)


def libra_rgb(path: Path) -> np.ndarray:
    """One image file as Libra's ``load_images`` reads it, (H, W, 3) uint8."""
    path = Path(path)
    if is_dicom(path):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise VlmInputError(f"the file cannot be read as DICOM: {type(exc).__name__}") \
                from exc
        return voi_lut_minmax_uint8(ds)
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise VlmInputError("the file is neither DICOM (no 'DICM' at byte 128) nor an image "
                            f"Pillow reads: {type(exc).__name__}") from exc
    if image.format not in ("PNG", "JPEG"):
        raise VlmInputError(f"the file is a {image.format} image, not DICOM, PNG or JPEG")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise VlmInputError(f"a {image.mode} (16-bit) image: Libra's convert('RGB') would clip "
                            "it at 255; give the DICOM or an 8-bit PNG")
    try:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)
    except Exception as exc:
        raise VlmInputError(f"Pillow mode {image.mode} cannot be converted to RGB") from exc


def _pil_rgb(rgb: np.ndarray) -> Image.Image:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3 and rgb.size > 0):
        shape = tuple(getattr(rgb, "shape", ()))
        raise VlmInputError(f"expected an (H, W, 3) uint8 image, got {getattr(rgb, 'dtype', '?')}"
                            f" {shape}")
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def expand_to_square(img: Image.Image, background: tuple[int, int, int] = BACKGROUND
                     ) -> Image.Image:
    """Pad to a square of the longer side: a wide image at ``(0, (w - h) // 2)``, a tall one at
    ``((h - w) // 2, 0)``; a square one is returned as it is."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    square = Image.new(img.mode, (side, side), background)
    square.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return square


def resize_shortest(img: Image.Image, size: int = SIZE) -> Image.Image:
    """The shortest edge to ``size``, the other to ``int(size * long / short)``, PIL bicubic."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), RESAMPLE)


def center_crop(img: Image.Image, size: int = SIZE) -> Image.Image:
    """``size`` x ``size`` from the centre, offsets ``(side - size) // 2``."""
    w, h = img.size
    if w < size or h < size:
        raise VlmInputError(f"image of {w}x{h} is smaller than the {size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return img.crop((left, top, left + size, top + size))


def rescale(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32: the pixels times 1/255 (in float64, as the processor does)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float64) * RESCALE_FACTOR
    return torch.from_numpy(arr.astype(np.float32).transpose(2, 0, 1).copy())


def normalise(x: torch.Tensor, mean: Sequence[float] = IMAGE_MEAN,
              std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel, in float32."""
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    return (x - m) / s


def rad_dino_transform(img: Image.Image, size: int = SIZE, mean: Sequence[float] = IMAGE_MEAN,
                       std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """The RAD-DINO processor on one PIL image: (3, size, size) float32."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    return normalise(rescale(center_crop(resize_shortest(img, size), size)), mean, std)


def preprocess_rgb(rgb: np.ndarray, size: int = SIZE, mean: Sequence[float] = IMAGE_MEAN,
                   std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """Steps 2 to 6 on an (H, W, 3) uint8 image: (3, size, size) float32."""
    return rad_dino_transform(expand_to_square(_pil_rgb(rgb), pad_colour(mean)), size, mean, std)


def preprocess(path: Path, size: int = SIZE, mean: Sequence[float] = IMAGE_MEAN,
               std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """All six steps on one file: (3, size, size) float32."""
    return preprocess_rgb(libra_rgb(path), size, mean, std)


def preprocess_pair(current_path: Path, prior_path: Path | None = None, size: int = SIZE,
                    mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
                    ) -> tuple[torch.Tensor, bool]:
    """The current and prior images as ``get_image_tensors`` stacks them: (2, 1, 3, size, size),
    index 0 the current, index 1 the prior. Without a prior the current image stands in for it
    (the authors' dummy prior, ``image.append(image[0])``); the flag says so."""
    current = preprocess(current_path, size, mean, std)
    dummy = prior_path is None
    prior = current.clone() if dummy else preprocess(prior_path, size, mean, std)
    return torch.stack([current[None], prior[None]]), dummy
