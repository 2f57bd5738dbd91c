"""Rendering a decoded frame for display: the grayscale pipeline of PS3.3 C.11 (Modality LUT or
Rescale, then VOI window or VOI LUT, MONOCHROME1 inverted), colour passed through, scaled to a
viewport and encoded as JPEG or PNG, for the WADO-RS rendered and thumbnail resources (PS3.18
10.4.1.1.3, 8.3.5).

The file's own transforms are those of the image families' reader (``models.vlm.images``, which
the chest-radiograph and vision-language engines use): a viewer sees what the models see. This
module adds what a viewer asks for: a window of its own (PS3.18 8.3.5.1.4: linear, linear-exact,
sigmoid), a viewport, JPEG or PNG. Pure functions of numpy arrays, a pydicom Dataset and plain
options; it never reads files and knows nothing of HTTP.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from models.base import InputError
from models.vlm import images as display

JPEG, PNG = "image/jpeg", "image/png"
DEFAULT_QUALITY = 90  # Pillow's default of 75 blurs fine lines on radiographs
THUMBNAIL_SIZE = (128, 128)
MAX_VIEWPORT = 4096  # keeps an upscaled picture within a few tens of MB
# PS3.18 8.3.5.1.4 names the functions in lower case; PS3.3 C.11.2.1.3 (VOILUTFunction) in upper.
FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


class RenderError(ValueError):
    """A rendering parameter that is not valid (400)."""


class CannotRender(Exception):
    """Stored pixels whose display transforms cannot be applied (422)."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center and width in modality values (after Rescale)."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS.values():
            raise RenderError(f"window function must be one of {', '.join(FUNCTIONS)}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise RenderError("window center and width must be finite numbers")
        # PS3.3 C.11.2.1.2.1: width >= 1 for LINEAR, > 0 for the others
        if self.width < 1 if self.function == "LINEAR" else self.width <= 0:
            raise RenderError(f"window width {self.width:g} is too small for "
                              f"{self.function} (PS3.3 C.11.2.1.2)")


# -- query parameters (PS3.18 8.3.5.1) -------------------------------------------------------
def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise RenderError(f"window must be center,width[,function], not {text!r}")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise RenderError(f"window center and width must be numbers, not {text!r}") from exc
    name = parts[2].lower() if len(parts) == 3 else "linear"
    if name not in FUNCTIONS:
        raise RenderError(f"window function must be one of {', '.join(FUNCTIONS)}, "
                          f"not {parts[2]!r}")
    return Window(center, width, FUNCTIONS[name])


def parse_viewport(text: str) -> tuple[int, int]:
    """``vw,vh`` (PS3.18 8.3.5.1.3); the cropping form with sx,sy,sw,sh is not supported."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise RenderError(f"viewport must be width,height (cropping with sx,sy,sw,sh is not "
                          f"supported), not {text!r}")
    if not all(p.isdigit() for p in parts):
        raise RenderError(f"viewport width and height must be whole numbers, not {text!r}")
    vw, vh = int(parts[0]), int(parts[1])
    if not (1 <= vw <= MAX_VIEWPORT and 1 <= vh <= MAX_VIEWPORT):
        raise RenderError(f"viewport width and height must be 1 to {MAX_VIEWPORT}")
    return vw, vh


def parse_quality(text: str) -> int:
    """``quality`` 1..100 (PS3.18 8.3.5.1.2); only lossy JPEG uses it."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise RenderError(f"quality must be a whole number from 1 to 100, not {text!r}")
    return int(text)


# -- the grayscale pipeline (PS3.3 C.11) -----------------------------------------------------
def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Modality values to 0..255 with the VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3.1)."""
    x = values.astype(np.float64)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        y = np.clip(((x - c) / w + 0.5) * 255.0, 0.0, 255.0)
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, y))
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / max(w - 1, 1e-9) + 0.5) * 255.0
        y = np.where(x <= low, 0.0, np.where(x > high, 255.0, np.clip(y, 0.0, 255.0)))
    return np.rint(y).astype(np.uint8)


def to_display(arr: np.ndarray, ds: Dataset, index: int = 0,
               window: Window | None = None) -> np.ndarray:
    """One decoded frame (as ``pixel_array`` gives it) to an 8-bit grey (H, W) or RGB (H, W, 3)
    array. The file's own transforms are the ones the image families apply
    (``models.vlm.images``: the frame's functional groups, Modality LUT or Rescale, the first
    VOI LUT or window, else the frame's min to max, MONOCHROME1 inverted; colour and PALETTE
    COLOR to 8 bits); a ``window`` asked for replaces the file's VOI. ``ds`` is this request's
    own dataset (the frame's rescale and window are copied to its top level)."""
    steps: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        if photometric not in display.GREY:
            return display.colour_to_uint8(arr, ds, steps)
        display.apply_frame_groups(ds, index)
        if window is None:
            return np.rint(display.grey_to_unit(arr, ds, steps) * 255.0).astype(np.uint8)
        out = apply_window(apply_modality_lut(arr, ds), window)
    except InputError as exc:
        raise CannotRender(str(exc)) from exc
    except (TypeError, ValueError, IndexError) as exc:  # a Modality LUT pydicom cannot apply
        raise CannotRender(f"the Modality LUT cannot be applied: {exc}") from exc
    return 255 - out if photometric == "MONOCHROME1" else out


# -- size and encoding -----------------------------------------------------------------------
def fit(image: Image.Image, size: tuple[int, int], upscale: bool = True) -> Image.Image:
    """Scale to fit inside ``size`` keeping the aspect ratio (PS3.18 8.3.5.1.3)."""
    scale = min(size[0] / image.width, size[1] / image.height)
    if not upscale:
        scale = min(scale, 1.0)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if new == image.size else image.resize(new, Image.Resampling.LANCZOS)


def encode(image: Image.Image, media: str = JPEG, quality: int | None = None) -> bytes:
    buf = io.BytesIO()
    if media == PNG:
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=quality or DEFAULT_QUALITY)
    return buf.getvalue()


def render(arr: np.ndarray, ds: Dataset, index: int = 0, *, window: Window | None = None,
           viewport: tuple[int, int] | None = None, media: str = JPEG,
           quality: int | None = None, upscale: bool = True) -> bytes:
    """A decoded frame to the bytes of a JPEG or PNG picture."""
    image = Image.fromarray(to_display(arr, ds, index, window))
    if image.mode not in ("L", "RGB"):  # two or four samples (retired ARGB, CMYK): shown as RGB
        image = image.convert("RGB")
    if viewport is not None:
        image = fit(image, viewport, upscale)
    return encode(image, media, quality)


__all__ = ["JPEG", "PNG", "THUMBNAIL_SIZE", "CannotRender", "RenderError", "Window",
           "apply_window", "encode", "fit", "parse_quality", "parse_viewport", "parse_window",
           "render", "to_display"]
