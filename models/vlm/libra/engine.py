"""The ``libra`` engine: chest-radiograph findings from the current and the prior image with
Libra (Zhang et al., ACL Findings 2025, ``X-iZhang/Libra``).

The platform finds the prior (``StudyInput.prior``: the same patient's latest earlier study of
the domain) and this engine picks the frontal view of each study (``models.cxr.views``). Both
are preprocessed as the authors do (``models.vlm.libra.preprocess``), encoded by RAD-DINO,
fused by the TAC and spliced into the prompt at the image placeholder; the LLM writes the
Findings. Without a prior the current image is used twice, as the authors do, and then the
comparison guard (``models.vlm.libra.comparison``) removes every sentence of comparison
language, since no comparison was made. Libra has no classification head: the text's sentences
carry what the CXR labeller reads in them, and the composer lets one into a draft only when
trained findings agree.

Variants:

- ``reference``: the TAC exactly, a 12-layer 32-wide encoder at 56 px, a two-layer 64-wide
  Llama and a byte-level tokenizer made at load; random weights from the seed,
  ``trained=False``.
- ``checkpoint``: a hub folder (``config.json`` with the LLM and the ``mm_*`` keys, the shards,
  the tokenizer). RAD-DINO's weights come from the shards when they hold
  ``model.vision_tower.vision_tower.*``, else from ``config["vision_tower_dir"]`` (the
  ``microsoft/rad-dino`` folder the authors load at start-up).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from models.base import (
    ContractError,
    EngineResult,
    InputError,
    ModelInfo,
    ModelSpec,
    StudyInput,
    TextSection,
)
from models.cxr.statements import generated_sentences
from models.vlm.generation import GenerationSettings, generate
from models.vlm.hub import load_into, materialise, tie_lm_head, variant_of
from models.vlm.libra.comparison import strip_comparisons
from models.vlm.libra.tree import BASE_CONFIG, FAMILY, RAD_DINO, REFERENCE_CONFIG
from models.vlm.splice import expand_placeholders, tokenize_with_placeholder
from models.vlm.templates import template

VISION_PREFIX = "model.vision_tower.vision_tower."
# LibraConfig keys (LlamaConfig plus LLaVA's mm_* keys) that are not the language model's
_NOT_LLM = ("mm_", "image_", "tune_", "freeze_", "use_mm", "unfreeze_", "tokenizer_")
# the corpus the reference tokenizer is trained on: the prompt and findings-style sentences
REFERENCE_CORPUS = (
    "Provide a detailed description of the findings in the radiology image.",
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "There is mild cardiomegaly. Small left pleural effusion. Compared with the prior study, "
    "the right lower lobe opacity is unchanged. New since the previous radiograph.",
    "The assistant specialized in comparing Chest X-ray images, identifying differences, and "
    "noting temporal changes. USER: ASSISTANT:",
)


def llm_config_from(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items()
            if not k.startswith(_NOT_LLM) and not k.startswith("_")
            and k not in ("architectures", "model_type", "auto_map", "transformers_version")}


def check_libra_config(config: dict[str, Any], where: Path) -> None:
    """Refuse a checkpoint that is not a TAC Libra over all RAD-DINO layers."""
    projector = config.get("mm_projector_type")
    if projector != "TAC":
        raise ContractError(f"{where}/config.json: mm_projector_type is {projector!r}; this "
                            "engine hosts Libra's TAC connector only")
    layer = config.get("mm_vision_select_layer", "all")
    if str(layer) != "all":
        raise ContractError(f"{where}/config.json: mm_vision_select_layer is {layer!r}; the "
                            "TAC reads all encoder layers ('all')")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise ContractError(f"{where}/config.json: mm_vision_select_feature {feature!r} is not "
                            "supported (Libra uses 'patch')")


class LibraEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("report",)
    domains: ClassVar[tuple[str, ...]] = ("cxr",)

    def __init__(self, spec: ModelSpec) -> None:
        """Check the spec; nothing heavy is read until ``load()``."""
        v = variant_of(spec, FAMILY, "Libra", REFERENCE_CONFIG, BASE_CONFIG)
        self.spec, self.device, self.dtype = spec, v.device, v.dtype
        self.config, self.trained, self.hub = v.config, v.trained, v.hub
        self.load_notes: list[str] = []
        if self.hub is not None:
            check_libra_config(self.hub.config, self.hub.path)
        self.settings = GenerationSettings.from_config(self.config["generation"])
        self.model: Any = None
        self.tokenizer: Any = None
        self.template: Any = None
        self.eos_ids: list[int] = []

    # -- loading -----------------------------------------------------------------------------
    def _vision_config(self) -> dict[str, Any]:
        folder = self.config.get("vision_tower_dir")
        if self.hub is None or not folder:
            return dict(self.config.get("vision") or RAD_DINO)
        from models.runtime.checkpoint import read_config

        cfg = read_config(self._relative(folder))
        return {k: cfg.get(k, RAD_DINO[k]) for k in RAD_DINO}

    def _relative(self, value: str) -> Path:
        assert self.hub is not None
        p = Path(value)
        return p if p.is_absolute() else self.hub.path / p

    def _checkpoint_state(self, llm: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.hub is not None
        notes: list[str] = []
        state = self.hub.state_dict(notes)
        has_vision = any(k.startswith(VISION_PREFIX) for k in state)
        folder = self.config.get("vision_tower_dir")
        if not has_vision:
            if not folder:
                raise ContractError(
                    f"{self.hub.path} holds no RAD-DINO weights ({VISION_PREFIX}*); set "
                    "config['vision_tower_dir'] to the microsoft/rad-dino folder the authors "
                    "load at start-up")
            from models.runtime.checkpoint import load_state_dict

            vision = load_state_dict(self._relative(folder), notes=notes)
            state.update({VISION_PREFIX + k: v for k, v in vision.items()})
            notes.append(f"RAD-DINO weights read from {folder}")
        tie_lm_head(state, "", bool(llm.get("tie_word_embeddings")), notes)
        self.load_notes = notes
        return state

    def load(self) -> None:
        """Tokenizer and weights (random from the seed, or the checkpoint's). Once."""
        if self.model is not None:
            return
        from models.vlm.libra.net import build_libra, llama_config

        if self.hub is None:
            from models.vlm.reference import init_reference_weights, reference_tokenizer

            tok = reference_tokenizer(REFERENCE_CORPUS, ["<unk>"], bos="<s>", eos="</s>",
                                      pad="<pad>", vocab_size=int(self.config["tokenizer_vocab"]))
            llm = {**self.config["llm"], "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                   "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
            cfg = {"llm": llm, "vision": self.config["vision"]}
            model = materialise(lambda: build_libra(cfg))
            init_reference_weights(model, int(self.config.get("seed", 0)))
        else:
            tok = self.hub.tokenizer(self._relative(self.config["tokenizer_dir"])
                                     if self.config.get("tokenizer_dir") else None)
            llm = llm_config_from(self.hub.config)
            cfg = {"llm": llm, "vision": self._vision_config()}
            model = load_into(lambda: build_libra(cfg), self._checkpoint_state(llm),
                              what="Libra")
        name = self.config.get("template") or (
            "libra_llama_3" if "<|eot_id|>" in tok.get_vocab() else "libra_v1")
        self.template = template(name)
        stop_id = tok.convert_tokens_to_ids(self.template.stop)
        eos = [i for i in (llama_config(llm).eos_token_id, tok.eos_token_id) if i is not None]
        flat = [int(x) for e in eos for x in (e if isinstance(e, list) else [e])]
        if isinstance(stop_id, int) and stop_id != tok.unk_token_id:
            flat.append(stop_id)
        self.eos_ids = list(dict.fromkeys(flat))
        if tok.pad_token_id is None:  # the authors set pad to eos
            tok.pad_token_id = self.eos_ids[0]
        self.tokenizer = tok
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    # -- steps -------------------------------------------------------------------------------
    def prompt_ids(self, query: str) -> list[int]:
        assert self.template is not None
        prompt = self.template.render("<image>\n" + query)
        return tokenize_with_placeholder(prompt, self.tokenizer)

    def write(self, pair: torch.Tensor, query: str, settings: GenerationSettings
              ) -> tuple[str, dict[str, Any]]:
        """(2, 1, 3, S, S) current and prior -> the generated Findings and how it went."""
        self.load()
        model = self.model
        with torch.inference_mode():
            features = model.encode_images(pair.to(self.device, self.dtype))
            embeds = expand_placeholders(model.model.embed_tokens, self.prompt_ids(query),
                                         [features])
        out = generate(model, embeds, settings, self.tokenizer, self.eos_ids)
        return out.text, {**out.to_dict(), "visual_tokens": int(features.shape[0]),
                          "prompt_tokens": int(embeds.shape[1]), "template": self.template.name,
                          "settings": settings.to_dict()}

    def settings_for(self, study: StudyInput) -> GenerationSettings:
        """An interactive question is answered greedily (the same answer twice)."""
        if study.prompt is None:
            return self.settings
        return self.settings.replace(strategy="greedy", num_beams=1)

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        from models.vlm.libra.preprocess import preprocess_pair

        self.load()
        current, current_view = _frontal(study, "current")
        prior, prior_note = None, "no earlier study of this patient in this domain"
        prior_uid = prior_date = None
        if study.prior is not None:
            prior_uid = study.prior.study_uid
            prior_date = _date(study.prior)
            try:
                prior, _ = _frontal(study.prior, "prior")
                prior_note = ""
            except InputError as exc:
                prior_note = f"the prior study has no usable frontal image ({exc})"
        t0 = time.perf_counter()
        pair, dummy = preprocess_pair(current[0], prior[0] if prior else None,
                                      size=int(self.config["image_size"]))
        query = study.prompt.question if study.prompt is not None else str(self.config["query"])
        text, gen = self.write(pair, query, self.settings_for(study))
        seconds = time.perf_counter() - t0

        warnings: list[str] = []
        removed: list[dict[str, str]] = []
        if dummy:
            guarded = strip_comparisons(text)
            removed = [{"sentence": s, "term": t} for s, t in guarded.removed]
            text = guarded.text
            if removed:
                warnings.append(f"{len(removed)} sentence(s) of comparison language removed: "
                                f"no prior image was available ({prior_note})")
        if not self.trained:
            warnings.append("Libra reference variant: random weights; the text exercises the "
                            "pipeline and means nothing clinically")
        if gen["stopped"] == "timeout":
            warnings.append(f"generation stopped at the time limit "
                            f"({self.settings_for(study).timeout_s} s); the text may be cut short")
        sentences = generated_sentences(text)
        if dummy:
            fact = ("Libra was given no prior image (the current image stood in for it, as its "
                    f"authors do): {prior_note}.")
        else:
            fact = (f"Libra compared the current frontal radiograph with the prior of "
                    f"{prior_date or 'an unrecorded date'}.")
        raw = {
            "text": text, "generation": gen, "query": query,
            "current": {"file": str(current[0]), "instance_uid": current[1],
                        "view": current_view},
            "prior": ({"study_uid": prior_uid, "date": prior_date, "file": str(prior[0]),
                       "instance_uid": prior[1]} if prior else None),
            "dummy_prior": dummy, "prior_note": prior_note or None,
            "comparison_guard": {"applied": dummy, "removed": removed},
            "seconds": round(seconds, 3), "load_notes": list(self.load_notes),
            "facts": [{"text": fact, "measurements": [], "acquisition": {
                "prior_study_uid": prior_uid if not dummy else None,
                "prior_study_date": prior_date if not dummy else None,
                "prior_image": "none (current image used twice)" if dummy else
                Path(prior[0]).name if prior else None}}],
        }
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version,
                                            self.spec.sha256 if self.trained else None),
                            trained=self.trained,
                            text=[TextSection("findings", tuple(sentences))] if sentences else [],
                            warnings=warnings, raw=raw)


def _frontal(study: StudyInput, which: str) -> tuple[tuple[Path, str | None], str | None]:
    """((path, SOP Instance UID), view) of the study's frontal radiograph."""
    from models.cxr.views import LATERAL, select_views

    metadata = [study.metadata[i] if i < len(study.metadata) else {}
                for i in range(len(study.paths))]
    selection = select_views(list(zip(study.paths, metadata, strict=True)))
    if selection.frontal is None:
        raise InputError(f"Libra needs a frontal chest radiograph in the {which} study: "
                         f"{selection.reason}")
    view = getattr(selection, "frontal_view", None)
    if which == "prior" and view in LATERAL:
        # the TAC compares like with like; a lateral prior is no prior for a frontal current
        raise InputError(f"its only image is a {view} view")
    path = Path(selection.frontal[0] if isinstance(selection.frontal, tuple)
                else selection.frontal)
    meta = next((m for p, m in zip(study.paths, metadata, strict=True) if p == path), {})
    uid = meta.get("SOPInstanceUID")
    return (path, str(uid) if uid else None), view


def _date(study: StudyInput) -> str | None:
    raw = str((study.metadata[0] if study.metadata else {}).get("StudyDate") or "")
    if len(raw) == 8 and raw.isdigit():
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return None
