"""MedRegA's network with the state-dict names of the released checkpoint (``xmed-lab/MedRegA``
at dfdb0db, ``src/internvl/model/internvl_chat/``), written for MedGate:

- ``vision_model``: InternViT (``modeling_intern_vit.py``): ``embeddings.class_embedding``,
  ``embeddings.patch_embedding``, ``embeddings.position_embedding``; ``encoder.layers.N`` with
  ``attn.qkv`` (no bias), ``attn.q_norm``/``attn.k_norm`` (RMS, over the whole width),
  ``attn.proj``, ``mlp.fc1``/``mlp.fc2``, RMS ``norm1``/``norm2`` and the layer scales
  ``ls1``/``ls2``;
- ``mlp1`` (``modeling_internvl_chat.py``): LayerNorm -> Linear -> GELU -> Linear from the
  pixel-shuffled ViT width (4x) to the LLM width;
- ``language_model``: a Llama causal LM (``LlamaForCausalLM`` in the authors' code,
  Nous-Hermes-2-Yi-34B in the release).

``extract_feature`` follows the authors: the last layer's patch tokens (``select_layer`` -1),
reshaped to the patch grid, pixel-shuffled by ``downsample_ratio`` (0.5: 1024 patches of a 448
tile become 256 tokens), then ``mlp1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


class RMSNorm(nn.Module):
    """InternRMSNorm: computed in fp32, weight applied in the input dtype."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, width: int, patch: int, image_size: int) -> None:
        super().__init__()
        self.grid = image_size // patch
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, width))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixels.to(dtype))
        b, d, h, w = x.shape
        x = torch.cat([self.class_embedding.expand(b, 1, -1).to(dtype),
                       x.flatten(2).transpose(1, 2)], dim=1)
        pos = self.position_embedding
        grid = pos[:, 1:].float().reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        # the authors interpolate (bicubic) even at the trained size, where it is the identity
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, d, h * w).permute(0, 2, 1).to(pos.dtype)
        return x + torch.cat([pos[:, :1], grid], dim=1).to(dtype)


class InternAttention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool,
                 eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.qk_normalization = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(width, eps)
            self.k_norm = RMSNorm(width, eps)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, d).unbind(2)
        if self.qk_normalization:  # over all heads at once, as the authors' naive path
            q, k = self.q_norm(q), self.k_norm(k)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class InternMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width, eps = int(cfg["hidden_size"]), float(cfg.get("layer_norm_eps", 1e-6))
        self.attn = InternAttention(width, int(cfg["num_attention_heads"]),
                                    bool(cfg.get("qkv_bias", False)),
                                    bool(cfg.get("qk_normalization", True)), eps)
        self.mlp = InternMLP(width, int(cfg["intermediate_size"]))
        self.norm1 = RMSNorm(width, eps)
        self.norm2 = RMSNorm(width, eps)
        scale = float(cfg.get("initializer_factor", 0.1))
        self.ls1 = nn.Parameter(scale * torch.ones(width))
        self.ls2 = nn.Parameter(scale * torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(cfg)
                                    for _ in range(int(cfg["num_hidden_layers"])))


class InternVisionModel(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(int(cfg["hidden_size"]), int(cfg["patch_size"]),
                                                 int(cfg["image_size"]))
        self.encoder = InternVisionEncoder(cfg)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, H, W) -> the last layer's tokens (tiles, 1 + patches, width)."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return x


def pixel_shuffle(x: torch.Tensor, ratio: float, version: str) -> torch.Tensor:
    """(n, w, h, c) -> (n, w*r, h*r, c/r^2), the authors' ``pixel_shuffle``; ``version`` "v1"
    leaves height and width transposed, as the released InternVL-Chat-V1-2 was trained."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    if version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


class InternVLChatModel(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        vision, llm = config["vision_config"], config["llm_config"]
        self.image_size = int(config.get("force_image_size") or vision["image_size"])
        self.patch_size = int(vision["patch_size"])
        self.downsample_ratio = float(config.get("downsample_ratio", 0.5))
        self.ps_version = str(config.get("ps_version", "v1"))
        self.select_layer = int(config.get("select_layer", -1))
        if self.select_layer != -1:
            raise ValueError("MedRegA reads the last ViT layer (select_layer -1); "
                             f"{self.select_layer} is not supported")
        self.num_image_token = int((self.image_size // self.patch_size) ** 2
                                   * self.downsample_ratio ** 2)
        self.vision_model = InternVisionModel({**vision, "image_size": self.image_size})
        llm_cfg = LlamaConfig(**{k: v for k, v in llm.items()
                                 if not k.startswith("_") and k != "architectures"})
        self.language_model = LlamaForCausalLM(llm_cfg)
        shuffled = int(vision["hidden_size"]) * int(1 / self.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, llm_cfg.hidden_size),
                                  nn.GELU(), nn.Linear(llm_cfg.hidden_size, llm_cfg.hidden_size))

    def extract_feature(self, pixels: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, S, S) -> (tiles, num_image_token, LLM width)."""
        x = self.vision_model(pixels)[:, 1:, :]
        side = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], side, side, -1)
        x = pixel_shuffle(x, self.downsample_ratio, self.ps_version)
        return self.mlp1(x.reshape(x.shape[0], -1, x.shape[-1]))


def build_medrega(config: dict[str, Any]) -> InternVLChatModel:
    return InternVLChatModel(config)
