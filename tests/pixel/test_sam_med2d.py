"""SAM-Med2D ViT-B (MedPLIB's pixel decoder): the published tree, strict round trips, the
reference forward and the centred-padding crop.

The expected key table is taken from MedPLIB's ``model/segment_anything_med2d`` (commit 9c3efe9):
``build_sam_vit_b(image_size=256, encoder_adapter=True)``, ``modeling/image_encoder.py``
(``Block`` with ``Adapter``), ``prompt_encoder.py``, ``mask_decoder.py``, ``transformer.py`` and
``sam_model.py`` (``pixel_mean`` / ``pixel_std`` registered with ``persistent=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models.base import ContractError
from models.pixel.sam import (
    SAM_MED2D_VIT_B,
    SAM_REFERENCE,
    SamMed2D,
    build_sam_med2d,
    postprocess_masks,
    postprocess_masks_as_medplib,
    sam_pad_offsets,
)

PUBLISHED_KEYS = 386
PUBLISHED_PARAMS = 271_241_776  # parameters; the state dict adds the 2x128 Gaussian PE buffer
PUBLISHED_STATE_ELEMENTS = PUBLISHED_PARAMS + 2 * 128


def _wb(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def authors_key_table(depth: int, decoder_depth: int, mask_tokens: int) -> set[str]:
    """Every state-dict key of the authors' ``Sam`` built by ``build_sam_vit_b``."""
    keys = ["image_encoder.pos_embed", *_wb("image_encoder.patch_embed.proj")]
    for i in range(depth):
        b = f"image_encoder.blocks.{i}"
        keys += [*_wb(f"{b}.norm1"), f"{b}.attn.rel_pos_h", f"{b}.attn.rel_pos_w",
                 *_wb(f"{b}.attn.qkv"), *_wb(f"{b}.attn.proj"), *_wb(f"{b}.norm2"),
                 *_wb(f"{b}.mlp.lin1"), *_wb(f"{b}.mlp.lin2"), *_wb(f"{b}.Adapter.norm"),
                 f"{b}.Adapter.channel.0.weight", f"{b}.Adapter.channel.2.weight",
                 f"{b}.Adapter.spatial.0.weight", f"{b}.Adapter.spatial.2.weight"]
    keys += ["image_encoder.neck.0.weight", *_wb("image_encoder.neck.1"),
             "image_encoder.neck.2.weight", *_wb("image_encoder.neck.3")]

    p = "prompt_encoder"
    keys += [f"{p}.pe_layer.positional_encoding_gaussian_matrix",
             *(f"{p}.point_embeddings.{i}.weight" for i in range(4)),
             f"{p}.not_a_point_embed.weight", f"{p}.no_mask_embed.weight"]
    for i in (0, 1, 3, 4, 6):
        keys += _wb(f"{p}.mask_downscaling.{i}")

    d = "mask_decoder"

    def attn(prefix: str) -> list[str]:
        return [k for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
                for k in _wb(f"{prefix}.{proj}")]

    for i in range(decoder_depth):
        layer = f"{d}.transformer.layers.{i}"
        keys += attn(f"{layer}.self_attn") + attn(f"{layer}.cross_attn_token_to_image")
        keys += attn(f"{layer}.cross_attn_image_to_token")
        keys += [k for n in ("norm1", "norm2", "norm3", "norm4", "mlp.lin1", "mlp.lin2")
                 for k in _wb(f"{layer}.{n}")]
    keys += attn(f"{d}.transformer.final_attn_token_to_image")
    keys += _wb(f"{d}.transformer.norm_final_attn")
    keys += [f"{d}.iou_token.weight", f"{d}.mask_tokens.weight"]
    keys += _wb(f"{d}.output_upscaling.0") + _wb(f"{d}.output_upscaling.1")
    keys += _wb(f"{d}.output_upscaling.3")
    for t in range(mask_tokens):
        for j in range(3):
            keys += _wb(f"{d}.output_hypernetworks_mlps.{t}.layers.{j}")
    for j in range(3):
        keys += _wb(f"{d}.iou_prediction_head.layers.{j}")
    assert len(keys) == len(set(keys))
    return set(keys)


# Shapes read off the authors' modules for build_sam_vit_b(image_size=256).
PUBLISHED_SHAPES = {
    "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
    "image_encoder.pos_embed": (1, 16, 16, 768),
    "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
    "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # window 14
    "image_encoder.blocks.2.attn.rel_pos_w": (31, 64),  # global, 16x16 grid
    "image_encoder.blocks.11.attn.rel_pos_h": (31, 64),
    "image_encoder.blocks.0.mlp.lin1.weight": (3072, 768),
    "image_encoder.blocks.0.Adapter.channel.0.weight": (192, 768),
    "image_encoder.blocks.0.Adapter.channel.2.weight": (768, 192),
    "image_encoder.blocks.0.Adapter.spatial.0.weight": (768, 768, 3, 3),
    "image_encoder.blocks.0.Adapter.spatial.2.weight": (768, 768, 4, 4),
    "image_encoder.blocks.5.Adapter.norm.weight": (768,),
    "image_encoder.neck.0.weight": (256, 768, 1, 1),
    "image_encoder.neck.2.weight": (256, 256, 3, 3),
    "image_encoder.neck.3.bias": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "prompt_encoder.point_embeddings.3.weight": (1, 256),
    "prompt_encoder.no_mask_embed.weight": (1, 256),
    "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
    "prompt_encoder.mask_downscaling.3.weight": (16, 4, 2, 2),
    "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
    "mask_decoder.iou_token.weight": (1, 256),
    "mask_decoder.mask_tokens.weight": (4, 256),
    "mask_decoder.transformer.layers.0.self_attn.q_proj.weight": (256, 256),
    "mask_decoder.transformer.layers.1.cross_attn_token_to_image.k_proj.weight": (128, 256),
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight": (256, 128),
    "mask_decoder.transformer.layers.0.mlp.lin1.weight": (2048, 256),
    "mask_decoder.transformer.final_attn_token_to_image.v_proj.weight": (128, 256),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
    "mask_decoder.output_upscaling.1.weight": (64,),
    "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
    "mask_decoder.iou_prediction_head.layers.0.weight": (256, 256),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
}


def _meta_published() -> SamMed2D:
    with torch.device("meta"):
        return build_sam_med2d(SAM_MED2D_VIT_B)


def _reference(seed: int) -> SamMed2D:
    torch.manual_seed(seed)
    model = SamMed2D(SAM_REFERENCE).eval()
    with torch.no_grad():  # the authors start these at zero; make them matter in the tests
        for name, p in model.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0.0, 0.5)
    return model


def _resized(original: tuple[int, int], image_size: int) -> tuple[int, int]:
    """ResizeLongestSide's output size."""
    scale = image_size / max(original)
    return int(original[0] * scale + 0.5), int(original[1] * scale + 0.5)


# ---------------------------------------------------------------- the published tree


def test_published_tree_has_the_authors_keys_and_size():
    model = _meta_published()
    state = model.state_dict()
    cfg = SAM_MED2D_VIT_B
    assert len(state) == PUBLISHED_KEYS
    assert set(state) == authors_key_table(cfg["depth"], cfg["decoder_depth"],
                                           cfg["num_multimask_outputs"] + 1)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS
    assert sum(t.numel() for t in state.values()) == PUBLISHED_STATE_ELEMENTS
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_published_config_values():
    cfg = SAM_MED2D_VIT_B
    assert (cfg["image_size"], cfg["patch_size"], cfg["embed_dim"], cfg["depth"],
            cfg["num_heads"]) == (256, 16, 768, 12, 12)
    assert tuple(cfg["global_attn_indexes"]) == (2, 5, 8, 11) and cfg["window_size"] == 14
    assert cfg["encoder_adapter"] and cfg["out_chans"] == cfg["prompt_embed_dim"] == 256
    assert (cfg["decoder_depth"], cfg["decoder_mlp_dim"], cfg["decoder_num_heads"]) == (2, 2048,
                                                                                        8)
    assert (cfg["num_multimask_outputs"], cfg["iou_head_depth"],
            cfg["iou_head_hidden_dim"]) == (3, 3, 256)


def test_pixel_statistics_are_buffers_outside_the_state_dict():
    model = _meta_published()
    buffers = dict(model.named_buffers())
    assert {"pixel_mean", "pixel_std"} <= set(buffers)
    assert tuple(buffers["pixel_mean"].shape) == (3, 1, 1)
    assert "pixel_mean" not in model.state_dict() and "pixel_std" not in model.state_dict()
    ref = SamMed2D(SAM_REFERENCE)
    assert torch.allclose(ref.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    assert torch.allclose(ref.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))


def test_reference_tree_follows_the_same_table():
    cfg = SAM_REFERENCE
    state = SamMed2D(cfg).state_dict()
    assert set(state) == authors_key_table(cfg["depth"], cfg["decoder_depth"],
                                           cfg["num_multimask_outputs"] + 1)


def test_bad_configs_are_refused():
    for bad in ({**SAM_REFERENCE, "typo": 1},
                {k: v for k, v in SAM_REFERENCE.items() if k != "window_size"},
                {**SAM_REFERENCE, "image_size": 48},  # 3x3 grid: the adapter needs it even
                {**SAM_REFERENCE, "out_chans": 16}):
        try:
            SamMed2D(bad)
        except ContractError:
            continue
        raise AssertionError(f"accepted {bad}")


# ---------------------------------------------------------------- round trip and forward


def test_strict_safetensors_round_trip(tmp_path):
    first, second = _reference(0), _reference(1)
    path = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(path))
    result = second.load_state_dict(load_file(str(path)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    torch.manual_seed(2)
    images = torch.randn(2, 3, SAM_REFERENCE["image_size"], SAM_REFERENCE["image_size"])
    text = torch.randn(2, 1, SAM_REFERENCE["prompt_embed_dim"])
    with torch.no_grad():
        a = first.masks_from_text(first.image_embeddings(images), text)
        b = second.masks_from_text(second.image_embeddings(images), text)
    assert torch.equal(a, b)


def test_reference_forward_shapes_and_postprocess_to_original_sizes():
    model = _reference(0)
    size = SAM_REFERENCE["image_size"]
    side = size // SAM_REFERENCE["patch_size"]
    torch.manual_seed(3)
    images = torch.randn(2, 3, size, size)
    text = torch.randn(2, 1, SAM_REFERENCE["prompt_embed_dim"])
    with torch.no_grad():
        emb = model.image_embeddings(images)
        low, iou = model.masks_and_scores_from_text(emb, text)
        low2 = model.masks_from_text(emb, text[:, 0])  # [B, D] taken as [B, 1, D]
    assert emb.shape == (2, SAM_REFERENCE["out_chans"], side, side)
    assert low.shape == (2, 1, 4 * side, 4 * side) and iou.shape == (2, 1)
    assert torch.isfinite(low).all() and torch.equal(low, low2)
    assert not torch.allclose(low[0], low[1])  # the prompt and image reach the output

    for original in ((300, 200), (200, 300)):
        out = postprocess_masks(low, _resized(original, size), original, size)
        assert out.shape == (2, 1, *original) and out.dtype == torch.float32


def test_text_embeds_and_images_are_checked():
    model = _reference(0)
    size = SAM_REFERENCE["image_size"]
    emb = torch.zeros(1, SAM_REFERENCE["out_chans"], size // 16, size // 16)
    for bad in (torch.zeros(1, 1, 7), torch.zeros(2, 1, SAM_REFERENCE["prompt_embed_dim"])):
        try:
            model.masks_from_text(emb, bad)
        except ContractError:
            continue
        raise AssertionError("accepted bad text_embeds")
    try:
        model.image_embeddings(torch.zeros(1, 3, size, size - 16))
    except ContractError:
        pass
    else:
        raise AssertionError("accepted a non-square image")


def test_bfloat16_forward_runs():
    model = _reference(0).to(torch.bfloat16)
    size = SAM_REFERENCE["image_size"]
    images = torch.randn(1, 3, size, size, dtype=torch.bfloat16)
    text = torch.randn(1, 1, SAM_REFERENCE["prompt_embed_dim"])  # float32 in, cast inside
    with torch.no_grad():
        low = model(images, text)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


# ---------------------------------------------------------------- centred padding


def test_pad_offsets_put_the_odd_pixel_bottom_and_right():
    assert sam_pad_offsets((256, 171), 256) == (0, 0, 42, 43)
    assert sam_pad_offsets((171, 256), 256) == (42, 43, 0, 0)
    assert sam_pad_offsets((64, 43), 64) == (0, 0, 10, 11)
    assert sam_pad_offsets((256, 256), 256) == (0, 0, 0, 0)
    for bad in ((257, 100), (0, 10)):
        try:
            sam_pad_offsets(bad, 256)
        except ContractError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_crop_is_pixel_exact_at_full_resolution():
    # A map already at image_size goes through both bilinear steps unchanged when the original
    # size equals the resized size, so what comes out is exactly the crop.
    size = 64
    for input_size, cols, rows in (((64, 43), slice(10, 53), slice(0, 64)),
                                   ((43, 64), slice(0, 64), slice(10, 53))):
        logits = -torch.ones(1, 1, size, size)
        logits[..., rows, cols] = 1.0
        out = postprocess_masks(logits, input_size, input_size, size)
        assert out.shape == (1, 1, *input_size)
        assert (out == 1.0).all()
        shifted = torch.roll(logits, 1, dims=-1 if cols.start else -2)  # odd pixel on the left
        assert (postprocess_masks(shifted, input_size, input_size, size) < 0).any()


def test_pad_then_postprocess_recovers_the_image():
    torch.manual_seed(4)
    size = 64
    for input_size in ((64, 43), (43, 64), (51, 64), (64, 64)):
        image = torch.randn(1, 1, *input_size)
        top, bottom, left, right = sam_pad_offsets(input_size, size)
        padded = F.pad(image, (left, right, top, bottom))
        assert padded.shape[-2:] == (size, size)
        assert torch.equal(postprocess_masks(padded, input_size, input_size, size), image)


def _low_res_with_centred_image(input_size, image_size, low_side):
    """Low-resolution logits: +1 over the centred image, -1 over the padding, area-averaged
    from the padded square."""
    top, bottom, left, right = sam_pad_offsets(input_size, image_size)
    full = -torch.ones(1, 1, image_size, image_size)
    full[..., top: image_size - bottom, left: image_size - right] = 1.0
    return F.adaptive_avg_pool2d(full, low_side)


def _interior_positive(mask, margin=0.08):
    h, w = mask.shape[-2:]
    dh, dw = max(1, int(h * margin)), max(1, int(w * margin))
    return bool((mask[..., dh: h - dh, dw: w - dw] > 0).all())


def _top_left_crop(low, input_size, original_size, image_size):
    """SAM's original crop (image in the top-left corner): wrong for MedPLIB's padding."""
    x = F.interpolate(low, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)


def test_centred_crop_keeps_the_image_and_drops_the_padding():
    for cfg, low_side in ((SAM_REFERENCE, 16), (SAM_MED2D_VIT_B, 64)):
        size = cfg["image_size"]
        for original in ((300, 200), (200, 300), (512, 130)):
            input_size = _resized(original, size)
            low = _low_res_with_centred_image(input_size, size, low_side)
            out = postprocess_masks(low, input_size, original, size)
            assert out.shape == (1, 1, *original)
            assert _interior_positive(out), (size, original)
            # the same check catches a crop in the wrong place
            wrong = _top_left_crop(low, input_size, original, size)
            assert wrong.shape == out.shape
            assert not _interior_positive(wrong), (size, original)


def test_medplib_literal_postprocess_is_not_the_centred_crop_at_256():
    # MedPLIB's own postprocess_masks takes resized-image offsets off the 64x64 map: for a
    # (256, 171) resize the row offset -96 clamps to 0 and the column offset -54 wraps to 10,
    # so rows 0:64 and columns 10:64 (right padding included) are stretched to the original.
    torch.manual_seed(5)
    low = torch.randn(1, 1, 64, 64)
    original = (300, 200)
    input_size = _resized(original, 256)
    assert input_size == (256, 171)
    expected = F.interpolate(low[..., :, 10:], original, mode="bilinear", align_corners=False)
    assert torch.equal(postprocess_masks_as_medplib(low, input_size, original), expected)
    assert not torch.allclose(postprocess_masks(low, input_size, original, 256), expected)
    # square images: both keep the whole map; only the resampling differs (one bilinear step
    # against two), which flips under 2% of a white-noise mask's pixels
    theirs = postprocess_masks_as_medplib(low, (256, 256), (512, 512)) > 0
    ours = postprocess_masks(low, (256, 256), (512, 512), 256) > 0
    assert (theirs == ours).float().mean() > 0.98
