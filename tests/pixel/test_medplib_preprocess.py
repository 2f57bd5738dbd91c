"""MedPLIB's input preparation (models/pixel/preprocess.py): the CLIP and SAM branches on
non-square images, the region prompt masks, the region points on the CLIP patch grid, and the
prompt text and its tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from models.base import ContractError
from models.pixel import preprocess as mp
from models.pixel.sam import SAM_MED2D_VIT_B, sam_pad_offsets
from models.vlm.images import DisplayImage, VlmInputError
from models.vlm.reference import reference_tokenizer
from models.vlm.templates import VICUNA_V1

COLOUR = (200, 10, 50)


def constant(h: int, w: int, colour: tuple[int, int, int] = COLOUR) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def clip_value(colour: tuple[int, ...]) -> torch.Tensor:
    """One colour through the processor's rescale and normalise, (3,)."""
    x = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    return mp.clip_normalise(mp.clip_rescale(x))[:, 0, 0]


def test_steps_name_every_stage_once():
    assert len(set(mp.STEPS)) == len(mp.STEPS)
    assert mp.CLIP_STEPS + mp.SAM_STEPS + mp.REGION_STEPS == mp.STEPS[:12]
    assert mp.STEPS[-2:] == ("prompt_llava_v1", "tokenize_image_region")


# -- shared geometry -------------------------------------------------------------------------

def test_longest_side_rounds_half_up_like_resize_longest_side():
    assert mp.preprocess_shape(200, 300, 336) == (224, 336)
    assert mp.preprocess_shape(200, 300, 256) == (171, 256)  # 170.67 + 0.5
    assert mp.preprocess_shape(199, 301, 256) == (169, 256)
    assert mp.preprocess_shape(1, 3, 2) == (1, 2)  # 0.667 + 0.5


def test_resize_is_pil_bilinear_not_bicubic():
    rgb = noise(200, 300)
    out = mp.resize_longest_side(rgb, 256)
    pil = Image.fromarray(rgb)
    assert np.array_equal(out, np.asarray(pil.resize((256, 171), Image.Resampling.BILINEAR)))
    assert not np.array_equal(out, np.asarray(pil.resize((256, 171), Image.Resampling.BICUBIC)))


def test_an_image_already_at_size_is_not_resampled():
    rgb = noise(336, 200)
    assert np.array_equal(mp.resize_longest_side(rgb, 336), rgb)


def test_an_image_too_narrow_to_resize_is_refused():
    with pytest.raises(VlmInputError, match="too narrow"):
        mp.clip_branch(constant(1, 2000))


def test_only_rgb_uint8_is_accepted():
    with pytest.raises(VlmInputError, match="uint8"):
        mp.clip_branch(np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(VlmInputError, match="uint8"):
        mp.sam_branch(np.zeros((20, 30, 3), dtype=np.float32))


def test_display_images_are_accepted():
    rgb = noise(40, 60)
    image = DisplayImage(rgb, 60, 40)
    assert torch.equal(mp.clip_branch(image, size=56), mp.clip_branch(rgb, size=56))
    assert torch.equal(mp.sam_branch(image, size=64)[0], mp.sam_branch(rgb, size=64)[0])


# -- CLIP branch ----------------------------------------------------------------------------

def test_clip_pad_colour_is_the_truncated_mean():
    assert mp.clip_pad_colour() == (122, 116, 104)
    assert mp.CLIP_PAD == (122, 116, 104)


def test_clip_wide_image_is_centred_between_mean_coloured_bands():
    x = mp.clip_branch(constant(200, 300))  # 300 wide, 200 high: resized to 336 x 224
    assert x.shape == (3, 336, 336) and x.dtype == torch.float32
    pad = clip_value(mp.CLIP_PAD)
    assert pad.abs().max() < 0.02  # the mean colour, to 8 bits
    image = clip_value(COLOUR)
    assert torch.equal(x[:, :56], pad.view(3, 1, 1).expand(3, 56, 336))
    assert torch.equal(x[:, 280:], pad.view(3, 1, 1).expand(3, 56, 336))
    assert torch.equal(x[:, 56:280], image.view(3, 1, 1).expand(3, 224, 336))


def test_clip_tall_image_is_centred_between_mean_coloured_bands():
    x = mp.clip_branch(constant(300, 200))
    pad = clip_value(mp.CLIP_PAD).view(3, 1, 1)
    assert torch.equal(x[:, :, :56], pad.expand(3, 336, 56))
    assert torch.equal(x[:, :, 280:], pad.expand(3, 336, 56))
    assert torch.equal(x[:, :, 56:280], clip_value(COLOUR).view(3, 1, 1).expand(3, 336, 224))


def test_clip_odd_padding_puts_the_extra_row_at_the_bottom():
    x = mp.clip_branch(constant(201, 336))  # no resize; 135 rows of padding: 67 above, 68 below
    pad = clip_value(mp.CLIP_PAD).view(3, 1, 1)
    assert torch.equal(x[:, :67], pad.expand(3, 67, 336))
    assert torch.equal(x[:, 268:], pad.expand(3, 68, 336))
    assert torch.equal(x[:, 67:268], clip_value(COLOUR).view(3, 1, 1).expand(3, 201, 336))


def test_clip_image_part_is_the_bilinear_resize_normalised():
    rgb = noise(200, 300, seed=3)
    x = mp.clip_branch(rgb)
    resized = np.array(Image.fromarray(rgb).resize((336, 224), Image.Resampling.BILINEAR))
    expected = mp.clip_normalise(mp.clip_rescale(torch.from_numpy(resized).permute(2, 0, 1)))
    assert torch.equal(x[:, 56:280], expected)


def test_clip_branch_matches_the_clip_image_processor_on_the_padded_square():
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    if processor_class is None:
        pytest.skip("this transformers has no PIL CLIP image processor")
    processor = processor_class(size={"shortest_edge": 336},
                                crop_size={"height": 336, "width": 336},
                                image_mean=list(mp.CLIP_MEAN), image_std=list(mp.CLIP_STD))
    rgb = noise(200, 300, seed=4)
    resized = torch.from_numpy(mp.resize_longest_side(rgb, 336)).permute(2, 0, 1).contiguous()
    square = mp.pad_centre(resized, 336, mp.CLIP_PAD)
    expected = processor.preprocess(square, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(mp.clip_branch(rgb), expected)


# -- SAM branch -----------------------------------------------------------------------------

@pytest.mark.parametrize(("h", "w", "input_size"), [
    (200, 300, (171, 256)), (300, 200, (256, 171)), (199, 301, (169, 256)),
    (301, 199, (256, 169)), (256, 256, (256, 256))])
def test_sam_input_size_and_centred_zero_padding(h, w, input_size):
    x, size = mp.sam_branch(constant(h, w))
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert size == input_size
    top, bottom, left, right = sam_pad_offsets(size, 256)
    inside = torch.zeros(256, 256, dtype=torch.bool)
    inside[top:256 - bottom, left:256 - right] = True
    assert int(inside.sum()) == size[0] * size[1]
    assert torch.count_nonzero(x[:, ~inside]) == 0  # zeros after normalising
    mean = torch.tensor(mp.SAM_MEAN).view(3, 1)
    std = torch.tensor(mp.SAM_STD).view(3, 1)
    expected = (torch.tensor(COLOUR, dtype=torch.float32).view(3, 1) - mean) / std
    assert torch.equal(x[:, inside], expected.expand(3, size[0] * size[1]))


def test_sam_odd_padding_matches_the_offsets_postprocess_masks_takes_off():
    _, size = mp.sam_branch(constant(199, 301))
    assert sam_pad_offsets(size, 256) == (43, 44, 0, 0)


def test_sam_constants_are_sam_med2d_s():
    assert mp.SAM_MEAN == (123.675, 116.28, 103.53) == tuple(SAM_MED2D_VIT_B["pixel_mean"])
    assert mp.SAM_STD == (58.395, 57.12, 57.375) == tuple(SAM_MED2D_VIT_B["pixel_std"])


# -- region masks ---------------------------------------------------------------------------

def bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_point_mask_is_a_41_pixel_square_in_the_interior():
    m = mp.point_mask(100, 80, (200, 300))
    assert m.dtype == np.uint8 and m.shape == (200, 300)
    assert int(m.sum()) == 41 * 41
    assert bounds(m) == (60, 100, 80, 120)  # rows around y, columns around x


def test_point_mask_fractional_coordinates_take_the_pixel_that_holds_them():
    shape = (200, 300)
    assert np.array_equal(mp.point_mask(100.7, 80.2, shape), mp.point_mask(100, 80, shape))


def test_point_mask_is_clipped_at_the_borders():
    corner = mp.point_mask(0, 0, (200, 300))
    assert int(corner.sum()) == 21 * 21 and bounds(corner) == (0, 20, 0, 20)
    far = mp.point_mask(299, 199, (200, 300))
    assert int(far.sum()) == 21 * 21 and bounds(far) == (179, 199, 279, 299)


@pytest.mark.parametrize("point", [(300, 10), (10, 200), (-0.5, 3), (math.nan, 3)])
def test_point_outside_the_image_is_refused(point):
    with pytest.raises(VlmInputError, match="outside"):
        mp.point_mask(*point, (200, 300))


def test_box_mask_fills_the_box():
    m = mp.box_mask(10, 20, 30, 40, (200, 300))
    assert int(m.sum()) == 30 * 40 and bounds(m) == (20, 59, 10, 39)


def test_box_mask_fills_every_pixel_a_fractional_box_overlaps():
    m = mp.box_mask(10.5, 20.2, 30, 40, (200, 300))
    assert bounds(m) == (20, 60, 10, 40) and int(m.sum()) == 41 * 31


def test_box_mask_is_clipped_and_a_zero_size_box_is_one_pixel():
    assert int(mp.box_mask(290, 190, 50, 50, (200, 300)).sum()) == 100
    assert bounds(mp.box_mask(5, 6, 0, 0, (200, 300))) == (6, 6, 5, 5)
    with pytest.raises(VlmInputError, match="outside"):
        mp.box_mask(300, 10, 5, 5, (200, 300))
    with pytest.raises(VlmInputError, match="sizes"):
        mp.box_mask(10, 10, -1, 5, (200, 300))


def test_drawn_mask_is_returned_binary():
    drawn = np.zeros((200, 300), dtype=bool)
    drawn[5:9, 7:12] = True
    m = mp.drawn_mask(drawn, (200, 300))
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and int(m.sum()) == 20
    assert np.array_equal(mp.drawn_mask(drawn * 255, (200, 300)), m)


def test_drawn_mask_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(300, 200\).*\(200, 300\).*shape"):
        mp.drawn_mask(np.ones((300, 200), dtype=np.uint8), (200, 300))
    with pytest.raises(ValueError, match="shape"):
        mp.drawn_mask(np.ones((200, 300, 3), dtype=np.uint8), (200, 300))


def test_empty_drawn_mask_is_refused():
    with pytest.raises(VlmInputError, match="empty"):
        mp.drawn_mask(np.zeros((200, 300), dtype=np.uint8), (200, 300))


# -- region points --------------------------------------------------------------------------

def test_on_a_336_image_the_grid_is_the_top_left_pixel_of_each_patch():
    mask = np.random.default_rng(5).random((336, 336)) > 0.7
    grid = mp.region_grid(mask)
    assert grid.shape == (24, 24)
    assert np.array_equal(grid, mask[::14, ::14].astype(np.uint8))


def test_points_are_x_y_of_the_grid_cells_over_the_grid_size():
    mask = np.zeros((336, 336), dtype=np.uint8)
    mask[70, 98] = 1  # patch row 5, column 7, at its top-left pixel
    mask[14 * 20, 14 * 2] = 1
    points = mp.sample_region_points(mask)
    assert points.dtype == torch.float32
    assert torch.equal(points, torch.tensor([[7 / 24, 5 / 24], [2 / 24, 20 / 24]]))


def test_a_one_pixel_region_between_sampled_pixels_gives_no_points():
    mask = np.zeros((336, 336), dtype=np.uint8)
    mask[71, 98] = 1
    points = mp.sample_region_points(mask)
    assert points.shape == (0, 2)


def test_a_point_on_a_large_image_can_miss_every_sampled_pixel():
    # 3000 px to 336: the 41-pixel square shrinks to about 5 pixels, rows 158..163, between the
    # sampled rows 154 and 168; the authors' region feature is then a zero vector
    mask = mp.point_mask(1437, 1437, (3000, 3000))
    assert mp.sample_region_points(mask).shape == (0, 2)


def test_region_grid_follows_the_clip_padding_of_a_wide_image():
    points = mp.sample_region_points(np.ones((200, 300), dtype=np.uint8))
    # resized to 224 x 336 and placed at rows 56..279 of the square: patch rows 4..19
    rows = sorted({round(float(y) * 24) for y in points[:, 1]})
    cols = sorted({round(float(x) * 24) for x in points[:, 0]})
    assert rows == list(range(4, 20)) and cols == list(range(24))
    assert points.shape == (16 * 24, 2)


def test_region_grid_follows_the_clip_padding_of_a_tall_image():
    points = mp.sample_region_points(np.ones((300, 200), dtype=np.uint8))
    cols = sorted({round(float(x) * 24) for x in points[:, 0]})
    assert cols == list(range(4, 20)) and points.shape == (16 * 24, 2)


@pytest.mark.parametrize(("h", "w"), [(200, 300), (300, 200), (480, 333)])
def test_points_map_back_inside_the_mask(h, w):
    top, left, bottom, right = h // 5, w // 3, h // 5 + h // 2, w // 3 + w // 3
    mask = mp.box_mask(left, top, right - left, bottom - top, (h, w))
    points = mp.sample_region_points(mask)
    assert 0 < points.shape[0] <= 512
    assert float(points.min()) >= 0 and float(points.max()) < 1
    new_h, new_w = mp.preprocess_shape(h, w, 336)
    pad_top, _, pad_left, _ = sam_pad_offsets((new_h, new_w), 336)
    for x, y in points.tolist():
        r, c = round(y * 24) * 14 - pad_top, round(x * 24) * 14 - pad_left
        assert 0 <= r < new_h and 0 <= c < new_w
        oy, ox = (r + 0.5) * h / new_h - 0.5, (c + 0.5) * w / new_w - 0.5  # pixel centres
        assert top - 1 <= oy <= bottom and left - 1 <= ox <= right


def test_at_most_512_points_deterministic_with_the_seed():
    mask = np.ones((336, 336), dtype=np.uint8)  # all 576 cells
    a = mp.sample_region_points(mask, generator=torch.Generator().manual_seed(7))
    b = mp.sample_region_points(mask, generator=torch.Generator().manual_seed(7))
    c = mp.sample_region_points(mask, generator=torch.Generator().manual_seed(8))
    assert a.shape == (512, 2) and torch.equal(a, b) and not torch.equal(a, c)
    cells = {(round(x * 24), round(y * 24)) for x, y in a.tolist()}
    assert len(cells) == 512 and all(0 <= i < 24 and 0 <= j < 24 for i, j in cells)
    assert torch.equal(mp.sample_region_points(mask), mp.sample_region_points(mask))
    assert mp.sample_region_points(mask, max_points=10).shape == (10, 2)


def test_a_41_pixel_point_on_a_small_image_covers_grid_cells():
    mask = mp.point_mask(150, 100, (200, 300))
    points = mp.sample_region_points(mask)
    assert 4 <= points.shape[0] <= 16


# -- prompt and tokens ----------------------------------------------------------------------

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The "
          "assistant gives helpful, detailed, and polite answers to the human's questions.")


def test_build_prompt_renders_the_llava_v1_conversation():
    assert mp.build_prompt("What is the modality of this image?") == (
        SYSTEM + " USER: <im_start><image><im_end>\nWhat is the modality of this image? "
        "ASSISTANT:")


def test_build_prompt_formats_the_region_in_place():
    assert mp.build_prompt("Can you describe the area <region>?", region=True) == (
        SYSTEM + " USER: <im_start><image><im_end>\nCan you describe the area "
        "<region></region>? ASSISTANT:")


def test_build_prompt_appends_a_region_the_question_does_not_name():
    assert mp.build_prompt("  Describe this area. <image>", region=True) == (
        SYSTEM + " USER: <im_start><image><im_end>\nDescribe this area. <region></region> "
        "ASSISTANT:")


def test_build_prompt_with_vqa_infer_s_template():
    assert mp.build_prompt("Is there a tumour?", template=VICUNA_V1) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: "
        "<im_start><image><im_end>\nIs there a tumour? ASSISTANT:")


@pytest.mark.parametrize(("question", "region", "message"), [
    ("What is <region>?", False, "no point"),
    ("<region> and <region>?", True, "one region"),
    ("What is <region></region>?", True, "alone"),
    ("   ", False, "empty"),
])
def test_malformed_region_questions_are_refused(question, region, message):
    with pytest.raises(VlmInputError, match=message):
        mp.build_prompt(question, region=region)


CORPUS = [SYSTEM, "USER: ASSISTANT: Can you describe the area? What is the modality?",
          "Describe the visual features of the liver."]


@pytest.fixture(scope="module")
def tok():
    special = ["<unk>", *(t for t in mp.ADDED_TOKENS if not t.startswith("<gen_"))]
    return reference_tokenizer(CORPUS, special, bos="<s>", eos="</s>", pad="<unk>",
                               vocab_size=400)


def test_tokens_carry_the_image_and_region_placeholders(tok):
    prompt = mp.build_prompt("Can you describe the area <region>?", region=True)
    ids = mp.tokenize_with_region(prompt, tok)
    assert ids.count(mp.IMAGE_TOKEN_INDEX) == 1 and ids.count(mp.REGION_TOKEN_INDEX) == 1
    image, region = ids.index(mp.IMAGE_TOKEN_INDEX), ids.index(mp.REGION_TOKEN_INDEX)
    token = tok.convert_tokens_to_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[image - 1] == token("<im_start>") and ids[image + 1] == token("<im_end>")
    assert ids[region - 1] == token("<region>") and ids[region + 1] == token("</region>")
    before, after = prompt.split("<image>")
    tail = tok(after).input_ids[1:]
    k = tail.index(token("<region>")) + 1
    assert ids == tok(before).input_ids + [mp.IMAGE_TOKEN_INDEX] + tail[:k] \
        + [mp.REGION_TOKEN_INDEX] + tail[k:]


def test_tokens_without_a_region_have_no_region_placeholder(tok):
    ids = mp.tokenize_with_region(mp.build_prompt("What is the modality?"), tok)
    assert ids.count(mp.IMAGE_TOKEN_INDEX) == 1 and mp.REGION_TOKEN_INDEX not in ids


def test_a_tokenizer_without_the_region_tokens_is_refused():
    plain = reference_tokenizer(CORPUS, ["<unk>", "<im_start>", "<im_end>"], bos="<s>",
                                eos="</s>", pad="<unk>", vocab_size=400)
    with pytest.raises(ContractError, match="added tokens"):
        mp.tokenize_with_region(mp.build_prompt("Describe <region>.", region=True), plain)
