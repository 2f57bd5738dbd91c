"""The ``promptmrg`` engine: chest-radiograph report generation with PromptMRG (Jin et al.,
AAAI 2024, ``jhb86253817/PromptMRG``).

One frontal view is read (``models.cxr.views.select_views``, ``models.cxr.image``) and
preprocessed as the authors do at test time. The ResNet features and the memory of k = 21 report
features give the 18 x 4 diagnosis; its states become the forced prefix of the BERT decoder,
which writes the report (``models.cxr.promptmrg.generate``). The 14 CheXpert observations
become findings: the argmax state of the 4-state head (``[POS]`` present, ``[NEG]`` absent,
``[UNC]`` uncertain; ``[BLA]``, "not mentioned", gives no finding) with P(positive) as the score.
The report's sentences are linked to the findings they express by the CXR labeller
(``models.cxr.labeller``, whose observation codes the findings share). ``raw``
keeps all 18 states, their probabilities and the text.

Variants:

- ``reference``: a small trunk, a two-layer decoder, the same heads and prefix mechanism, random
  weights from a fixed seed, 21 random 512-d memory vectors and the built-in word list as
  vocabulary (or ``config["tokenizer_dir"]``). ``trained=False``: nothing it says reaches report
  text.
- ``checkpoint``: the authors' ``BLIP_Decoder`` state dict (``.pth``, or a folder / safetensors
  export), loaded strictly; the bert-base-uncased tokenizer (``config["tokenizer_dir"]`` or the
  checkpoint folder); the report-feature file ``config["report_features"]`` (the authors'
  ``clip_text_features.json``, N x 512; ``.json``, ``.npy`` or ``.safetensors``). The authors
  pick each study's 21 reports with a MIMIC-CXR CLIP image tower that they do not release and
  MedGate does not have, so ``config["retrieval"]`` must say what to do instead: only
  ``"centroid"`` exists (the 21 reports nearest the mean of the database, the same for every
  study, with a warning on each result). Without it the spec is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from models.base import (
    ContractError,
    EngineResult,
    Finding,
    InputError,
    ModelInfo,
    ModelSpec,
    StudyInput,
    TextSection,
    Where,
)
from models.cxr import labeller
from models.cxr.promptmrg import preprocess as prep
from models.cxr.promptmrg.generate import (
    GenerationSettings,
    build_prefix,
    generate,
    strip_prefix,
)
from models.cxr.promptmrg.net import PromptMRG, init_reference_weights
from models.cxr.promptmrg.text import check_tokenizer, load_tokenizer
from models.cxr.promptmrg.tree import (
    CHECKPOINT_CONFIG,
    FAMILY,
    REFERENCE_CONFIG,
    STATE_TOKENS,
)
from models.cxr.statements import (  # noqa: F401 -- MEANING re-exported
    MEANING,
    OBSERVATIONS,
    generated_sentences,
    observation_code,
)
from models.runtime.checkpoint import describe, load_state_dict
from models.runtime.device import resolve_device, resolve_dtype
from models.runtime.strict import strict_load
from models.runtime.tree import merge_config

LABELS = tuple(c for c, _ in OBSERVATIONS) + tuple(f"auxiliary_{i}" for i in range(15, 19))
# index of a state in the 4-state head -> finding state; [BLA] (0) means "not mentioned"
FINDING_STATE = {1: "present", 2: "absent", 3: "uncertain"}
RETRIEVALS = ("centroid",)
MEMORY_FILE_SUFFIXES = (".json", ".npy", ".safetensors")


# -- report features (the memory) ------------------------------------------------------------
def load_report_features(path: Path) -> np.ndarray:
    """An (N, d) float32 array from the authors' JSON list of lists, a ``.npy`` array or a
    ``.safetensors`` file holding one tensor (or one named ``features``)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ContractError(f"report-feature file not found: {path}")
    try:
        if suffix == ".json":
            arr = np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float32)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if "features" not in tensors and len(tensors) != 1:
                raise ContractError(f"{path} holds {sorted(tensors)}: name the features "
                                    "tensor 'features'")
            arr = np.asarray(tensors.get("features", next(iter(tensors.values()))),
                             dtype=np.float32)
        else:
            raise ContractError(f"report features must be one of {MEMORY_FILE_SUFFIXES}, not "
                                f"{path.name}")
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read the report features {path}: {exc}") from exc
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ContractError(f"report features must be a finite (N, d) array; {path} holds "
                            f"shape {tuple(arr.shape)}")
    return arr


def centroid_memory(features: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """The ``k`` features nearest (cosine) the mean of the normalised database, most typical
    first; the same for every study."""
    if features.shape[0] < k:
        raise ContractError(f"the report-feature file holds {features.shape[0]} reports; the "
                            f"memory needs {k}")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    centre = unit.mean(axis=0)
    order = np.argsort(-(unit @ centre), kind="stable")[:k]
    return features[order], [int(i) for i in order]


def reference_memory(k: int, d: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(k, d, generator=gen).numpy()


# -- checkpoint ------------------------------------------------------------------------------
POSITION_IDS = "text_decoder.bert.embeddings.position_ids"


def normalise_state(state: dict[str, torch.Tensor], max_positions: int
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap a DataParallel ``module.`` prefix and supply BLIP's constant ``position_ids``
    buffer when an export left it out."""
    notes: list[str] = []
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("DataParallel 'module.' prefix removed")
    if POSITION_IDS not in state:
        state = {**state, POSITION_IDS: torch.arange(max_positions)[None]}
        notes.append(f"constant buffer {POSITION_IDS} supplied (not in the file)")
    return state, notes


def load_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> PromptMRG:
    """The model holding ``state``, built on the meta device and loaded strictly."""
    with torch.device("meta"):
        model = PromptMRG(config)
    strict_load(model, state, what="PromptMRG")
    return model


def _relative_to(folder: Path, value: str | None) -> Path | None:
    if not value:
        return None
    return Path(value) if Path(value).is_absolute() else folder / value


class PromptMrgEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("report", "classify")
    domains: ClassVar[tuple[str, ...]] = ("cxr",)

    def __init__(self, spec: ModelSpec) -> None:
        """Check the spec and its config; nothing is read until ``load()``."""
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        self.spec = spec
        self.device = resolve_device(spec.device or "cpu")
        self.dtype = resolve_dtype(self.device, spec.dtype)
        self.weights: Path | None = None
        self.load_notes: list[str] = []
        if spec.variant == "reference":
            self.config = merge_config(REFERENCE_CONFIG, spec.config)
            self.trained = False
            self.tokenizer_dir = (Path(self.config["tokenizer_dir"])
                                  if self.config.get("tokenizer_dir") else None)
            self.features_path = None
        elif spec.variant == "checkpoint":
            self.config = merge_config(CHECKPOINT_CONFIG, spec.config)
            self.trained = True
            self.weights = Path(str(spec.weights_path))
            if not self.weights.exists():
                raise ContractError(f"PromptMRG weights not found: {self.weights}")
            layout = describe(self.weights)
            folder = layout.root if layout.kind == "folder" else layout.root.parent
            self.tokenizer_dir = _relative_to(folder, self.config.get("tokenizer_dir"))
            if self.tokenizer_dir is None:
                if not layout.tokenizer_files:
                    raise ContractError("a PromptMRG checkpoint spec needs "
                                        "config['tokenizer_dir'] (the bert-base-uncased "
                                        "tokenizer files) unless the checkpoint folder holds "
                                        "them")
                self.tokenizer_dir = folder
            self.features_path = _relative_to(folder, self.config.get("report_features"))
            if self.features_path is None:
                raise ContractError("a PromptMRG checkpoint spec needs config['report_features']"
                                    " (the N x 512 report-feature file that ships with the "
                                    "weights, clip_text_features.json)")
            if self.config.get("retrieval") not in RETRIEVALS:
                raise ContractError(
                    "PromptMRG's memory holds 21 reports retrieved per study with the authors' "
                    "MIMIC-CXR CLIP image tower, which is not released and MedGate does not "
                    "have; set config['retrieval'] to 'centroid' to use the 21 reports nearest "
                    "the database mean for every study (image-independent), or do not run this "
                    f"checkpoint (got {self.config.get('retrieval')!r})")
        else:
            raise ContractError("PromptMRG has a 'reference' and a 'checkpoint' variant, not "
                                f"{spec.variant!r}")
        self.settings = GenerationSettings.from_config(self.config["generation"])
        self.weights_sha256 = spec.sha256 if self.trained else None
        self.model: PromptMRG | None = None
        self.tokenizer: Any = None
        self.memory: torch.Tensor | None = None
        self.memory_info: dict[str, Any] = {}

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Tokenizer, weights (random from the seed, or the checkpoint's) and the memory.
        Calling it again does nothing."""
        if self.model is not None:
            return
        tok = load_tokenizer(self.tokenizer_dir)
        mem_cfg = self.config["memory"]
        k, d = int(mem_cfg["k"]), int(mem_cfg["d_model"])
        if self.weights is None:
            self.config["text"]["vocab_size"] = len(tok)
            check_tokenizer(tok, len(tok))
            seed = int(self.config.get("seed", 0))
            torch.manual_seed(seed)
            model = PromptMRG(self.config)
            init_reference_weights(model)
            memory = reference_memory(k, d, seed)
            self.memory_info = {"source": "reference: random vectors from a fixed seed", "k": k}
        else:
            check_tokenizer(tok, int(self.config["text"]["vocab_size"]))
            notes: list[str] = []
            state = load_state_dict(self.weights, notes=notes)
            state, more = normalise_state(state,
                                          int(self.config["text"]["max_position_embeddings"]))
            self.load_notes = notes + more
            model = load_model(self.config, state)
            assert self.features_path is not None
            feats = load_report_features(self.features_path)
            if feats.shape[1] != d:
                raise ContractError(f"report features are {feats.shape[1]}-d; the memory reads "
                                    f"{d}-d features")
            memory, idx = centroid_memory(feats, k)
            self.memory_info = {"source": "centroid", "k": k, "indices": idx,
                                "file": str(self.features_path),
                                "database_reports": int(feats.shape[0])}
        self.tokenizer = tok
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.memory = torch.from_numpy(memory).to(self.device, self.dtype)[None]

    # -- steps -------------------------------------------------------------------------------
    def diagnose(self, image: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(1, 3, 224, 224) -> patch features (1, N, C) and state probabilities (4, 18)."""
        self.load()
        assert self.model is not None and self.memory is not None
        with torch.no_grad():
            patches, logits = self.model.diagnose(image.to(self.device, self.dtype), self.memory)
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        return patches, probs

    def report(self, patches: torch.Tensor, states: list[int], settings: GenerationSettings
               ) -> tuple[str, dict[str, Any]]:
        assert self.model is not None
        prefix = build_prefix(states, self.tokenizer)
        out = generate(self.model.text_decoder, prefix, patches, settings,
                       eos_id=self.tokenizer.sep_token_id)
        text = strip_prefix(out.ids, out.prefix_length, self.tokenizer)
        return text, {"prefix_tokens": len(prefix), "generated_tokens": len(out.new_ids),
                      "stopped": out.stopped, "num_beams": settings.num_beams,
                      "min_length": settings.min_length,
                      "max_new_tokens": settings.max_new_tokens}

    def settings_for(self, study: StudyInput) -> GenerationSettings:
        """Beam search for studies; greedy decoding for an interactive request (a prompt)."""
        if study.prompt is None:
            return self.settings
        return GenerationSettings(**{**self.settings.__dict__, "num_beams": 1})

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        from models.cxr.image import read_radiograph
        from models.cxr.views import select_views

        self.load()
        metadata = [study.metadata[i] if i < len(study.metadata) else {}
                    for i in range(len(study.paths))]
        selection = select_views(list(zip(study.paths, metadata, strict=True)))
        if selection.frontal is None:
            raise InputError(f"PromptMRG needs a frontal chest radiograph: {selection.reason}")
        path = Path(selection.frontal[0] if isinstance(selection.frontal, tuple)
                    else selection.frontal)
        meta = next((m for p, m in zip(study.paths, metadata, strict=True) if p == path), {})
        uid = meta.get("SOPInstanceUID")
        t0 = time.perf_counter()
        image = prep.preprocess(read_radiograph(path).to_rgb_uint8(),
                                int(self.config["resize"]), int(self.config["image_size"]))
        patches, probs = self.diagnose(image)
        states = [int(s) for s in probs.argmax(axis=0)]
        t1 = time.perf_counter()
        settings = self.settings_for(study)
        text, gen = self.report(patches, states, settings)
        t2 = time.perf_counter()

        where = Where(instance_uid=str(uid) if uid else None)
        findings = self._findings(states, probs, where)
        sentences = generated_sentences(text)
        warnings: list[str] = []
        if not self.trained:
            warnings.append("PromptMRG reference variant: random weights; states and text "
                            "exercise the pipeline and mean nothing clinically")
        if self.memory_info.get("source") == "centroid":
            warnings.append("memory: the 21 report features nearest the database mean, the "
                            "same for every study (the authors' image-text retrieval is not "
                            "available)")
        if gen["stopped"] == "timeout":
            warnings.append(f"report generation stopped at the time limit "
                            f"({settings.timeout_s} s); the text may be cut short")
        raw = {
            "labels": list(LABELS),
            "state_tokens": list(STATE_TOKENS),
            "states": states,
            "state_names": [STATE_TOKENS[s] for s in states],
            "state_probabilities": [[round(float(p), 5) for p in row] for row in probs.T],
            "p_positive": {c: round(float(probs[1, i]), 5) for i, c in enumerate(LABELS[:14])},
            "text": text,
            "generation": gen,
            "memory": {k: v for k, v in self.memory_info.items() if k != "indices"},
            "view": getattr(selection, "frontal_view", None),
            "view_reason": getattr(selection, "reason", None),
            "file": str(path),
            "preprocessing": list(prep.STEPS),
            "seconds": {"diagnose": round(t1 - t0, 3), "generate": round(t2 - t1, 3)},
            "load_notes": list(self.load_notes),
        }
        reason = getattr(selection, "reason", None)
        if reason:
            # which image the report was written from: a technique sentence once trained
            raw["facts"] = [{"text": reason, "measurements": [], "acquisition": {
                "view": raw["view"] or None, "image": path.name}}]
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version, self.weights_sha256),
                            trained=self.trained, findings=findings,
                            text=[TextSection("findings", tuple(sentences))] if sentences else [],
                            warnings=warnings, raw=raw)

    @staticmethod
    def _findings(states: list[int], probs: np.ndarray, where: Where) -> list[Finding]:
        out: list[Finding] = []
        for i, (code, label) in enumerate(OBSERVATIONS):
            state = FINDING_STATE.get(states[i])
            if state is None:  # [BLA]: the model would not mention it
                continue
            abnormal: bool | None = None  # uncertain, or "no finding" absent
            if code != "no_finding" and state != "uncertain":
                abnormal = state == "present"
            elif code == "no_finding" and state == "present":
                abnormal = False
            out.append(Finding(
                code=observation_code(code, label), label=label, state=state,  # type: ignore
                score=round(float(probs[1, i]), 5), where=where, abnormal=abnormal,
                knowledge=(labeller.KNOWLEDGE[code],),
                criteria=f"PromptMRG 4-state head: {STATE_TOKENS[states[i]]} "
                         f"(p={float(probs[states[i], i]):.3f}); score = P(positive)"))
        return out
