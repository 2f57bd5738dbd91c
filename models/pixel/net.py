"""MedPLIB's network with the state-dict names of its release (``ShawnHuang497/MedPLIB`` at
9c3efe9, the weights ``Huangxs/MedPLIB-7b-2e``), written for MedGate.

Where the parts sit. ``MedPLIBForCausalLM`` (``model/MedPLIB.py``) is a Llama causal LM whose
``self.model`` is ``MedPLIBModel``: LLaVA's ``LlavaMetaModel`` (``model/medplib/model/
medplib_arch.py``) plus ``MedPLIBMetaModel`` (``model/MedPLIB.py``). Every added module therefore
hangs under ``model.``, none at the root:

- ``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``: LLaVA-v1.5-7B's
  Vicuna/Llama-2-7B, the vocabulary grown to 32,267 (``train_ds_medplib.py`` adds the nine task
  tokens, ``<gen_1>`` ... ``<gen_256>`` and ``<im_start>``/``<im_end>``);
- ``model.layers.N.mlp``: a DeepSpeed ``MoE`` (deepspeed 0.13.1, ``moe/layer.py``) in each layer
  of ``moe_layers_idx`` (all 32 in the release, ``--moe_mode dense``): ``deepspeed_moe.gate.wg``
  (a bias-free linear, hidden -> experts) and ``deepspeed_moe.experts.deepspeed_experts.E``, deep
  copies of the layer's ``LlamaMLP`` (``gate_proj``, ``up_proj``, ``down_proj``). With
  ``use_residual`` false (the release) the layer has no other parameters (no ``mlp`` copy, no
  ``coefficient``);
- ``model.vision_tower.vision_tower.vision_model.*``: CLIP ViT-L/14-336 (LLaVA's
  ``CLIPVisionTower`` holds a transformers 4.31 ``CLIPVisionModel`` as ``vision_tower``, whose
  only child is ``vision_model``). Transformers 5 flattened ``CLIPVisionModel`` (its children are
  now ``embeddings``, ``pre_layrnorm``, ``encoder``, ``post_layernorm``), so its module is kept
  under one more ``vision_model`` level here; the names below it are unchanged;
- ``model.mm_projector.0`` / ``.2``: ``mlp2x_gelu`` (``multimodal_projector/builder.py``);
- ``model.region_fea_adapter``: Linear(1024 -> 4096) over the CLIP patch features
  (``LlavaMetaModel.__init__``);
- ``model.text_hidden_fcs.0.0`` / ``.0.2``: ``ModuleList([Sequential(Linear(H, H), ReLU,
  Linear(H, out_dim), Dropout(0.0))])`` (``MedPLIBMetaModel.initialize_bird_modules``);
- ``model.visual_model``: SAM-Med2D ViT-B (``models.pixel.sam``).

The released checkpoint was written by ``merge_lora_weights_and_save_hf_model_moe.py`` from the
whole model's ``state_dict()`` (its ``vision_tower`` filter is commented out), so it carries the
CLIP and SAM weights too; the authors' code still reads ``clip-vit-large-patch14-336`` and
``sam-med2d_b.pth`` while it constructs the model, before those weights are overwritten.

Routing. MedPLIB builds each ``MoE`` with ``k=1``, ``eval_capacity_factor`` 2.0,
``min_capacity`` 0, ``use_residual`` false, and runs it in eval mode. DeepSpeed's ``top1gating``
then takes, for every token of the flattened batch, the softmax of the fp32 gate logits, sends
the token to its argmax expert and scales that expert's output by the gate probability. An
expert's capacity is ``ceil(tokens / experts * eval_capacity_factor)``; with 2 experts and a
factor of 2 that is the number of tokens, so no token is ever dropped and the random token
selection never decides anything. :class:`DeepSpeedMoEMLP` computes exactly that without the
capacity buffers, and the config check refuses a factor below the number of experts (where
DeepSpeed would drop tokens at random and this module would not).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from models.base import ContractError
from models.pixel.sam import SamMed2D, build_sam_med2d

# LLaVA's defaults for the keys a MedPLIB config may leave out.
VISION_DEFAULTS: dict[str, Any] = {"mm_vision_select_layer": -2,
                                   "mm_vision_select_feature": "patch",
                                   "mm_projector_type": "mlp2x_gelu"}
MOE_KEYS = frozenset({"moe_enable", "moe_mode", "moe_layers_idx", "num_experts", "ep_size",
                      "top_k_experts", "capacity_factor", "eval_capacity_factor",
                      "min_capacity", "use_residual", "router_aux_loss_coef", "train_modules"})


# -- the mixture of experts -----------------------------------------------------------------
class TopOneGate(nn.Module):
    """DeepSpeed's ``TopKGate`` with ``k=1``: its only parameter is ``wg``."""

    def __init__(self, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.wg = nn.Linear(hidden, num_experts, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, H) tokens -> (expert index (S,), gate probability (S,) in fp32). DeepSpeed turns
        ``wg`` into fp32 and gates the fp32 input; argmax keeps the first of equal values."""
        logits = F.linear(tokens.float(), self.wg.weight.float())
        probs = logits.softmax(dim=-1)
        index = probs.argmax(dim=-1)
        return index, probs.gather(-1, index[:, None])[:, 0]


class Experts(nn.Module):
    """DeepSpeed's ``Experts``: ``deepspeed_experts``, one copy of the layer's MLP each."""

    def __init__(self, config: LlamaConfig, num_experts: int) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(LlamaMLP(config) for _ in range(num_experts))


class MOELayer(nn.Module):
    """DeepSpeed's ``MOELayer``: ``gate`` and ``experts``."""

    def __init__(self, config: LlamaConfig, num_experts: int) -> None:
        super().__init__()
        self.gate = TopOneGate(config.hidden_size, num_experts)
        self.experts = Experts(config, num_experts)


class DeepSpeedMoEMLP(nn.Module):
    """A decoder layer's ``mlp`` as DeepSpeed's ``MoE`` wrapper leaves it (``deepspeed_moe``),
    routing top-1 as described in the module docstring. Returns only the hidden states (the
    authors' layer forward drops the auxiliary loss and the expert counts at inference)."""

    def __init__(self, config: LlamaConfig, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.deepspeed_moe = MOELayer(config, num_experts)

    def route(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert index, gate probability) per token of ``hidden`` (..., H), flattened."""
        return self.deepspeed_moe.gate(hidden.reshape(-1, hidden.shape[-1]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = hidden.reshape(-1, hidden.shape[-1])
        index, weight = self.deepspeed_moe.gate(tokens)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.deepspeed_moe.experts.deepspeed_experts):
            sel = (index == e).nonzero().squeeze(-1)
            if sel.numel():
                picked = tokens.index_select(0, sel)
                scale = weight.index_select(0, sel).to(tokens.dtype)[:, None]
                out.index_copy_(0, sel, expert(picked) * scale)
        return out.reshape(hidden.shape)


def moe_settings(moe: dict[str, Any], num_layers: int) -> list[tuple[int, int]]:
    """(layer index, number of experts) for each MoE layer of a MedPLIB ``moe`` block (the
    authors' ``config.moe``), refusing settings this routing does not reproduce."""
    unknown = sorted(set(moe) - MOE_KEYS)
    if unknown:
        raise ContractError(f"MedPLIB moe config: unknown keys {unknown}")
    if not moe.get("moe_enable", True):
        return []
    layers = moe.get("moe_layers_idx")
    if layers is None:  # initialize_moe_modules: the layers named by moe_mode
        mode = moe.get("moe_mode", "dense")
        every = list(range(num_layers))
        by_mode = {"dense": every, "sparse": every[::2], "first_half": every[:num_layers // 2],
                   "second_half": every[num_layers // 2:]}
        if mode not in by_mode:
            raise ContractError(f"MedPLIB moe config: moe_mode {mode!r} is not one of "
                                f"{sorted(by_mode)} and no moe_layers_idx is given")
        layers = by_mode[mode]
    layers = [int(i) for i in layers]
    if len(set(layers)) != len(layers) or not all(0 <= i < num_layers for i in layers):
        raise ContractError(f"MedPLIB moe config: moe_layers_idx {layers} must name distinct "
                            f"layers of the {num_layers}")
    experts = moe.get("num_experts", 2)
    counts = [int(experts)] * len(layers) if isinstance(experts, int) else [int(n) for n in
                                                                            experts]
    if len(counts) == 1 and len(layers) > 1:
        counts = counts * len(layers)
    if len(counts) != len(layers) or min(counts, default=1) < 1:
        raise ContractError(f"MedPLIB moe config: num_experts {experts} does not fit "
                            f"{len(layers)} MoE layers")
    if int(moe.get("top_k_experts", 1)) != 1:
        raise ContractError("MedPLIB moe config: only top-1 routing (the release) is built")
    if moe.get("use_residual", False):
        raise ContractError("MedPLIB moe config: use_residual (a residual MLP and its "
                            "coefficient) is not built; the release has it off")
    if int(moe.get("ep_size", 1)) != 1:
        raise ContractError("MedPLIB moe config: ep_size must be 1 (all experts local)")
    factor = float(moe.get("eval_capacity_factor", 2.0))
    if factor < max(counts, default=1):
        raise ContractError(f"MedPLIB moe config: eval_capacity_factor {factor} is below the "
                            f"number of experts; DeepSpeed would drop tokens at random there, "
                            f"which this routing does not do")
    return list(zip(layers, counts, strict=True))


# -- CLIP (transformers 4 names) --------------------------------------------------------------
class ClipVisionModelV4(nn.Module):
    """transformers 4's ``CLIPVisionModel`` layout: the transformer as ``vision_model``."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class ClipVisionTower(nn.Module):
    """LLaVA's ``CLIPVisionTower``: hidden state ``select_layer`` of the encoder (index into
    transformers' ``hidden_states``, the first being the pre-layernormed embeddings), without
    the CLS token for ``select_feature == "patch"``."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int, select_feature: str) -> None:
        super().__init__()
        layers = config.num_hidden_layers
        if not -(layers + 1) <= select_layer <= layers:
            raise ContractError(f"mm_vision_select_layer {select_layer} is not a hidden state "
                                f"of a {layers}-layer CLIP")
        if select_feature not in ("patch", "cls_patch"):
            raise ContractError(f"mm_vision_select_feature {select_feature!r} is not 'patch' "
                                "or 'cls_patch'")
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.vision_tower = ClipVisionModelV4(config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        vit = self.vision_tower.vision_model
        size = vit.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ContractError(f"CLIP input must be (B, 3, {size}, {size}), not "
                                f"{list(pixels.shape)}")
        x = vit.pre_layrnorm(vit.embeddings(pixels.to(vit.embeddings.patch_embedding.weight.dtype)))
        depth = self.select_layer % (len(vit.encoder.layers) + 1)
        for layer in vit.encoder.layers[:depth]:
            x = layer(x, None)
        return x[:, 1:] if self.select_feature == "patch" else x


def build_projector(kind: str, vision_width: int, width: int) -> nn.Module:
    """LLaVA's ``build_vision_projector``: ``linear`` or ``mlp{N}x_gelu``."""
    if kind == "linear":
        return nn.Linear(vision_width, width)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match or int(match.group(1)) < 1:
        raise ContractError(f"mm_projector_type {kind!r} is not 'linear' or 'mlpNx_gelu'")
    parts: list[nn.Module] = [nn.Linear(vision_width, width)]
    for _ in range(1, int(match.group(1))):
        parts += [nn.GELU(), nn.Linear(width, width)]
    return nn.Sequential(*parts)


# -- the whole model --------------------------------------------------------------------------
def llama_config(cfg: dict[str, Any]) -> LlamaConfig:
    return LlamaConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})


class MedPLIBForCausalLM(LlamaForCausalLM):
    """Built from a MedPLIB config dict: ``llm`` (LlamaConfig keys), ``vision`` (CLIPVisionConfig
    keys), ``moe`` (the authors' ``config.moe``), ``sam`` (``models.pixel.sam``), ``out_dim``,
    ``vision_grid`` (patches per side) and optionally the ``mm_*`` keys of
    :data:`VISION_DEFAULTS`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        for key in ("llm", "vision", "moe", "sam", "out_dim"):
            if key not in cfg:
                raise ContractError(f"MedPLIB config: {key!r} is missing")
        llm = llama_config(cfg["llm"])
        super().__init__(llm)
        self.medplib_config = copy.deepcopy(dict(cfg))
        opts = {**VISION_DEFAULTS, **{k: cfg[k] for k in VISION_DEFAULTS if k in cfg}}
        vision = CLIPVisionConfig(**cfg["vision"])
        grid = vision.image_size // vision.patch_size
        if vision.image_size % vision.patch_size or int(cfg.get("vision_grid", grid)) != grid:
            raise ContractError(f"MedPLIB config: vision_grid {cfg.get('vision_grid')} does not "
                                f"match CLIP image_size {vision.image_size} / patch_size "
                                f"{vision.patch_size}")
        self.vision_grid = grid
        out_dim, prompt_dim = int(cfg["out_dim"]), int(cfg["sam"]["prompt_embed_dim"])
        if out_dim != prompt_dim:
            raise ContractError(f"MedPLIB config: out_dim {out_dim} must be SAM's prompt "
                                f"width {prompt_dim}")
        for layer, experts in moe_settings(dict(cfg["moe"]), llm.num_hidden_layers):
            self.model.layers[layer].mlp = DeepSpeedMoEMLP(llm, experts)
        width = llm.hidden_size
        self.model.vision_tower = ClipVisionTower(vision, int(opts["mm_vision_select_layer"]),
                                                  str(opts["mm_vision_select_feature"]))
        self.model.mm_projector = build_projector(str(opts["mm_projector_type"]),
                                                  vision.hidden_size, width)
        self.model.region_fea_adapter = nn.Linear(vision.hidden_size, width)
        self.model.text_hidden_fcs = nn.ModuleList([nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_dim), nn.Dropout(0.0))])
        self.model.visual_model = build_sam_med2d(dict(cfg["sam"]))

    def moe_layers(self) -> dict[int, DeepSpeedMoEMLP]:
        return {i: layer.mlp for i, layer in enumerate(self.model.layers)
                if isinstance(layer.mlp, DeepSpeedMoEMLP)}

    def encode_images(self, clip_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) CLIP-normalised pixels -> ((B, N, H) projected visual tokens, (B, N,
        vision width) raw patch features), N = ``vision_grid`` squared (576 for 336 px)."""
        raw = self.model.vision_tower(clip_pixels)
        return self.model.mm_projector(raw), raw

    def region_feature(self, raw: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """One (H,) region embedding: ``region_fea_adapter`` over the (N, vision width) patch
        features of one image, the (grid, grid) map sampled bilinearly at ``points`` (P, 2),
        ``(x, y)`` in [0, 1] mapped to [-1, 1] with ``align_corners=True`` (in fp32, zero
        padding), and the mean over the points in the adapter's dtype; zeros for no points
        (the authors' ``nan_to_num``). This is ``extract_region_feature`` in
        ``medplib_arch.py``. Choosing the points is the caller's: the authors take the region
        mask at the CLIP input size, shrink it by 1/14 (nearest, to grid x grid;
        ``LazySupervisedDataset.py``), and use its non-zero pixels as ``(col / grid,
        row / grid)``, at most ``max_sample_point`` (512) of them drawn at random."""
        g = self.vision_grid
        if raw.dim() != 2 or raw.shape[0] != g * g:
            raise ContractError(f"region_feature takes ({g * g}, C) patch features of one image, "
                                f"not {list(raw.shape)}")
        if points.dim() != 2 or points.shape[-1] != 2:
            raise ContractError(f"region points must be (P, 2) (x, y), not {list(points.shape)}")
        adapted = self.model.region_fea_adapter(raw)
        if points.shape[0] == 0:
            return adapted.new_zeros(adapted.shape[-1])
        fmap = adapted.reshape(g, g, -1).permute(2, 0, 1)[None].float()
        grid = (2.0 * points.to(fmap.device).float() - 1.0)[None, :, None, :]
        sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        # the authors cast the samples back before the mean (bf16 in, bf16 mean)
        return sampled[0, :, :, 0].to(adapted.dtype).mean(dim=1).nan_to_num()

    def seg_prompt(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) last-layer hidden states after the final norm (the authors'
        ``hidden_states[-1]`` at ``<SEG>``) -> (..., out_dim) SAM text prompts."""
        return self.model.text_hidden_fcs[0](hidden)


def build_medplib(cfg: dict[str, Any]) -> MedPLIBForCausalLM:
    return MedPLIBForCausalLM(cfg)


# -- buffers that a state dict does not hold --------------------------------------------------
def buffer_rebuilder(model: nn.Module) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
    """For ``models.runtime.strict.materialize_meta_buffers`` after a meta build and an assign
    load: the rotary ``inv_freq`` (recomputed from the owner's config), CLIP's ``position_ids``
    and SAM's ``pixel_mean`` / ``pixel_std``; None (refused by name) for anything else."""

    def rebuild(name: str, _buf: torch.Tensor) -> torch.Tensor | None:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if type(owner).__name__.endswith("RotaryEmbedding"):
            with torch.device("cpu"):
                return getattr(type(owner)(owner.config), leaf)
        if leaf == "position_ids" and hasattr(owner, "num_positions"):
            return torch.arange(int(owner.num_positions)).expand((1, -1))
        if isinstance(owner, SamMed2D) and leaf in ("pixel_mean", "pixel_std"):
            return torch.tensor(owner.cfg[leaf], dtype=torch.float32).view(-1, 1, 1)
        return None

    return rebuild


def sample_points(points: Sequence[Sequence[float]] | torch.Tensor, limit: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """At most ``limit`` of ``points`` (P, 2), drawn without replacement as the authors'
    ``rand_sample`` does (all of them when there are no more than ``limit``)."""
    pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    if pts.shape[0] <= limit:
        return pts
    return pts[torch.randperm(pts.shape[0], generator=generator)[:limit]]


__all__ = ["DeepSpeedMoEMLP", "MedPLIBForCausalLM", "build_medplib", "buffer_rebuilder",
           "llama_config", "moe_settings", "sample_points"]
