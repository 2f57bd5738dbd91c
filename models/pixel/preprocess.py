"""MedPLIB's test-time input preparation (``ShawnHuang497/MedPLIB`` at commit 9c3efe9), as named
steps a test can run one by one. The authors' two inference routes, ``model/eval/vqa_infer.py``
(through ``datasets/LazySupervisedDataset.py``, ``__getitem__``) and the demo worker
(``model/serve/model_worker.py``, ``generate_stream``), prepare the image the same way; both
start from 8-bit RGB (``cv2.imread`` then ``COLOR_BGR2RGB``; here the output of
``models.vlm.images.read_display_image``).

CLIP branch (``image_aspect_ratio`` 'pad'), (3, 336, 336):

1. ``clip_resize_longest_bilinear``: ``ResizeLongestSide(336).apply_image`` of
   ``model/segment_anything/utils/transforms.py``: the new size is ``int(side * scale + 0.5)``
   with ``scale = 336 / max(h, w)``, and the resize is torchvision's ``resize`` on a PIL image
   with its default interpolation, i.e. PIL **bilinear** (torchvision 0.16.2 in the authors'
   ``requirements.txt``), not bicubic;
2. ``clip_pad_centre_mean``: ``pad_tensor_channelwise`` (the dataset's ``preprocess`` with
   ``normalize=False``) pads the uint8 image to 336 x 336, centred, the smaller half of each
   axis first (:func:`models.pixel.sam.sam_pad_offsets`), with the colour
   ``(CLIP mean * 255).clamp(0, 255).to(int)`` computed in float32 and truncated: (122, 116, 104);
3. ``clip_rescale_1_255``, 4. ``clip_normalise``: ``CLIPImageProcessor.preprocess`` (the slow
   processor of transformers 4.31.0) on that square: its bicubic resize of the shortest edge to
   336 and its 336 centre crop do nothing to a 336 x 336 image (PIL returns a copy when the size
   is unchanged), the RGB conversion does nothing to an array; what is left is ``x * (1/255)``
   (float64, then float32) and ``(x - mean) / std`` in float32 with the OpenAI CLIP constants.
   The pad colour therefore normalises to about -0.01, not exactly 0.

``chat.py`` is LISA's script (``LISAForCausalLM``, 1024-pixel SAM input padded at the bottom and
right, CLIP processor on the raw image: shortest edge 336 bicubic and a centre crop); MedPLIB's
routes do not use it, and neither does this module.

SAM branch, (3, 256, 256) and the resized size:

5. ``sam_resize_longest_bilinear``: ``ResizeLongestSide(256)`` as in step 1;
6. ``sam_normalise``: ``(x - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]`` on the
   0-255 scale, float32;
7. ``sam_pad_centre_zeros``: then (after normalising, "for sam. pad after normalize") padded
   with zeros, centred, by the same ``pad_tensor_channelwise``; ``postprocess_masks`` takes the
   same offsets off again (:func:`models.pixel.sam.postprocess_masks`).

Region prompt, one per question (``model/serve/gradio_web_server.py``, ``draw``,
``generate_mask_for_feature``, ``format_region_prompt``; ``model_worker.py``;
``model/medplib/model/medplib_arch.py``, ``extract_region_feature``):

8. ``region_mask``: the prompt as a binary mask at the image's own resolution: a point is the
   41 x 41 square ``span`` 20 pixels around it, clipped to the image (:func:`point_mask`); a
   box the filled rectangle (:func:`box_mask`); a sketch the drawn mask (:func:`drawn_mask`);
9. ``region_resize_longest_bilinear``, 10. ``region_pad_centre_zeros``: the 0/1 mask, as uint8,
   through ``ResizeLongestSide(336)`` (PIL bilinear on a grey image; the values stay 0 or 1)
   and padded with zeros to 336 x 336 like the image in step 2, so it lies over the CLIP input;
11. ``region_grid_nearest``: ``cv2.resize(fx=fy=1/14, INTER_NEAREST)`` to the 24 x 24 patch grid:
    OpenCV's nearest neighbour takes source pixel ``floor(i * 14)``, the top-left pixel of each
    14 x 14 patch, not its centre;
12. ``region_sample_points``: the grid's non-zero cells ``(row, col)`` in row-major order divided
    by the grid's ``(height, width)`` (24, 24), at most ``max_sample_point`` 512 of them kept
    (``rand_sample``: a random permutation when there are more; seeded here), then flipped to
    ``(x, y)``. ``extract_region_feature`` samples the adapted CLIP patch features at
    ``2 * p - 1`` with ``grid_sample(align_corners=True)`` (so cell ``i`` is read at
    ``i * 23 / 24`` patch units, the authors' arithmetic) and averages them into the one
    embedding that replaces ``REGION_TOKEN_INDEX``. With no cell set (a small region on a large
    image can fall between the sampled pixels) there are no points, and the authors' mean of
    nothing becomes a zero vector (``nan_to_num``);
13. ``prompt_llava_v1``: ``<region>`` in the question becomes ``<region></region>`` (or that is
    appended after a space when the question has none); the user turn is
    ``<im_start><image><im_end>\\n{question}`` (``preprocess_multimodal`` with
    ``mm_use_im_start_end``) in the ``llava_v1`` conversation;
14. ``tokenize_image_region``: ``tokenizer_image_token`` (each chunk between ``<image>`` marks
    encoded on its own, ``IMAGE_TOKEN_INDEX`` -200 between them), then ``REGION_TOKEN_INDEX`` -300
    inserted between each adjacent ``<region>`` ``</region>`` pair
    (``LazySupervisedDataset.py`` lines 374-381, the same loop in ``model_worker.py``).

Departures: a point outside the image, a box that misses it, an empty or misshapen drawn mask,
more than one ``<region>`` and a ``</region>`` typed by the user are refused (the authors'
assertions or silent slicing); the demo's box mask, which fills rows with the box's x range
and columns with its y range (``draw`` passes ``[x1, y1, x2, y2]`` and
``generate_mask_for_feature`` indexes ``[coor[0]:coor[2]+1, coor[1]:coor[3]+1]``), is filled as
drawn; the evaluation dataset's extra step on the region grid (keep the largest 8-connected
component, grown again at random from one cell by ``generate_mask_with_sub_component``) belongs
to the dataset, not to the demo worker that takes a user's prompt, and is not applied; the
demo's display resize of the picture (``conversation_demo.py``, shortest edge 336, Lanczos)
before the worker is not applied either: this follows ``vqa_infer.py``.

Every function takes the sizes as arguments so that a reference model with a small encoder can
use, for example, ``clip_branch(rgb, size=56)`` with ``patch=14``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.base import ContractError
from models.pixel.sam import SAM_MED2D_VIT_B, sam_pad_offsets
from models.vlm.images import DisplayImage, VlmInputError
from models.vlm.splice import IMAGE_TOKEN_INDEX, tokenize_with_placeholder
from models.vlm.templates import LLAVA_V1, Template

STEPS = ("clip_resize_longest_bilinear", "clip_pad_centre_mean", "clip_rescale_1_255",
         "clip_normalise", "sam_resize_longest_bilinear", "sam_normalise",
         "sam_pad_centre_zeros", "region_mask", "region_resize_longest_bilinear",
         "region_pad_centre_zeros", "region_grid_nearest", "region_sample_points",
         "prompt_llava_v1", "tokenize_image_region")
CLIP_STEPS = STEPS[0:4]
SAM_STEPS = STEPS[4:7]
REGION_STEPS = STEPS[7:12]

CLIP_SIZE = 336  # LazySupervisedDataset.clip_img_size, ModelWorker.clip_img_size
PATCH = 14  # CLIP ViT-L/14: the 1/14 of the region grid
SAM_SIZE = 256  # --sam_img_size 256 (scripts/train_stage4.sh), ModelWorker.sam_img_size
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = tuple(SAM_MED2D_VIT_B["pixel_mean"])  # (123.675, 116.28, 103.53)
SAM_STD = tuple(SAM_MED2D_VIT_B["pixel_std"])  # (58.395, 57.12, 57.375)
RESAMPLE = Image.Resampling.BILINEAR  # torchvision resize's default on a PIL image
RESCALE_FACTOR = 1 / 255
SPAN = 20  # generate_mask_for_feature: a point is the (2 * 20 + 1)-pixel square around it
MAX_SAMPLE_POINT = 512  # --max_sample_point 512
DEFAULT_SEED = 0

REGION_TOKEN_INDEX = -300  # utils/utils.py
IMAGE_TEXT = "<image>"
IM_START = "<im_start>"
IM_END = "<im_end>"
REGION_OPEN = "<region>"
REGION_CLOSE = "</region>"
# The tokens train_ds_medplib.py adds, in its order: ADD_OTHERS_TOKENS, <gen_1>..<gen_256>, then
# (use_mm_start_end) <im_start> and <im_end>.
ADDED_TOKENS = ("<SEG>", "<ref>", "</ref>", "<region>", "</region>", "<sr>", "</sr>", "<mask>",
                "</mask>", *(f"<gen_{i}>" for i in range(1, 257)), IM_START, IM_END)

# -- the image -----------------------------------------------------------------------------

def as_rgb(image: np.ndarray | DisplayImage) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of an array or of ``read_display_image``'s result."""
    pixels = image.rgb if isinstance(image, DisplayImage) else image
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] == 3 and pixels.size > 0):
        shape = tuple(getattr(pixels, "shape", ()))
        raise VlmInputError(f"expected an (H, W, 3) uint8 image, got "
                            f"{getattr(pixels, 'dtype', '?')} {shape}")
    return np.ascontiguousarray(pixels)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: each side times ``long_side / max(h, w)``,
    rounded as ``int(x + 0.5)``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(pixels: np.ndarray, long_side: int) -> np.ndarray:
    """``ResizeLongestSide(long_side).apply_image``: a (H, W) or (H, W, 3) uint8 array resized
    with PIL bilinear to :func:`preprocess_shape`; unchanged when the size already is."""
    h, w = pixels.shape[:2]
    new_h, new_w = preprocess_shape(h, w, long_side)
    if new_h < 1 or new_w < 1:
        raise VlmInputError(f"a {w}x{h} image is too narrow: its short side would be 0 pixels "
                            f"at {long_side} on the long side")
    if (new_h, new_w) == (h, w):
        return pixels.copy()
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((new_w, new_h), RESAMPLE)
    return np.array(resized)


def pad_centre(x: torch.Tensor, size: int, fill: Sequence[float]) -> torch.Tensor:
    """``pad_tensor_channelwise``: a (C, h, w) or (h, w) tensor in a ``size`` x ``size`` one of
    its dtype, centred where :func:`sam_pad_offsets` says, the rest ``fill`` (one value per
    channel, or one value for a mask)."""
    h, w = x.shape[-2:]
    top, _, left, _ = sam_pad_offsets((h, w), size)
    out = torch.empty((*x.shape[:-2], size, size), dtype=x.dtype)
    if x.dim() == 3:
        if len(fill) != x.shape[0]:
            raise ContractError(f"{len(fill)} fill values for {x.shape[0]} channels")
        for c, value in enumerate(fill):
            out[c] = value
    else:
        out[:] = fill[0]
    out[..., top:top + h, left:left + w] = x
    return out


def clip_pad_colour(mean: Sequence[float] = CLIP_MEAN) -> tuple[int, ...]:
    """The CLIP pad colour as the authors compute it: ``mean * 255`` in float32, clamped to
    0..255, truncated to integers."""
    values = (torch.tensor(mean, dtype=torch.float32) * 255).clamp(0, 255).to(torch.int)
    return tuple(int(v) for v in values)


CLIP_PAD = clip_pad_colour(CLIP_MEAN)  # (122, 116, 104)


def clip_rescale(x: torch.Tensor) -> np.ndarray:
    """The processor's ``rescale``: uint8 ``x * (1/255)`` in float64, then float32."""
    return (x.numpy() * RESCALE_FACTOR).astype(np.float32)


def clip_normalise(x: np.ndarray, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """The processor's ``normalize`` on (3, S, S) float32: ``(x - mean) / std`` in float32."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy(((x - m) / s).astype(np.float32))


def clip_branch(rgb: np.ndarray | DisplayImage, size: int = CLIP_SIZE,
                mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
                ) -> torch.Tensor:
    """Steps 1 to 4: (3, size, size) float32, the CLIP tower's input."""
    resized = resize_longest_side(as_rgb(rgb), size)
    square = pad_centre(torch.from_numpy(resized).permute(2, 0, 1).contiguous(), size,
                        clip_pad_colour(mean))
    return clip_normalise(clip_rescale(square), mean, std)


def sam_normalise(x: torch.Tensor, mean: Sequence[float] = SAM_MEAN,
                  std: Sequence[float] = SAM_STD) -> torch.Tensor:
    """uint8 (3, h, w) to float32 ``(x - mean) / std`` on the 0-255 scale."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def sam_branch(rgb: np.ndarray | DisplayImage, size: int = SAM_SIZE
               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Steps 5 to 7: the (3, size, size) float32 SAM-Med2D input and the resized ``(h, w)``
    (the authors' ``resize_list`` entry, ``postprocess_masks``'s ``input_size``)."""
    resized = resize_longest_side(as_rgb(rgb), size)
    x = sam_normalise(torch.from_numpy(resized).permute(2, 0, 1).contiguous())
    return pad_centre(x, size, (0.0, 0.0, 0.0)), (resized.shape[0], resized.shape[1])


# -- the region ----------------------------------------------------------------------------

def _shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape[:2])
    except (TypeError, ValueError) as exc:
        raise ContractError(f"an image shape is (height, width), not {shape!r}") from exc
    if h < 1 or w < 1:
        raise ContractError(f"an image shape needs positive sides, not {(h, w)}")
    return h, w


def point_mask(x: float, y: float, shape: Sequence[int], span: int = SPAN) -> np.ndarray:
    """(H, W) uint8: ones on the ``2 * span + 1`` square around the point (x, y) (column, row,
    in pixels), clipped to the image. The authors' bounds are ``int(max(0, c - span))`` and
    ``int(min(side, c + span + 1))``, so a fractional coordinate counts as the pixel that holds
    it (its floor): the square is centred on pixel ``(floor(y), floor(x))``."""
    h, w = _shape(shape)
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < w and 0 <= y < h):
        raise VlmInputError(f"the point ({x}, {y}) is outside the {w}x{h} image")
    col, row = math.floor(x), math.floor(y)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[max(0, row - span):min(h, row + span + 1), max(0, col - span):min(w, col + span + 1)] = 1
    return mask


def box_mask(x: float, y: float, width: float, height: float, shape: Sequence[int]
             ) -> np.ndarray:
    """(H, W) uint8: ones on the box (x, y, width, height) in pixels, clipped to the image.
    Every pixel the box overlaps is filled: columns ``floor(x)`` to ``ceil(x + width)``
    (exclusive), rows likewise, and at least one of each, so a box of whole pixels fills exactly
    ``width * height`` pixels and a zero-width box one column (the authors' corners are
    inclusive pixel indices: ``x2 = x1`` fills one column)."""
    h, w = _shape(shape)
    values = (x, y, width, height)
    if not all(math.isfinite(v) for v in values) or width < 0 or height < 0:
        raise VlmInputError(f"a box is (x, y, width, height) with sizes >= 0, not {values}")
    left, top = math.floor(x), math.floor(y)
    right = max(math.ceil(x + width), left + 1)
    bottom = max(math.ceil(y + height), top + 1)
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if left >= right or top >= bottom:
        raise VlmInputError(f"the box {values} is outside the {w}x{h} image")
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def drawn_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A drawn (H, W) mask as uint8 0/1 (``> 0`` is inside), refused unless it is two
    dimensional, of the image's shape, numeric and not empty."""
    h, w = _shape(shape)
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape != (h, w):
        raise VlmInputError(f"the drawn mask is {tuple(m.shape)}, the image (height, width) is "
                            f"{(h, w)}: a region mask must have the image's shape")
    if not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
        raise VlmInputError(f"the drawn mask holds {m.dtype}, not numbers")
    binary = (m > 0).astype(np.uint8)
    if not binary.any():
        raise VlmInputError("the drawn mask is empty: nothing is marked")
    return binary


def nearest_downsample(a: np.ndarray, factor: float) -> np.ndarray:
    """``cv2.resize(a, None, fx=factor, fy=factor, interpolation=INTER_NEAREST)``: the size is
    ``cvRound(side * factor)`` and output pixel ``i`` is source pixel
    ``min(floor(i * (1 / factor)), side - 1)``."""
    h, w = a.shape[:2]
    inv = 1.0 / factor
    rows = [min(math.floor(i * inv), h - 1) for i in range(round(h * factor))]
    cols = [min(math.floor(j * inv), w - 1) for j in range(round(w * factor))]
    return a[np.ix_(rows, cols)]


def region_grid(mask: np.ndarray, size: int = CLIP_SIZE, patch: int = PATCH) -> np.ndarray:
    """Steps 9 to 11: an (H, W) 0/1 mask over the image to the (size/patch)-square uint8 grid
    of the CLIP patch features."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ContractError(f"a region mask is (height, width), not {tuple(m.shape)}")
    resized = resize_longest_side((m > 0).astype(np.uint8), size)
    padded = pad_centre(torch.from_numpy(resized), size, (0,)).numpy()
    return nearest_downsample(padded, 1 / patch)


def grid_points(grid: np.ndarray, max_points: int = MAX_SAMPLE_POINT,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Step 12 on a grid: (N, 2) float32 ``(x, y)`` = ``(col / width, row / height)`` of its
    non-zero cells, row-major; when there are more than ``max_points``, a random
    ``max_points`` of them (``torch.randperm`` with ``generator``, seeded ``DEFAULT_SEED``
    when none is given)."""
    cells = torch.from_numpy(np.ascontiguousarray(grid)).nonzero()
    points = cells / torch.tensor([grid.shape[0], grid.shape[1]])[None]
    if points.shape[0] > max_points:
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_SEED)
        points = points[torch.randperm(points.shape[0], generator=generator)[:max_points]]
    return points.flip(dims=(1,)).to(torch.float32)


def sample_region_points(mask: np.ndarray, max_points: int = MAX_SAMPLE_POINT,
                         generator: torch.Generator | None = None, size: int = CLIP_SIZE,
                         patch: int = PATCH) -> torch.Tensor:
    """Steps 9 to 12: an (H, W) region mask over the image to the (N, 2) points in [0, 1)
    where ``extract_region_feature`` reads the CLIP patch features; N may be 0 (a region too
    small to cover a sampled pixel of the grid), which the authors turn into a zero feature."""
    return grid_points(region_grid(mask, size, patch), max_points, generator)


# -- the text ------------------------------------------------------------------------------

def format_region_prompt(question: str, has_region: bool) -> str:
    """The question with the region written as the model saw it: ``<region>`` becomes
    ``<region></region>``; with a region and no ``<region>`` in the question it is appended
    after a space, at the end of the user's turn (``format_region_prompt``'s auto-fill)."""
    count = question.count(REGION_OPEN)
    if REGION_CLOSE in question:
        raise VlmInputError(f"write the region as {REGION_OPEN} alone, not {REGION_CLOSE}")
    if count > 1:
        raise VlmInputError(f"MedPLIB takes one region per question; {REGION_OPEN} appears "
                            f"{count} times")
    if not has_region:
        if count:
            raise VlmInputError(f"the question refers to {REGION_OPEN} but no point, box or "
                                "mask was given")
        return question
    pair = REGION_OPEN + REGION_CLOSE
    return question.replace(REGION_OPEN, pair) if count else f"{question} {pair}"


def user_message(question: str, region: bool = False) -> str:
    """The user's turn: ``<im_start><image><im_end>\\n`` and the question (``<image>`` removed
    and stripped, as ``preprocess_multimodal`` does), its region formatted."""
    text = question.replace(IMAGE_TEXT, "").strip()
    if not text:
        raise VlmInputError("the question is empty")
    return f"{IM_START}{IMAGE_TEXT}{IM_END}\n{format_region_prompt(text, region)}"


def build_prompt(question: str, region: bool = False, template: Template = LLAVA_V1) -> str:
    """The whole prompt, ending ``ASSISTANT:``: ``{system} USER: <im_start><image><im_end>\\n
    {question} ASSISTANT:``. ``VICUNA_V1`` gives ``vqa_infer.py``'s system text instead."""
    return template.render(user_message(question, region))


def _single_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ContractError(f"the tokenizer splits {text} into {len(ids)} tokens; it needs "
                            "MedPLIB's added tokens")
    return int(ids[0])


def tokenize_with_region(prompt: str, tokenizer: Any) -> list[int]:
    """Step 14: ids with ``IMAGE_TOKEN_INDEX`` (-200) where ``<image>`` stands and
    ``REGION_TOKEN_INDEX`` (-300) between each ``<region>`` and the ``</region>`` that follows
    it."""
    ids = tokenize_with_placeholder(prompt, tokenizer, IMAGE_TEXT, IMAGE_TOKEN_INDEX)
    if REGION_OPEN not in prompt:
        return ids
    opening, closing = _single_id(tokenizer, REGION_OPEN), _single_id(tokenizer, REGION_CLOSE)
    out: list[int] = []
    for i, token in enumerate(ids):
        out.append(token)
        if token == opening and i + 1 < len(ids) and ids[i + 1] == closing:
            out.append(REGION_TOKEN_INDEX)
    expected = prompt.count(REGION_OPEN + REGION_CLOSE)
    if out.count(REGION_TOKEN_INDEX) != expected:
        raise ContractError(f"{expected} region pair(s) in the prompt but "
                            f"{out.count(REGION_TOKEN_INDEX)} in its tokens")
    return out
