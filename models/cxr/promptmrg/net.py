"""PromptMRG's network (Jin et al., AAAI 2024) as plain PyTorch modules.

The attribute names are chosen so that ``state_dict()`` has the names and shapes of the authors'
``BLIP_Decoder`` (``models/blip.py``), whose released checkpoint is a bare ``state_dict()``
(``modules/trainer.py``):

- ``visual_encoder.model.{0..7}``: a torchvision-style ResNet (conv1, bn1, relu, maxpool,
  layer1-4) wrapped in an ``nn.Sequential`` without avgpool and fc (``models/resnet.py``);
- ``memory.encoder.layers.N`` / ``memory.decoder.layers.N`` / ``memory.decoder.norm``: the
  DETR-style post-norm transformer that reads the retrieved report features
  (``models/transformer.py``);
- ``vision_proj`` (vision width -> memory width) and ``cls_head`` (vision + memory width -> 18 x 4);
- ``text_decoder.bert`` / ``text_decoder.cls``: BLIP's BERT decoder (``models/med.py`` of
  ``salesforce/BLIP``): word and position embeddings only (no token types), a persistent
  ``position_ids`` buffer, per layer self-attention, cross-attention whose key and value read
  the vision width, and the MLM head whose decoder bias is the head's ``bias``.

This is MedGate's own code; it never imports ``app``. Dropout is left out: the modules are only
run for inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# One (key, value) pair per decoder layer, shaped (batch, heads, positions, head width).
Cache = list[tuple[torch.Tensor, torch.Tensor]]


# -- image encoder ---------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """A torchvision ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride,
                                                      bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNetTrunk(nn.Module):
    """A ResNet without avgpool and fc, as ``model``: ``nn.Sequential`` indices 0 conv1, 1 bn1,
    2 relu, 3 maxpool, 4-7 layer1-4. Returns the patch features (B, H*W, C) and their mean
    (B, C); the authors' 7x7 average pool over the 7x7 map of a 224 input is that mean."""

    def __init__(self, blocks: Sequence[int], width: int) -> None:
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
                                 nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(3, stride=2, padding=1)]
        inplanes = width
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            layer = []
            for j in range(n):
                layer.append(Bottleneck(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.model = nn.Sequential(*stem, *stages)
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.model(x)
        return fmap.flatten(2).transpose(1, 2), fmap.mean(dim=(2, 3))


# -- the memory: a DETR-style post-norm transformer ------------------------------------------
class MemoryEncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src, src, src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MemoryDecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.multihead_attn = nn.MultiheadAttention(d, heads)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor
                ) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        attn = self.multihead_attn(tgt + query_pos, memory, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + attn)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if norm is not None:
            self.norm = norm


class MemoryTransformer(nn.Module):
    """Encoder over the K report features (no positions, no final norm); one decoder query that
    starts at zero and carries the projected image feature as its query position; the decoder's
    final LayerNorm. ``forward(src (K, B, d), query (1, B, d)) -> (B, d)``."""

    def __init__(self, d: int, heads: int, ffn: int, encoder_layers: int, decoder_layers: int
                 ) -> None:
        super().__init__()
        self.encoder = _Stack([MemoryEncoderLayer(d, heads, ffn) for _ in range(encoder_layers)])
        self.decoder = _Stack([MemoryDecoderLayer(d, heads, ffn) for _ in range(decoder_layers)],
                              nn.LayerNorm(d))

    def forward(self, src: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory)
        out = torch.zeros_like(query)
        for layer in self.decoder.layers:
            out = layer(out, memory, query)
        return self.decoder.norm(out)[0]


# -- BLIP's BERT decoder ---------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, pad_id: int, eps: float
                 ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        # persistent in BLIP's med.py, so the released state dict holds it
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)))

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        pos = self.position_ids[:, start:start + ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.key(x)), self.split(self.value(x))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], causal: bool
                ) -> torch.Tensor:
        q = self.split(self.query(x))
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=causal)
        b, _, t, _ = out.shape
        return out.transpose(1, 2).reshape(b, t, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, kv_width)
        self.output = BertSelfOutput(hidden, eps)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, transformers' "gelu"


class BertOutput(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, encoder_width: int, eps: float
                 ) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads, hidden, eps)
        self.crossattention = BertAttention(hidden, heads, encoder_width, eps)
        self.intermediate = BertIntermediate(hidden, inner)
        self.output = BertOutput(hidden, inner, eps)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                cross_kv: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        sa = self.attention.self
        k, v = sa.project_kv(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # a prefix (no cache) attends causally; one new token attends to everything cached
        h = self.attention.output(sa(x, (k, v), causal=past is None and x.shape[1] > 1), x)
        h = self.crossattention.output(self.crossattention.self(h, cross_kv, causal=False), h)
        return self.output(self.intermediate(h), h), (k, v)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, **kw: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**kw) for _ in range(layers)])


class BertModel(nn.Module):
    def __init__(self, cfg: dict[str, Any], encoder_width: int) -> None:
        super().__init__()
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.embeddings = BertEmbeddings(cfg["vocab_size"], cfg["hidden_size"],
                                         cfg["max_position_embeddings"],
                                         int(cfg.get("pad_token_id", 0)), eps)
        self.encoder = BertEncoder(cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                                   heads=cfg["num_attention_heads"],
                                   inner=cfg["intermediate_size"], encoder_width=encoder_width,
                                   eps=eps)


class PredictionHeadTransform(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.transform = PredictionHeadTransform(hidden, eps)
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.decoder.bias = self.bias  # one parameter under two names, as in BLIP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class OnlyMLMHead(nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.predictions = LMPredictionHead(hidden, vocab, eps)


class TextDecoder(nn.Module):
    """BLIP's ``BertLMHeadModel`` as used by PromptMRG, for incremental decoding.

    ``cross_kv(image_embeds)`` projects the patch features once per layer; ``step(ids, cache,
    cross)`` runs the new tokens ``ids`` (B, T) after the ``cache`` and returns the logits of the
    last position (B, V) and the extended cache."""

    def __init__(self, cfg: dict[str, Any], encoder_width: int) -> None:
        super().__init__()
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.bert = BertModel(cfg, encoder_width)
        self.cls = OnlyMLMHead(cfg["hidden_size"], cfg["vocab_size"], eps)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied
        self.max_positions = int(cfg["max_position_embeddings"])

    def cross_kv(self, image_embeds: torch.Tensor) -> Cache:
        return [layer.crossattention.self.project_kv(image_embeds)
                for layer in self.bert.encoder.layer]

    def step(self, ids: torch.Tensor, cache: Cache | None, cross: Cache
             ) -> tuple[torch.Tensor, Cache]:
        start = 0 if cache is None else cache[0][0].shape[2]
        if start + ids.shape[1] > self.max_positions:
            raise ValueError(f"the decoder has {self.max_positions} positions; "
                             f"{start + ids.shape[1]} asked for")
        h = self.bert.embeddings(ids, start)
        new: Cache = []
        for i, layer in enumerate(self.bert.encoder.layer):
            h, kv = layer(h, None if cache is None else cache[i], cross[i])
            new.append(kv)
        return self.cls.predictions(h[:, -1]), new


def reorder_cache(cache: Cache, index: torch.Tensor) -> Cache:
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache]


# -- the whole model -------------------------------------------------------------------------
class PromptMRG(nn.Module):
    """``forward``-free: ``diagnose(image, memory)`` gives the patch features and the (B, 4, 18)
    state logits; the text is generated by ``models.cxr.promptmrg.generate``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        vis = config["vision"]
        mem = config["memory"]
        self.visual_encoder = ResNetTrunk(vis["blocks"], vis["width"])
        width = self.visual_encoder.out_channels
        self.num_labels = int(config["num_labels"])
        self.num_states = int(config["num_states"])
        self.cls_head = nn.Linear(width + mem["d_model"], self.num_labels * self.num_states)
        self.vision_proj = nn.Linear(width, mem["d_model"])
        self.text_decoder = TextDecoder(config["text"], encoder_width=width)
        self.memory = MemoryTransformer(mem["d_model"], mem["heads"], mem["ffn"],
                                        mem["encoder_layers"], mem["decoder_layers"])

    def diagnose(self, image: torch.Tensor, memory: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, 224, 224), memory (B, K, d) -> patch features (B, N, C), state logits
        (B, num_states, num_labels)."""
        patches, avg = self.visual_encoder(image)
        query = self.vision_proj(avg).unsqueeze(0)
        hs = self.memory(memory.permute(1, 0, 2), query)
        logits = self.cls_head(torch.cat([avg, hs], dim=1))
        return patches, logits.view(-1, self.num_states, self.num_labels)


def init_reference_weights(model: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation (normal linear and embedding weights, zero biases) for the
    randomly weighted reference variant; convolutions keep PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
