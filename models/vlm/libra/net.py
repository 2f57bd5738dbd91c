"""Libra's network with the state-dict names of the released checkpoints (``X-iZhang/Libra`` at
0d6c56a), written for MedGate:

- ``LibraLlamaForCausalLM`` (``libra/model/language_model/libra_llama.py``): a Llama causal LM
  (``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``) whose ``model``
  also holds the vision tower and the connector (``LibraMetaModel`` in ``libra_arch.py``);
- ``model.vision_tower.vision_tower``: RAD-DINO, a DINOv2-base ViT loaded by the authors with
  ``AutoModel`` under transformers 4.51, so its names are those of transformers 4's
  ``Dinov2Model`` (``attention.attention.query``, ``attention.output.dense``, ...). Transformers
  5 renamed them and converts only inside ``from_pretrained``; MedGate loads state dicts
  directly, so the encoder is written here with the released names;
- ``model.mm_projector``: the Temporal Alignment Connector (``multimodal_projector/builder.py``,
  ``class TAC``): the Layerwise Feature Extractor over all 12 encoder layers, applied to the
  current and the prior image, the Temporal Fusion Module, and the final MLP into the LLM width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# The TAC stacks the hidden states of RAD-DINO's 12 layers as channels (``layers_number``).
TAC_LAYERS = 12


# -- RAD-DINO (DINOv2 with transformers 4 names) ------------------------------------------
class PatchProjection(nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, width, kernel_size=patch, stride=patch)


class DinoEmbeddings(nn.Module):
    def __init__(self, width: int, patch: int, image_size: int) -> None:
        super().__init__()
        self.patch = patch
        self.grid = image_size // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, width))  # used in training only
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, width))
        self.patch_embeddings = PatchProjection(width, patch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings.projection(pixels)  # (B, D, h, w)
        b, d, h, w = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        pos = self.position_embeddings
        if (h, w) != (self.grid, self.grid):  # another input size: bicubic, as DINOv2 does
            grid = pos[:, 1:].reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic",
                                 align_corners=False).to(pos.dtype)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, d)], dim=1)
        return x + pos


class SelfAttentionQKV(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)))
        return out.transpose(1, 2).reshape(b, n, d)


class SelfOutput(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)


class DinoAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attention = SelfAttentionQKV(width, heads)
        self.output = SelfOutput(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(width))


class DinoMlp(nn.Module):
    def __init__(self, width: int, ratio: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width * ratio)
        self.fc2 = nn.Linear(width * ratio, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DinoLayer(nn.Module):
    def __init__(self, width: int, heads: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attention = DinoAttention(width, heads)
        self.layer_scale1 = LayerScale(width)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = DinoMlp(width, ratio)
        self.layer_scale2 = LayerScale(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1.lambda1 * self.attention(self.norm1(x))
        return x + self.layer_scale2.lambda1 * self.mlp(self.norm2(x))


class DinoEncoder(nn.Module):
    def __init__(self, width: int, heads: int, layers: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(DinoLayer(width, heads, ratio, eps) for _ in range(layers))


class Dinov2(nn.Module):
    """DINOv2 (``embeddings``, ``encoder.layer.N``, ``layernorm``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width = int(cfg["hidden_size"])
        self.embeddings = DinoEmbeddings(width, int(cfg["patch_size"]), int(cfg["image_size"]))
        self.encoder = DinoEncoder(width, int(cfg["num_attention_heads"]),
                                   int(cfg["num_hidden_layers"]), int(cfg.get("mlp_ratio", 4)),
                                   float(cfg.get("layer_norm_eps", 1e-6)))
        self.layernorm = nn.LayerNorm(width, eps=float(cfg.get("layer_norm_eps", 1e-6)))

    def hidden_states(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output before the final norm (transformers' ``hidden_states[1:]``)."""
        x = self.embeddings(pixels)
        out = []
        for layer in self.encoder.layer:
            x = layer(x)
            out.append(x)
        return out


class RadDinoTower(nn.Module):
    """``DINOVisionTower`` with ``mm_vision_select_layer="all"``, ``select_feature="patch"``:
    the patch tokens of all layers, (B, layers, N, D) per image."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.vision_tower = Dinov2(cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(2, B, 3, H, W) current and prior -> (2, B, layers, N, D)."""
        if images.dim() != 5 or images.shape[0] != 2:
            raise ValueError(f"Libra's encoder takes (2, B, 3, H, W) current and prior images, "
                             f"not {tuple(images.shape)}")
        out = []
        for pair in images:
            layers = self.vision_tower.hidden_states(pair)
            out.append(torch.stack([h[:, 1:] for h in layers], dim=1))
        return torch.stack(out)


# -- the Temporal Alignment Connector -----------------------------------------------------
class SqueezeExcitation(nn.Module):
    """torchvision's ``ops.SqueezeExcitation`` (names ``fc1``, ``fc2``), GELU inside."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.gelu(self.fc1(scale))))


class TAC(nn.Module):
    """The LFE (12 -> 6 -> 3 -> 1 layer channels, each an SE block then a 1x1 convolution),
    the TFM (prior weighted by the squashed cosine similarity times a learned scalar,
    self-attention on each, cross-attention current -> prior, an MLP with a residual from the
    current features) and ``mlp_final`` (vision width -> LLM width, four linears with GELU).
    Every attention has ``config.num_attention_heads`` heads (the LLM's) and ``add_bias_kv``."""

    def __init__(self, vision_width: int, llm_width: int, heads: int,
                 layers: int = TAC_LAYERS) -> None:
        super().__init__()
        c = layers
        self.LFE = nn.Sequential(
            SqueezeExcitation(c, c // 2), nn.Conv2d(c, c // 2, 1, bias=False),
            SqueezeExcitation(c // 2, c // 4), nn.Conv2d(c // 2, c // 4, 1, bias=False),
            SqueezeExcitation(c // 4, 1), nn.Conv2d(c // 4, 1, 1, bias=False))
        self.LFE_prior_bias = nn.Parameter(torch.tensor(0.0))

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(vision_width, heads, batch_first=True, add_bias_kv=True)

        self.cur_self_attention = attention()
        self.prior_self_attention = attention()
        self.cros_attention = attention()
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(vision_width)
                                                          for _ in range(4))
        self.mlp_attn = nn.Sequential(nn.Linear(vision_width, vision_width), nn.GELU(),
                                      nn.Dropout(0.1), nn.Linear(vision_width, vision_width),
                                      nn.Dropout(0.1))
        self.mlp_final = nn.Sequential(
            nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width),
            nn.GELU(), nn.Linear(llm_width, llm_width), nn.GELU(),
            nn.Linear(llm_width, llm_width))

    @staticmethod
    def prior_weight(cur: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """((cos(cur, prior) + 1) / 2) ** 8 per sample, over the flattened features."""
        a = cur.reshape(cur.shape[0], -1)
        b = prior.reshape(prior.shape[0], -1)
        a = a / a.norm(dim=-1, keepdim=True)
        b = b / b.norm(dim=-1, keepdim=True)
        cos = F.cosine_similarity(a, b, dim=-1, eps=1e-6)
        return ((cos + 1) / 2).pow(8).view(-1, 1, 1)

    def fuse(self, cur: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        prior = prior + self.prior_weight(cur, prior) * self.LFE_prior_bias
        cur_att = self.norm1(cur + self.cur_self_attention(cur, cur, cur)[0])
        prior_att = self.norm2(prior + self.prior_self_attention(prior, prior, prior)[0])
        both = self.norm3(cur_att + self.cros_attention(cur_att, prior_att, prior_att)[0])
        return self.mlp_final(self.norm4(cur + self.mlp_attn(both)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(2, B, layers, N, D) -> (B, N, LLM width)."""
        cur = self.LFE(features[0]).squeeze(1)
        prior = self.LFE(features[1]).squeeze(1)
        return self.fuse(cur, prior)


# -- the whole model ------------------------------------------------------------------------
def llama_config(cfg: dict[str, Any]) -> LlamaConfig:
    keys = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return LlamaConfig(**keys)


class LibraLlamaForCausalLM(LlamaForCausalLM):
    """A Llama causal LM whose ``model`` holds ``vision_tower`` and ``mm_projector``."""

    def __init__(self, llm: LlamaConfig, vision: dict[str, Any]) -> None:
        super().__init__(llm)
        self.model.vision_tower = RadDinoTower(vision)
        self.model.mm_projector = TAC(int(vision["hidden_size"]), llm.hidden_size,
                                      llm.num_attention_heads)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(2, 1, 3, H, W) current and prior -> (N, LLM width) visual tokens of the pair."""
        return self.model.mm_projector(self.model.vision_tower(images))[0]


def build_libra(config: dict[str, Any]) -> LibraLlamaForCausalLM:
    return LibraLlamaForCausalLM(llama_config(config["llm"]), config["vision"])
