"""PromptMRG's test-time image preprocessing (``dataset/__init__.py``, ``create_dataset_test``),
as named steps a test can run one by one:

1. ``rgb``: the radiograph as 8-bit RGB (the authors open PNGs with ``.convert('RGB')``);
2. ``resize_shorter_256``: torchvision ``Resize(256)`` on a PIL image: the shorter side to 256,
   the longer to ``int(256 * long / short)``, PIL bilinear (torchvision's default);
3. ``center_crop_224``: torchvision ``CenterCrop(224)`` (offsets ``int(round((side - 224) / 2))``);
4. ``to_tensor``: ``ToTensor()``, channels first, values / 255;
5. ``imagenet_normalise``: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.base import InputError

STEPS = ("rgb", "resize_shorter_256", "center_crop_224", "to_tensor", "imagenet_normalise")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def rgb(pixels: np.ndarray) -> Image.Image:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InputError(f"expected an (H, W, 3) uint8 image, got {pixels.dtype} "
                         f"{tuple(pixels.shape)}")
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def resize_shorter(img: Image.Image, size: int = 256) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    target = (size, new_long) if w <= h else (new_long, size)
    return img.resize(target, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int = 224) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"image of {w}x{h} is smaller than the {size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=x.dtype)[:, None, None]
    std = torch.tensor(STD, dtype=x.dtype)[:, None, None]
    return (x - mean) / std


def preprocess(pixels: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, crop, crop) float32."""
    img = center_crop(resize_shorter(rgb(pixels), resize), crop)
    return imagenet_normalise(to_tensor(img))[None]
