"""The MERL network (Liu et al., ICML 2024): ECG encoder, projections and text tower.

Module names and shapes follow the authors' released code (``utils/vit1d.py``,
``utils/resnet1d.py`` and ``utils/utils_builder.py`` of ``cheliu-computation/MERL-ICML2024``) so
that their checkpoint (``*_ckpt.pth``, the state dict of ``ECGCLIP``) loads with ``strict=True``.
The code is ours; only the attribute tree is shared:

- ``ecg_encoder``: a 1-D ViT (``to_patch_embedding``, ``pos_embedding``, ``block0`` ...
  ``block{depth-1}`` each with ``attn`` and ``ff`` pre-norm sublayers, ``norm``) or a 1-D
  ResNet-18 (``conv1``, ``bn1``, ``layer1``-``layer4``, an unused ``linear``);
- ``proj_e`` (ViT): Linear, BatchNorm, ReLU, Linear, BatchNorm;
- ``downconv`` + ``att_pool_head`` (ResNet): 1x1 conv 512 -> 256 and attention pooling;
- ``linear1``/``linear2``: the uni-modal alignment heads used in pre-training (kept for loading);
- ``lm_model``: a BERT encoder (MedCPT-Query-Encoder in the release) and ``proj_t``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PreNorm(nn.Module):
    """LayerNorm, then the wrapped sublayer (``norm`` and ``fn`` as in the release)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        # indices 0 and 3 carry weights: Linear, GELU, Dropout, Linear, Dropout
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (``to_qkv``, ``to_out``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=True)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head))
        self.ff = PreNorm(dim, FeedForward(dim, mlp_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(x) + x
        return self.ff(x) + x


class ViT1d(nn.Module):
    """1-D ViT over 12 x seq_len: non-overlapping patches by a strided conv, learned positions,
    pre-norm blocks, mean pooling and a final LayerNorm."""

    def __init__(self, num_leads: int = 12, seq_len: int = 5000, patch_size: int = 50,
                 width: int = 192, depth: int = 12, heads: int = 3, mlp_dim: int = 768,
                 dim_head: int = 64) -> None:
        super().__init__()
        if seq_len % patch_size:
            raise ValueError("seq_len must be a multiple of patch_size")
        self.width, self.depth = width, depth
        self.to_patch_embedding = nn.Conv1d(num_leads, width, kernel_size=patch_size,
                                            stride=patch_size, bias=False)
        self.pos_embedding = nn.Parameter(torch.randn(1, seq_len // patch_size, width))
        for i in range(depth):
            self.add_module(f"block{i}", TransformerBlock(width, heads, dim_head, mlp_dim))
        self.norm = nn.LayerNorm(width)

    def patches(self, series: torch.Tensor) -> torch.Tensor:
        """The strided conv as one matrix product over non-overlapping patches: the same
        numbers, several times faster on a CPU than a 50-wide convolution kernel."""
        conv = self.to_patch_embedding
        k = conv.kernel_size[0]
        b, c, n = series.shape
        p = series.reshape(b, c, n // k, k).permute(0, 2, 1, 3).reshape(b, n // k, c * k)
        return F.linear(p, conv.weight.reshape(conv.out_channels, c * k))

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        x = self.patches(series) + self.pos_embedding
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return self.norm(x.mean(dim=1))


class BasicBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet1d18(nn.Module):
    """1-D ResNet-18 returning the 512-channel feature map (length 313 for 5000 samples).
    ``linear`` (512 -> 10) is never used but is part of the released state dict."""

    def __init__(self, num_leads: int = 12, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_leads, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock1d(cin, w, stride), BasicBlock1d(w, w, 1))
            self.add_module(f"layer{i + 1}", layer)
            cin = w
        self.linear = nn.Linear(widths[-1], 10)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class AttentionPool(nn.Module):
    """A learned query token attends over the feature sequence (CLIP-style attention pooling)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(1, spacial_dim + 1, embed_dim) / embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.mhsa = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1)  # (B, C, L) -> (B, L, C)
        cls = (self.cls_token + self.positional_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.positional_embedding.to(x.dtype)
        out, _ = self.mhsa(x[:, :1], x, x, need_weights=False)
        return self.c_proj(out)[:, 0]


def build_text_model(text: dict[str, Any]) -> nn.Module:
    """A BERT encoder with pooler, as ``AutoModel`` builds MedCPT-Query-Encoder."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=int(text.get("vocab_size", 30522)),
        hidden_size=int(text.get("hidden_size", 768)),
        num_hidden_layers=int(text.get("num_hidden_layers", 12)),
        num_attention_heads=int(text.get("num_attention_heads", 12)),
        intermediate_size=int(text.get("intermediate_size", 3072)),
        max_position_embeddings=int(text.get("max_position_embeddings", 512)),
        type_vocab_size=int(text.get("type_vocab_size", 2)),
        layer_norm_eps=float(text.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(text.get("pad_token_id", 0)),
    )
    return BertModel(cfg, add_pooling_layer=True)


class MerlModel(nn.Module):
    """ECG and text towers with their projections into the shared (L2-normalised) space."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.ecg_model = str(config.get("ecg_model", "vit_tiny"))
        proj = config.get("projection", {})
        hidden, out = int(proj.get("hidden", 256)), int(proj.get("out", 256))
        leads = int(config.get("num_leads", 12))
        if self.ecg_model.startswith("vit"):
            vit = config.get("vit", {})
            self.ecg_encoder: nn.Module = ViT1d(
                num_leads=leads, seq_len=int(config.get("seq_len", 5000)),
                patch_size=int(config.get("patch_size", 50)), width=int(vit.get("width", 192)),
                depth=int(vit.get("depth", 12)), heads=int(vit.get("heads", 3)),
                mlp_dim=int(vit.get("mlp_dim", 768)), dim_head=int(vit.get("dim_head", 64)))
            width = self.ecg_encoder.width
            self.proj_e = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, out),
                                        nn.BatchNorm1d(out))
            self.linear1 = nn.Linear(width, out, bias=False)
            self.linear2 = nn.Linear(width, out, bias=False)
        elif self.ecg_model == "resnet18":
            res = config.get("resnet", {})
            widths = tuple(int(w) for w in res.get("widths", (64, 128, 256, 512)))
            self.ecg_encoder = ResNet1d18(num_leads=leads, widths=widths)
            self.downconv = nn.Conv1d(widths[-1], out, kernel_size=1)
            self.att_pool_head = AttentionPool(int(res.get("spacial_dim", 313)), out,
                                               int(res.get("pool_heads", 4)), out)
            self.linear1 = nn.Linear(out, out, bias=False)
            self.linear2 = nn.Linear(out, out, bias=False)
        else:
            raise ValueError(f"unknown MERL ECG encoder {self.ecg_model!r}")
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.dropout1 = nn.Dropout(p=0.1)
        self.dropout2 = nn.Dropout(p=0.1)
        text = config.get("text", {})
        self.lm_model = build_text_model(text)
        self.proj_t = nn.Sequential(nn.Linear(int(text.get("hidden_size", 768)), hidden),
                                    nn.GELU(), nn.Linear(hidden, out))

    @torch.no_grad()
    def ecg_embedding(self, ecg: torch.Tensor) -> torch.Tensor:
        """Projected ECG embedding (B, out), L2-normalised."""
        if self.ecg_model.startswith("vit"):
            emb = self.proj_e(self.ecg_encoder(ecg))
        else:
            emb = self.att_pool_head(self.downconv(self.ecg_encoder(ecg)))
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected text embedding (B, out) of the pooled [CLS] output, L2-normalised."""
        pooled = self.lm_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.proj_t(pooled), dim=-1)
