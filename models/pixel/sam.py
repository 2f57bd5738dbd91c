"""SAM-Med2D ViT-B, the pixel decoder MedPLIB turns its ``<SEG>`` embedding into a mask with.

A plain PyTorch tree whose state-dict names and shapes are those of MedPLIB's copy of SAM-Med2D
(``model/segment_anything_med2d`` at commit 9c3efe9 of ShawnHuang497/MedPLIB, built by
``build_sam_vit_b(image_size=256, encoder_adapter=True)``), so its checkpoint loads strictly:

* ``image_encoder``: a ViTDet-style encoder (patch embedding, absolute and decomposed relative
  positions, windowed attention except in the global blocks) whose every block carries an
  adapter (channel gate, then a strided convolution and its transpose) next to its MLP, and a
  convolutional neck down to the prompt width.
* ``prompt_encoder``: random Fourier positions; MedPLIB appends the projected ``<SEG>`` hidden
  state as one more sparse prompt token (``text_embeds``) and uses the "no mask" dense embedding.
* ``mask_decoder``: the two-way transformer, the upscaling path and the hypernetwork heads.

``pixel_mean`` and ``pixel_std`` sit at the root as buffers that are not saved (the authors
register them with ``persistent=False``). Images reach :meth:`SamMed2D.image_embeddings`
already normalised, resized on their longest side to ``image_size`` and padded with zeros to a
square with the image in the middle (:func:`sam_pad_offsets` says where); :func:`postprocess_masks`
takes the same offsets off again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ContractError

SAM_MED2D_VIT_B: dict[str, Any] = {
    "image_size": 256,
    "patch_size": 16,
    "in_chans": 3,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": True,
    "window_size": 14,
    "global_attn_indexes": (2, 5, 8, 11),
    "encoder_norm_eps": 1e-6,
    "out_chans": 256,
    "encoder_adapter": True,
    "adapter_mlp_ratio": 0.25,
    "prompt_embed_dim": 256,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "attention_downsample_rate": 2,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
    "pixel_mean": (123.675, 116.28, 103.53),
    "pixel_std": (58.395, 57.12, 57.375),
}

# The same tree at toy widths: 4x4 patches, windows of 3 (so window padding is exercised), one
# windowed and one global block, two decoder layers. Low-resolution masks are 16x16.
SAM_REFERENCE: dict[str, Any] = {
    **SAM_MED2D_VIT_B,
    "image_size": 64,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "window_size": 3,
    "global_attn_indexes": (1,),
    "out_chans": 32,
    "prompt_embed_dim": 32,
    "mask_in_chans": 4,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}

CONFIG_KEYS = frozenset(SAM_MED2D_VIT_B)


def _check_config(cfg: dict[str, Any]) -> None:
    missing = sorted(CONFIG_KEYS - set(cfg))
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if missing or unknown:
        raise ContractError(f"SAM-Med2D config: missing {missing}, unknown {unknown}")

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ContractError(f"SAM-Med2D config: {what}")

    size, patch = cfg["image_size"], cfg["patch_size"]
    need(size > 0 and patch > 0 and size % patch == 0, "image_size must be a multiple of "
                                                       "patch_size")
    grid = size // patch
    need(not cfg["encoder_adapter"] or grid % 2 == 0,
         "the adapter's stride-2 convolution and its transpose need an even patch grid")
    need(cfg["embed_dim"] % cfg["num_heads"] == 0, "num_heads must divide embed_dim")
    need(all(0 <= i < cfg["depth"] for i in cfg["global_attn_indexes"]),
         "global_attn_indexes must name blocks")
    need(cfg["out_chans"] == cfg["prompt_embed_dim"], "out_chans must equal prompt_embed_dim")
    dim = cfg["prompt_embed_dim"]
    need(dim % 8 == 0, "prompt_embed_dim must be a multiple of 8 (upscaling to dim / 8)")
    need((dim // cfg["attention_downsample_rate"]) % cfg["decoder_num_heads"] == 0,
         "decoder_num_heads must divide prompt_embed_dim / attention_downsample_rate")
    need(cfg["mask_in_chans"] % 4 == 0 and cfg["mask_in_chans"] > 0,
         "mask_in_chans must be a positive multiple of 4")
    need(len(cfg["pixel_mean"]) == cfg["in_chans"] == len(cfg["pixel_std"]),
         "pixel_mean and pixel_std need one value per input channel")


# --------------------------------------------------------------------------------------------
# Shared pieces


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))``."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:],
                                                                     strict=False))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


# --------------------------------------------------------------------------------------------
# Image encoder


def _relative_table(q_len: int, k_len: int, table: Tensor) -> Tensor:
    """The ``[q_len, k_len, C]`` rows of a relative-position table for every query/key pair,
    resampling the table linearly when it was made for another length."""
    span = 2 * max(q_len, k_len) - 1
    if table.shape[0] != span:
        table = F.interpolate(table.t().unsqueeze(0), size=span, mode="linear").squeeze(0).t()
    q_pos = torch.arange(q_len, device=table.device)[:, None] * max(k_len / q_len, 1.0)
    k_pos = torch.arange(k_len, device=table.device)[None, :] * max(q_len / k_len, 1.0)
    index = (q_pos - k_pos) + (k_len - 1) * max(q_len / k_len, 1.0)
    return table[index.long()]


class EncoderAttention(nn.Module):
    """Multi-head self-attention over a ``[B, H, W, C]`` grid with decomposed relative
    positions (one table per axis)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool,
                 grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, HW, head_dim]
        bias = None
        if self.use_rel_pos:
            table_h = _relative_table(h, h, self.rel_pos_h)
            table_w = _relative_table(w, w, self.rel_pos_w)
            grid_q = q.reshape(b, heads, h, w, -1).to(table_h.dtype)
            along_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
            along_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
            bias = (along_h[..., :, None] + along_w[..., None, :]).reshape(b, heads, h * w, h * w)
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.reshape(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class Adapter(nn.Module):
    """SAM-Med2D's block adapter: a squeeze-and-excitation channel gate, then a stride-2
    convolution and its stride-2 transpose added back onto the input, then a layer norm."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim)  # default eps, as the authors leave it
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, dim, bias=False), nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False), nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        maps = x.permute(0, 3, 1, 2)  # [B, C, H, W]
        gate = self.channel(maps.mean(dim=(2, 3)))
        maps = maps + self.spatial(maps * gate[:, :, None, None])
        return self.norm(maps.permute(0, 2, 3, 1))


def _to_windows(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split ``[B, H, W, C]`` into ``[B * n, size, size, C]`` windows, padding bottom/right with
    zeros; also returns the padded grid."""
    b, h, w, c = x.shape
    hp, wp = math.ceil(h / size) * size, math.ceil(w / size) * size
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    x = x.reshape(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _from_windows(windows: Tensor, size: int, padded: tuple[int, int],
                  grid: tuple[int, int]) -> Tensor:
    hp, wp = padded
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.reshape(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, : grid[0], : grid[1], :].contiguous()


class EncoderBlock(nn.Module):
    def __init__(self, cfg: dict[str, Any], window_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        dim, eps = cfg["embed_dim"], cfg["encoder_norm_eps"]
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EncoderAttention(dim, cfg["num_heads"], cfg["qkv_bias"], cfg["use_rel_pos"],
                                     grid if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * cfg["mlp_ratio"]))
        self.adapter = bool(cfg["encoder_adapter"])
        if self.adapter:
            self.Adapter = Adapter(dim, cfg["adapter_mlp_ratio"])

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            grid = (y.shape[1], y.shape[2])
            windows, padded = _to_windows(y, self.window_size)
            y = _from_windows(self.attn(windows), self.window_size, padded, grid)
        else:
            y = self.attn(y)
        x = x + y
        y = self.norm2(x)
        if self.adapter:
            return x + self.mlp(y) + self.Adapter(y)
        return x + self.mlp(y)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [B, H, W, C]


class ImageEncoderViT(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.img_size = cfg["image_size"]
        dim, out = cfg["embed_dim"], cfg["out_chans"]
        side = cfg["image_size"] // cfg["patch_size"]
        self.patch_embed = PatchEmbed(cfg["patch_size"], cfg["in_chans"], dim)
        self.pos_embed: nn.Parameter | None = None
        if cfg["use_abs_pos"]:
            self.pos_embed = nn.Parameter(torch.zeros(1, side, side, dim))
        global_blocks = set(cfg["global_attn_indexes"])
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg, 0 if i in global_blocks else cfg["window_size"], (side, side))
            for i in range(cfg["depth"])
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# Prompt encoder


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of ``[0, 1]`` coordinates through a fixed random Gaussian matrix."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def _encode(self, coords: Tensor) -> Tensor:
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.float()
        proj = 2 * math.pi * proj
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """``[C, h, w]`` encoding of the centres of an ``h x w`` grid."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._encode(coords).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``[B, N, C]`` encoding of pixel ``(x, y)`` coordinates in an image of ``image_size``
        ``(h, w)``."""
        scale = torch.tensor([1.0 / image_size[1], 1.0 / image_size[0]], device=coords.device)
        return self._encode(coords.float() * scale)


class PromptEncoder(nn.Module):
    NUM_POINT_EMBEDDINGS = 4  # negative point, positive point, two box corners

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, chans = cfg["prompt_embed_dim"], cfg["mask_in_chans"]
        side = cfg["image_size"] // cfg["patch_size"]
        self.embed_dim = dim
        self.image_embedding_size = (side, side)
        self.input_image_size = (cfg["image_size"], cfg["image_size"])
        self.mask_input_size = (4 * side, 4 * side)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, dim) for _ in range(self.NUM_POINT_EMBEDDINGS)
        )
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(chans // 4),
            nn.GELU(),
            nn.Conv2d(chans // 4, chans, kernel_size=2, stride=2),
            LayerNorm2d(chans),
            nn.GELU(),
            nn.Conv2d(chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> Tensor:
        """``[1, C, h, w]`` positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords.float() + 0.5
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        table = {-1: self.not_a_point_embed.weight, 0: self.point_embeddings[0].weight,
                 1: self.point_embeddings[1].weight}
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        for label, weight in table.items():
            emb = emb + (labels == label)[..., None].to(emb.dtype) * weight.to(emb.dtype)
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        corners = (boxes.float() + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_type = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return emb + corner_type.to(emb.dtype)

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                masks: Tensor | None, text_embeds: Tensor | None) -> tuple[Tensor, Tensor]:
        """Sparse ``[B, N, C]`` and dense ``[B, C, h, w]`` prompt embeddings; MedPLIB passes only
        ``text_embeds`` (``[B, 1, C]``), which is appended after any points and boxes."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        elif text_embeds is not None:
            bs = text_embeds.shape[0]
        else:
            bs = 1
        weight = self.no_mask_embed.weight
        dtype = text_embeds.dtype if text_embeds is not None else weight.dtype
        parts = [torch.empty(bs, 0, self.embed_dim, device=weight.device, dtype=dtype)]
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None).to(dtype))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes).to(dtype))
        if text_embeds is not None:
            parts.append(text_embeds)
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense


# --------------------------------------------------------------------------------------------
# Mask decoder


class DecoderAttention(nn.Module):
    """Attention whose queries, keys and values are projected to ``dim / downsample``."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = self.q_proj.weight.dtype
        q = self._heads(self.q_proj(q.to(dtype)))
        k = self._heads(self.k_proj(k.to(dtype)))
        v = self._heads(self.v_proj(v.to(dtype)))
        out = F.scaled_dot_product_attention(q, k, v)
        b, heads, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, heads * c))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens-to-image attention, token MLP, image-to-tokens attention;
    each followed by a residual and a layer norm."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int,
                 skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor,
                key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int,
                 downsample: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = image.flatten(2).transpose(1, 2)  # [B, hw, C]
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attended = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attended), keys


class MaskDecoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim = cfg["prompt_embed_dim"]
        self.transformer = TwoWayTransformer(cfg["decoder_depth"], dim, cfg["decoder_num_heads"],
                                             cfg["decoder_mlp_dim"],
                                             cfg["attention_downsample_rate"])
        self.num_mask_tokens = cfg["num_multimask_outputs"] + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, cfg["iou_head_hidden_dim"], self.num_mask_tokens,
                                       cfg["iou_head_depth"])

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor,
                multimask_output: bool) -> tuple[Tensor, Tensor]:
        """Mask logits ``[B, k, 4h, 4w]`` and predicted IoUs ``[B, k]``; ``k`` is 1 (the first
        mask token) or, with ``multimask_output``, the other three. As in MedPLIB, the image
        batch is not repeated per prompt: ``image_embeddings`` and the prompts share ``B``."""
        sparse = sparse_prompt_embeddings
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat([out_tokens.to(sparse.dtype), sparse], dim=1)

        src = image_embeddings + dense_prompt_embeddings
        pos = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1: 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i, :])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou = self.iou_prediction_head(iou_out)

        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]


# --------------------------------------------------------------------------------------------
# The model


class SamMed2D(nn.Module):
    """SAM-Med2D with the state-dict layout of MedPLIB's ``model.visual_model``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = dict(cfg)
        self.image_size: int = cfg["image_size"]
        self.image_encoder = ImageEncoderViT(cfg)
        self.prompt_encoder = PromptEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg["pixel_mean"]).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg["pixel_std"]).view(-1, 1, 1),
                             persistent=False)

    def image_embeddings(self, images: Tensor) -> Tensor:
        """``[B, C, S/16, S/16]`` embeddings of ``[B, 3, S, S]`` images that are already
        normalised and padded (``S`` is ``image_size``)."""
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.cfg["in_chans"], s, s):
            raise ContractError(f"SAM-Med2D: images must be [B, {self.cfg['in_chans']}, {s}, "
                                f"{s}], not {list(images.shape)}")
        return self.image_encoder(images)

    def masks_and_scores_from_text(self, image_embeddings: Tensor,
                                   text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """Low-resolution mask logits ``[B, 1, h, w]`` and predicted IoU ``[B, 1]`` for one text
        prompt per image: ``text_embeds`` is ``[B, 1, C]`` (a ``[B, C]`` tensor is taken as
        ``[B, 1, C]``), the projected ``<SEG>`` hidden state, as MedPLIB passes it."""
        if text_embeds.dim() == 2:
            text_embeds = text_embeds.unsqueeze(1)
        dim = self.cfg["prompt_embed_dim"]
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != dim:
            raise ContractError(f"SAM-Med2D: text_embeds must be [B, 1, {dim}], not "
                                f"{list(text_embeds.shape)}")
        if text_embeds.shape[0] != image_embeddings.shape[0]:
            raise ContractError("SAM-Med2D: one text prompt per image embedding")
        dtype = image_embeddings.dtype
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None,
                                            text_embeds=text_embeds.to(dtype))
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse.to(dtype),
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=False,
        )

    def masks_from_text(self, image_embeddings: Tensor, text_embeds: Tensor) -> Tensor:
        """Low-resolution mask logits ``[B, 1, 4 * S/16, 4 * S/16]``; see
        :meth:`masks_and_scores_from_text`."""
        return self.masks_and_scores_from_text(image_embeddings, text_embeds)[0]

    def forward(self, images: Tensor, text_embeds: Tensor) -> Tensor:
        return self.masks_from_text(self.image_embeddings(images), text_embeds)


def build_sam_med2d(cfg: dict[str, Any]) -> SamMed2D:
    return SamMed2D(cfg)


# --------------------------------------------------------------------------------------------
# Padding and its removal


def sam_pad_offsets(input_size: Sequence[int], image_size: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` zero padding that centres a resized ``(h, w)`` image in the
    ``image_size`` square: each axis is split with the smaller half first, so an odd pixel goes
    to the bottom or the right (MedPLIB's ``pad_tensor_channelwise``)."""
    h, w = (int(v) for v in input_size)
    if not (0 < h <= image_size and 0 < w <= image_size):
        raise ContractError(f"SAM-Med2D: resized size {(h, w)} does not fit in {image_size}")
    pad_h, pad_w = image_size - h, image_size - w
    return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2


def postprocess_masks(low_res: Tensor, input_size: Sequence[int], original_size: Sequence[int],
                      image_size: int) -> Tensor:
    """Mask logits ``[B, k, H, W]`` at ``original_size`` from the decoder's ``[B, k, h, w]``:
    bilinear to the padded ``image_size`` square, the centred padding of ``input_size`` cut off
    (:func:`sam_pad_offsets`), bilinear to ``original_size``. Computed in float32; the mask is
    ``logits > 0``."""
    top, bottom, left, right = sam_pad_offsets(input_size, image_size)
    x = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear",
                      align_corners=False)
    x = x[..., top: image_size - bottom, left: image_size - right]
    return F.interpolate(x, (int(original_size[0]), int(original_size[1])), mode="bilinear",
                         align_corners=False)


def postprocess_masks_as_medplib(low_res: Tensor, input_size: Sequence[int],
                                 original_size: Sequence[int]) -> Tensor:
    """MedPLIB's own ``postprocess_masks`` arithmetic (``model/MedPLIB.py``), kept to compare
    against. It takes resized-image offsets off the low-resolution map itself, without first
    upsampling it, so with ``image_size`` 256 (64x64 maps, resized sides up to 256) the offsets
    come out negative and Python slicing either clamps or wraps them: the long side keeps all 64
    rows, a short side ``s`` in (64, 192] keeps columns ``64 + (64 - s) // 2`` to the end (the
    far padding stays in), and what is left is stretched to ``original_size``. The published
    weights were trained through this; :func:`postprocess_masks` is the geometric crop."""
    x = low_res.float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    pad_h = x.shape[-2] - int(input_size[0])
    pad_w = x.shape[-1] - int(input_size[1])
    top, left = pad_h // 2, pad_w // 2
    height, width = x.shape[-2] - pad_h, x.shape[-1] - pad_w
    x = x[:, :, top: top + height, left: left + width]
    return F.interpolate(x, (int(original_size[0]), int(original_size[1])), mode="bilinear",
                         align_corners=False)
