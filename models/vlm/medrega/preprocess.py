"""MedRegA's test-time image preprocessing (``xmed-lab/MedRegA`` at commit dfdb0db), as named
steps a test can run one by one. ``src/demo.py`` opens the image with ``.convert('RGB')``,
optionally tiles it (``--dynamic``), and runs each tile through
``build_transform(is_train=False, input_size=448)`` of ``src/internvl/train/dataset.py``
(``pad2square`` False, ``normalize_type`` "imagenet"):

1. ``rgb``: the image as 8-bit RGB;
2. ``resize_448_bicubic``: torchvision ``Resize((448, 448), InterpolationMode.BICUBIC)``, both
   sides to 448 whatever the aspect ratio. On a PIL image torchvision calls PIL's own
   ``resize`` with ``BICUBIC`` (its ``antialias`` flag does not apply to PIL, whose resampling
   always filters over the whole support), so ``img.resize((448, 448), BICUBIC)`` gives the
   same pixels;
3. ``to_tensor``: ``ToTensor()``, channels first, float32 ``/ 255``;
4. ``imagenet_normalise``: ``Normalize`` with ``IMAGENET_MEAN`` (0.485, 0.456, 0.406) and
   ``IMAGENET_STD`` (0.229, 0.224, 0.225) of ``src/internvl/train/constants.py``.

Dynamic tiling (``dynamic_preprocess``, ``find_closest_aspect_ratio`` in the same file): the
grids (columns, rows) with ``min_num <= columns * rows <= max_num``, built as a set in the
authors' order and sorted by tile count (Python's stable sort keeps the set's order among
grids of one count); the grid whose ``columns / rows`` is nearest the image's wins, and on a
tie a later grid replaces the current best when the image's area exceeds half the later
grid's area in pixels (``0.5 * size**2 * columns * rows``); the image is resized to the grid
(PIL's default filter for RGB, bicubic, named here) and cut row by row, left to right; a
thumbnail of the whole image at ``size`` x ``size`` is appended when asked and there is more
than one tile. The demo's defaults: no tiling, ``max_num`` 6, ``use_thumbnail`` from the model
config (not read here: pass it).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.vlm.images import VlmInputError

STEPS = ("rgb", "resize_448_bicubic", "to_tensor", "imagenet_normalise")
SIZE = 448
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESAMPLE = Image.Resampling.BICUBIC


def rgb(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 to a PIL RGB image."""
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] == 3 and pixels.size > 0):
        shape = tuple(getattr(pixels, "shape", ()))
        raise VlmInputError(f"expected an (H, W, 3) uint8 image, got "
                            f"{getattr(pixels, 'dtype', '?')} {shape}")
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def resize(img: Image.Image, size: int = SIZE) -> Image.Image:
    """Both sides to ``size``, PIL bicubic (torchvision ``Resize((size, size), BICUBIC)``)."""
    return img.resize((size, size), RESAMPLE)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def transform(img: Image.Image, size: int = SIZE) -> torch.Tensor:
    """``build_transform(is_train=False, input_size=size)`` on one PIL image: (3, size, size)."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    return imagenet_normalise(to_tensor(resize(img, size)))


def target_ratios(min_num: int = 1, max_num: int = 6) -> list[tuple[int, int]]:
    """The (columns, rows) grids to try, in the authors' order: the set built over tile counts
    ``n``, then columns, then rows, sorted by ``columns * rows``."""
    grids = set()
    for n in range(min_num, max_num + 1):
        for columns in range(1, n + 1):
            for rows in range(1, n + 1):
                if min_num <= columns * rows <= max_num:
                    grids.add((columns, rows))
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def find_closest_aspect_ratio(aspect_ratio: float, ratios: list[tuple[int, int]], width: int,
                              height: int, size: int = SIZE) -> tuple[int, int]:
    """The grid nearest the image's aspect ratio; on a tie, a later grid wins when the image's
    area exceeds half of that grid's area in pixels."""
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for grid in ratios:
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * size * size * grid[0] * grid[1]:
            best = grid
    return best


def dynamic_tiles(img: Image.Image, size: int = SIZE, min_num: int = 1, max_num: int = 6,
                  use_thumbnail: bool = False) -> list[Image.Image]:
    """The image cut into ``size`` x ``size`` tiles on the nearest grid, row by row, left to
    right, plus a whole-image thumbnail when asked and there is more than one tile."""
    width, height = img.size
    columns, rows = find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num),
                                              width, height, size)
    resized = img.resize((size * columns, size * rows), RESAMPLE)
    tiles = []
    for i in range(columns * rows):
        x, y = (i % columns) * size, (i // columns) * size
        tiles.append(resized.crop((x, y, x + size, y + size)))
    if use_thumbnail and len(tiles) > 1:
        tiles.append(img.resize((size, size), RESAMPLE))
    return tiles


def preprocess(pixels: np.ndarray, size: int = SIZE, dynamic: bool = False, max_num: int = 6,
               use_thumbnail: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 to (n_tiles, 3, size, size) float32: one tile unless ``dynamic``."""
    img = rgb(pixels)
    images = dynamic_tiles(img, size, 1, max_num, use_thumbnail) if dynamic else [img]
    return torch.stack([transform(tile, size) for tile in images])
