"""The ``medplib`` engine: answers about a point, a box or a drawn mask, and a pixel mask
through SAM-Med2D when the answer holds ``<SEG>`` (MedPLIB, Huang et al., AAAI 2025,
``ShawnHuang497/MedPLIB`` at 9c3efe9).

One question about one instance (``StudyInput.prompt``; MedPLIB is interactive and has no
study-level task):

1. the image (``models.vlm.images``) goes down both branches of ``models.pixel.preprocess``:
   CLIP (longest side 336, centred on the CLIP mean) and SAM (longest side 256, normalised,
   centred on zeros);
2. the region becomes a mask at the image's resolution (a point a 41 x 41 square, a box a
   filled rectangle, a drawn mask as given), its CLIP-grid cells become sample points, and
   the region feature (``region_fea_adapter``, bilinear samples, mean) takes the place of the
   region token (-300) after ``<region>``;
3. the ``llava_v1`` prompt, its 576 visual tokens at the image placeholder (-200), is answered
   greedily by the MoE Llama;
4. if the answer holds ``<SEG>``, the last-layer hidden state at the position that produced
   the first one (as the authors train it: ``input_ids[:, 1:] == seg``) goes through
   ``text_hidden_fcs`` into SAM-Med2D's prompt encoder and mask decoder; the low-resolution
   logits are taken back to the source image (``config["mask_postprocess"]``) and thresholded
   (``sigmoid > config["mask_threshold"]``, 0.1 as ``vqa_infer.py``) into a binary mask file.

Variants: ``reference`` (toy widths of every part, a byte-level tokenizer with MedPLIB's added
tokens, random weights, ``trained=False``) and ``checkpoint`` (a hub folder; CLIP and SAM-Med2D
weights inside it or in the folders ``vision_tower_dir`` and ``sam_dir`` beside it).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from models.base import (
    ContractError,
    EngineResult,
    GeneratedSentence,
    InputError,
    ModelInfo,
    ModelSpec,
    Region,
    StudyInput,
    TextSection,
)
from models.runtime.tree import merge_config
from models.vlm.generation import GenerationSettings, generate
from models.vlm.hub import variant_of
from models.vlm.templates import template

FAMILY = "medplib"
DOMAINS = ("cxr", "ct", "pathology")
POSTPROCESS = ("medplib", "centred_crop")


def _hub_model_config(hub_config: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The tree's config from a checkpoint's ``config.json`` (LLaVA layout: the Llama keys at
    the top, ``mm_*`` keys, the authors' ``moe`` dict), the published sizes for what it does
    not say (CLIP ViT-L/14-336, SAM-Med2D ViT-B at ``sam_img_size``)."""
    from models.pixel.tree import LLAVA_VISION

    llm_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    cfg = copy.deepcopy(checkpoint)
    cfg["llm"] = {k: hub_config[k] for k in llm_keys if hub_config.get(k) is not None}
    for k in LLAVA_VISION:
        if hub_config.get(k) is not None:
            cfg[k] = hub_config[k]
    if isinstance(hub_config.get("vision_config"), dict):
        cfg["vision"] = {**cfg["vision"], **hub_config["vision_config"]}
    if isinstance(hub_config.get("moe"), dict):
        cfg["moe"] = {**cfg["moe"], **hub_config["moe"]}
    if hub_config.get("out_dim"):
        cfg["out_dim"] = int(hub_config["out_dim"])
    if isinstance(hub_config.get("sam_config"), dict):  # MedGate's: SAM at other sizes
        cfg["sam"] = {**cfg["sam"], **hub_config["sam_config"]}
    if hub_config.get("sam_img_size"):
        cfg["sam"] = {**cfg["sam"], "image_size": int(hub_config["sam_img_size"])}
    cfg["vision_grid"] = int(cfg["vision"]["image_size"]) // int(cfg["vision"]["patch_size"])
    return cfg


class MedPLIBEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("ask", "segment")
    domains: ClassVar[tuple[str, ...]] = DOMAINS

    def __init__(self, spec: ModelSpec) -> None:
        from models.pixel import tree

        v = variant_of(spec, FAMILY, "MedPLIB", tree.REFERENCE_CONFIG, tree.BASE_CONFIG)
        self.spec, self.device, self.dtype = spec, v.device, v.dtype
        self.config, self.trained, self.hub = v.config, v.trained, v.hub
        self.load_notes: list[str] = []
        if self.hub is None:
            self.model_config = copy.deepcopy(self.config)
        else:
            self.model_config = _hub_model_config(self.hub.config,
                                                  tree.CHECKPOINT_CONFIGS["7b"])
        if self.config.get("mask_postprocess", "medplib") not in POSTPROCESS:
            raise ContractError(f"mask_postprocess must be one of {POSTPROCESS}")
        self.settings = GenerationSettings.from_config(self.config["generation"])
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_ids: list[int] = []
        self.seg_id: int | None = None

    # -- loading -----------------------------------------------------------------------------
    def _reference(self) -> tuple[Any, Any]:
        from models.pixel.net import build_medplib
        from models.pixel.preprocess import build_prompt
        from models.pixel.tree import ADDED_TOKENS
        from models.vlm.hub import materialise
        from models.vlm.reference import init_reference_weights, reference_tokenizer

        corpus = [build_prompt("What is shown in this region?", region=True),
                  "It is the left lung. <SEG>", "There is an opacity in the right lower zone."]
        tok = reference_tokenizer(corpus, list(ADDED_TOKENS), bos="<s>", eos="</s>",
                                  pad="<unk>", vocab_size=int(self.config["tokenizer_vocab"]))
        cfg = merge_config(self.model_config, {"llm": {
            "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}})
        model = materialise(lambda: build_medplib(cfg))
        init_reference_weights(model, int(self.config.get("seed", 0)))
        return model, tok

    def _checkpoint(self) -> tuple[Any, Any]:
        from models.pixel.net import buffer_rebuilder, build_medplib
        from models.runtime.checkpoint import load_state_dict
        from models.runtime.strict import materialize_meta_buffers, strict_load
        from models.vlm.hub import tie_lm_head

        notes: list[str] = []
        state = self.hub.state_dict(notes)
        # the authors load CLIP and SAM-Med2D from their own files at start-up; a site may
        # mount them beside the checkpoint instead of merging them into its shards
        for key, prefix in (("vision_tower_dir", "model.vision_tower.vision_tower."),
                            ("sam_dir", "model.visual_model.")):
            folder = self.config.get(key)
            if folder and not any(k.startswith(prefix) for k in state):
                part = load_state_dict(self.hub.path.parent / folder, notes=notes)
                if key == "vision_tower_dir":
                    part = {k: v for k, v in part.items() if k.startswith("vision_model.")}
                state.update({prefix + k: v for k, v in part.items()})
                notes.append(f"{prefix}* read from {folder}")
        # transformers 4.31 may have saved CLIP's position ids; they are recomputed
        stale = [k for k in state if k.endswith("embeddings.position_ids")]
        for k in stale:
            del state[k]
        if stale:
            notes.append("CLIP position_ids left out (recomputed)")
        tie_lm_head(state, "", bool(self.model_config["llm"].get("tie_word_embeddings")),
                    notes)
        cfg = self.model_config
        with torch.device("meta"):
            model = build_medplib(cfg)
        strict_load(model, state, what="MedPLIB")
        materialize_meta_buffers(model, buffer_rebuilder(model))
        self.load_notes = notes
        return model, self.hub.tokenizer()

    def load(self) -> None:
        if self.model is not None:
            return
        model, tok = self._reference() if self.hub is None else self._checkpoint()
        seg = str(self.config.get("seg_token") or "<SEG>")
        vocab = tok.get_vocab()
        missing = [t for t in (seg, "<region>", "</region>", "<im_start>", "<im_end>")
                   if t not in vocab]
        if missing:
            raise ContractError(f"the MedPLIB tokenizer lacks {missing}")
        self.seg_id = int(vocab[seg])
        self.eos_ids = [int(tok.eos_token_id)]
        self.tokenizer = tok
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    # -- steps -------------------------------------------------------------------------------
    def answer(self, rgb: np.ndarray, question: str, region: np.ndarray | None,
               settings: GenerationSettings) -> dict[str, Any]:
        """Text, generation facts and (when ``<SEG>`` was said) the mask logits at the
        source image's size."""
        from models.pixel import preprocess as pp
        from models.pixel.sam import postprocess_masks, postprocess_masks_as_medplib
        from models.vlm.splice import IMAGE_TOKEN_INDEX, expand_all

        self.load()
        model, dev, dt = self.model, self.device, self.dtype
        # the tree's own sizes: CLIP ViT-L/14 at 336 and SAM-Med2D at 256 for the release
        clip_size = int(self.model_config["vision"]["image_size"])
        sam_size = int(self.model_config["sam"]["image_size"])
        patch = int(self.model_config["vision"]["patch_size"])
        prompt = pp.build_prompt(question, region=region is not None,
                                 template=template(str(self.config.get("template") or
                                                       "llava_v1")))
        ids = pp.tokenize_with_region(prompt, self.tokenizer)
        points = None
        blocks: dict[int, list[torch.Tensor]] = {}
        with torch.inference_mode():
            clip = pp.clip_branch(rgb, size=clip_size)[None].to(dev, dt)
            visual, raw = model.encode_images(clip)
            blocks[IMAGE_TOKEN_INDEX] = [visual[0]]
            if region is not None:
                gen = torch.Generator().manual_seed(int(self.config.get("seed", 0)))
                points = pp.sample_region_points(region, int(self.config["max_sample_point"]),
                                                 gen, size=clip_size, patch=patch)
                blocks[pp.REGION_TOKEN_INDEX] = [model.region_feature(raw[0], points)[None]]
            embeds = expand_all(model.get_input_embeddings(), ids, blocks)
        out = generate(model, embeds, settings, self.tokenizer, self.eos_ids,
                       keep=(str(self.config.get("seg_token") or "<SEG>"),))
        facts: dict[str, Any] = {
            **out.to_dict(), "prompt_tokens": len(ids), "visual_tokens": int(visual.shape[1]),
            "region_points": None if points is None else int(points.shape[0]),
            "settings": settings.to_dict()}
        seg_at = out.ids.index(self.seg_id) if self.seg_id in out.ids else None
        logits = None
        if seg_at is not None:
            with torch.inference_mode():
                said = torch.tensor(out.ids[:seg_at], device=dev, dtype=torch.long)
                seq = torch.cat([embeds, model.get_input_embeddings()(said)[None]], dim=1)
                # the hidden state that produced <SEG>: the last position before it
                hidden = model.model(inputs_embeds=seq).last_hidden_state[0, -1]
                text_embeds = model.seg_prompt(hidden)[None, None]
                sam_in, input_size = pp.sam_branch(rgb, size=sam_size)
                sam = model.model.visual_model
                low = sam.masks_from_text(sam.image_embeddings(sam_in[None].to(dev, dt)),
                                          text_embeds)
                h, w = rgb.shape[:2]
                if self.config.get("mask_postprocess", "medplib") == "medplib":
                    logits = postprocess_masks_as_medplib(low.float(), input_size, (h, w))
                else:
                    logits = postprocess_masks(low.float(), input_size, (h, w), sam_size)
            facts["seg_token_at"] = seg_at
        return {"text": out.text, "generation": facts, "logits": logits,
                "stopped": out.stopped}

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        from models.masks import read_mask, write_mask
        from models.pixel import preprocess as pp
        from models.vlm.images import read_display_image

        prompt = study.prompt
        if prompt is None:
            raise InputError("MedPLIB answers questions about an image (POST /api/v1/studies/"
                             "{uid}/ask); it has no study-level task")
        if study.domain not in self.domains:
            raise InputError(f"MedPLIB reads {', '.join(self.domains)} images here, not a "
                             f"{study.domain} study")
        path, uid = _source(study)
        image = read_display_image(path, prompt.frame)
        shape = (image.height, image.width)
        try:
            if prompt.point is not None:
                region = pp.point_mask(*prompt.point, shape)
            elif prompt.box is not None:
                region = pp.box_mask(*prompt.box, shape)
            elif prompt.mask_path is not None:
                region = pp.drawn_mask(read_mask(prompt.mask_path), shape)
            else:
                region = None
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        self.load()
        t0 = time.perf_counter()
        seg_token = str(self.config.get("seg_token") or "<SEG>")
        try:
            got = self.answer(image.rgb, prompt.question, region, self.settings)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        seconds = time.perf_counter() - t0
        warnings: list[str] = []
        if not self.trained:
            warnings.append("MedPLIB reference variant: random weights; its text and mask "
                            "exercise the pipeline and mean nothing clinically")
        if got["generation"].get("region_points") == 0:
            grid = self.model.vision_grid
            warnings.append(f"the region covers no cell of the {grid} x {grid} CLIP grid (too "
                            "small for the image); the model saw an empty region, as the "
                            "authors' code gives it")
        if got["stopped"] == "timeout":
            warnings.append(f"generation stopped at the time limit ({self.settings.timeout_s} "
                            "s)")
        regions: list[Region] = []
        mask_facts: dict[str, Any] | None = None
        if got["logits"] is not None:
            probability = torch.sigmoid(got["logits"][0, 0]).cpu().numpy()
            binary = (probability > float(self.config.get("mask_threshold", 0.1)))
            mask = binary.astype(np.uint8)
            mask_facts = {"pixels": int(mask.sum()), "shape": list(mask.shape),
                          "postprocess": self.config.get("mask_postprocess", "medplib"),
                          "threshold": float(self.config.get("mask_threshold", 0.1))}
            if mask.any():
                if study.output_dir is None:
                    raise ContractError("MedPLIB writes its mask beside the result; the "
                                        "study input has no output folder")
                file = write_mask(Path(study.output_dir), "medplib-mask", mask)
                regions.append(Region(id="mask-1", kind="mask", instance_uid=uid,
                                      frame=prompt.frame, mask_path=str(file),
                                      shape=tuple(mask.shape), label=_label(prompt.question)))
            else:
                warnings.append("the answer asked for a mask (<SEG>) but no pixel passed the "
                                "threshold")
        text = got["text"].replace(seg_token, "").strip()
        sentences = _sentences(text, study.domain)
        raw = {"question": prompt.question, "answer": got["text"], "text": text,
               "prompt": prompt.to_dict(), "image": {
                   "file": str(path), "instance_uid": uid, "frame": prompt.frame,
                   "width": image.width, "height": image.height, "steps": list(image.steps)},
               "region_mask_pixels": None if region is None else int(region.sum()),
               "generation": got["generation"], "mask": mask_facts,
               "seconds": round(seconds, 3), "load_notes": list(self.load_notes)}
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version,
                                            self.spec.sha256 if self.trained else None),
                            trained=self.trained, regions=regions,
                            text=[TextSection("answer", tuple(sentences))] if sentences else [],
                            warnings=warnings, raw=raw)


def _source(study: StudyInput) -> tuple[Path, str]:
    uid = study.prompt.instance_uid if study.prompt else None
    path = study.instance_path(uid)
    if path is None:
        raise InputError(f"the question points at instance {uid}, which is not in this study")
    return path, uid


def _label(question: str) -> str:
    """The segment's label: the question, short (a viewer shows it beside the mask)."""
    words = question.replace("<region>", "").split()
    text = " ".join(words)
    return (text[:60] + "...") if len(text) > 63 else text or "MedPLIB mask"


def _sentences(text: str, domain: str) -> list[GeneratedSentence]:
    if domain == "cxr":
        from models.cxr.statements import generated_sentences

        return generated_sentences(text)
    from models.cxr.labeller import split_sentences

    return [GeneratedSentence(text[a:b].strip()) for a, b in split_sentences(text)
            if text[a:b].strip()]
