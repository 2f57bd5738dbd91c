"""The ``ct-assistant`` engine: an OrthoDoc-style CT assistant (our own design in the spirit
of OrthoDoc, which released no code; ``../shared/research/models.md`` section 7).

What it does, after ``ct-quant`` has measured the study in the same job:

1. **Key slices by rule**: the slice of each segment's largest extent, as ``ct-quant`` lists
   them, else evenly spaced slices of the main volume (``config["key_slices"]``, 3).
2. **Windows**: each key slice is shown in the windows of ``config["windows"]`` (soft tissue
   W400/L40, lung W1500/L-600, bone W1800/L400: the conventional presets of the knowledge
   entry ``ct-hounsfield-units-windowing``), at most ``config["max_images"]`` images, each one
   tile of the vision-language family.
3. **Retrieval**: the CT knowledge entries for the measured findings and quantities, selected
   by the platform's adaptive rule (``StudyInput.knowledge``: MMed-RAG's ratio rule, k <= 5).
4. **Prompt**: the measured quantities (with where each was measured) and the retrieved
   entries, numbered, with the instruction to use only them and to cite entries as ``[n]``.
5. **Answer**: the vision-language family (MedRegA's runtime by default: its tree, template and
   generation) writes it; each sentence keeps the entries it cites among those given (an
   unknown number is dropped, with a warning), and states the ``ct-quant`` findings it names,
   so the composer lets it into a draft only where those measured findings agree. Untrained,
   none of it reaches a draft.

Variants: ``reference`` (MedRegA's reference configuration) and ``checkpoint`` (a MedRegA /
InternVL-Chat hub folder).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.base import (
    ContractError,
    EngineResult,
    GeneratedSentence,
    InputError,
    ModelInfo,
    ModelSpec,
    Statement,
    StudyInput,
    TextSection,
)
from models.runtime.tree import merge_config

FAMILY = "ct-assistant"
QUANT_FAMILY = "ct-quant"
# (centre, width) in HU: the conventional presets (knowledge entry ct-hounsfield-units-windowing)
WINDOWS: dict[str, tuple[float, float]] = {"soft_tissue": (40.0, 400.0),
                                           "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}
BASE_CONFIG: dict[str, Any] = {
    "vlm": "medrega", "key_slices": 3, "windows": ["soft_tissue", "lung", "bone"],
    "max_images": 6, "passage_chars": 400,
    "question": "Describe the findings of this CT study.",
}
_CITE = re.compile(r"\[(\d{1,2})\]")
_NEGATION = re.compile(r"\b(no|not|without|absent|negative for|free of)\b[^.;]*$", re.I)


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """8-bit display of HU values through a linear window (PS3.3 C.11.2.1.2.1, LINEAR)."""
    low = centre - 0.5 - (width - 1) / 2
    scaled = (hu - low) / max(width - 1, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def read_slice_hu(path: Path, frame: int | None = None) -> np.ndarray:
    """One CT slice (or frame) in HU (Rescale Slope and Intercept, PS3.3 C.11.1)."""
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 3:
        pixels = pixels[(frame or 1) - 1]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def _quantities(quant: EngineResult) -> list[str]:
    lines = []
    for m in quant.measurements:
        where = []
        if m.where.slices is not None:
            a, b = m.where.slices
            where.append(f"slices {a + 1}-{b + 1}")
        if m.where.region_id:
            where.append(f"in {m.where.region_id}")
        unit = "HU" if m.unit == "[hnsf'U]" else m.unit
        lines.append(f"- {m.name.replace('_', ' ')}: {m.value:g} {unit}"
                     + (f" ({', '.join(where)})" if where else ""))
    for f in quant.findings:
        lines.append(f"- finding: {f.label} ({f.state})"
                     + (f"; criteria: {f.criteria}" if f.criteria else ""))
    return lines


def build_prompt(question: str, quantities: list[str], entries: list[dict[str, Any]],
                 passage_chars: int) -> str:
    """The user turn: the image, the measured quantities, the numbered knowledge entries and
    the instruction to cite them."""
    parts = ["<image>", question.strip(), "", "Measured quantities (MedGate, from the images):"]
    parts += quantities or ["- none"]
    parts += ["", "Reference knowledge:"]
    for n, e in enumerate(entries, start=1):
        passage = " ".join(str(e.get("passage") or "").split())[:passage_chars]
        parts.append(f"[{n}] {e.get('title') or e.get('id')}: {passage}")
    if not entries:
        parts.append("- none retrieved")
    parts += ["", "Use only the measurements and the references above; cite a reference as "
                  "[n] after the sentence that relies on it."]
    return "\n".join(parts)


def _statements(sentence: str, quant: EngineResult | None) -> tuple[Statement, ...]:
    """The measured findings a sentence names, with what it says of them (a negation before
    the name makes it absent)."""
    if quant is None:
        return ()
    out = []
    lower = sentence.lower()
    for f in quant.findings:
        term = f.label.lower().rstrip(".")
        at = lower.find(term)
        if at < 0:
            continue
        state = "absent" if _NEGATION.search(lower[:at]) else "present"
        out.append(Statement(f.code, state))
    return tuple(out)


class CtAssistantEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("report", "ask")
    domains: ClassVar[tuple[str, ...]] = ("ct",)

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        self.spec = spec
        self.config = merge_config(BASE_CONFIG, spec.config)
        if self.config["vlm"] != "medrega":
            raise ContractError(f"the CT assistant runs on medrega, not {self.config['vlm']!r}")
        unknown = [w for w in self.config["windows"] if w not in WINDOWS]
        if unknown:
            raise ContractError(f"unknown windows {unknown}; known: {sorted(WINDOWS)}")
        from models.vlm.medrega.engine import MedRegAEngine

        vlm_config = {k: v for k, v in spec.config.items() if k not in BASE_CONFIG}
        self.vlm = MedRegAEngine(replace(spec, family="medrega", config=vlm_config))
        self.trained = self.vlm.trained

    def load(self) -> None:
        self.vlm.load()

    def _images(self, study: StudyInput, quant: EngineResult | None
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        from models.vlm.medrega.preprocess import preprocess

        keys = list((quant.raw.get("key_slices") if quant else None) or [])
        if not keys:
            raise InputError("the CT assistant needs the key slices ct-quant chooses; run "
                             "ct-quant before it in the pipeline")
        keys = keys[:int(self.config["key_slices"])]
        size = int(self.vlm.model_config.get("force_image_size")
                   or self.vlm.model_config["vision_config"]["image_size"])
        tiles, shown = [], []
        for key in keys:
            hu = read_slice_hu(Path(key["path"]), key.get("frame"))
            for name in self.config["windows"]:
                if len(tiles) == int(self.config["max_images"]):
                    break
                gray = window(hu, *WINDOWS[name])
                tiles.append(preprocess(np.repeat(gray[..., None], 3, axis=2), size=size,
                                        dynamic=False, max_num=1, use_thumbnail=False))
                shown.append({**{k: key[k] for k in ("sop_instance_uid", "slice_index",
                                                     "reason") if k in key}, "window": name})
        import torch

        return torch.cat(tiles, dim=0), shown

    def run(self, study: StudyInput) -> EngineResult:
        if study.domain != "ct":
            raise InputError(f"the CT assistant reads CT studies, not {study.domain}")
        quant = next((r for r in reversed(study.earlier) if r.model.family == QUANT_FAMILY),
                     None)
        self.load()
        t0 = time.perf_counter()
        pixels, shown = self._images(study, quant)
        quantities = _quantities(quant) if quant else []
        query = "CT " + "; ".join([f.label for f in quant.findings] +
                                  [m.name.replace("_", " ") for m in quant.measurements])
        entries = study.knowledge(query, "ct") if study.knowledge else []
        question = (study.prompt.question if study.prompt else self.config["question"])
        prompt = build_prompt(question, quantities, entries, int(self.config["passage_chars"]))
        answer, gen = self.vlm.ask(pixels, prompt, self.vlm.settings)
        seconds = time.perf_counter() - t0

        from models.cxr.labeller import split_sentences

        sentences, citations, warnings = [], [], []
        ids = [str(e["id"]) for e in entries]
        for a, b in split_sentences(answer):
            text = answer[a:b].strip()
            if not text:
                continue
            cited = []
            for n in _CITE.findall(text):
                if 1 <= int(n) <= len(ids):
                    cited.append(ids[int(n) - 1])
                else:
                    warnings.append(f"a sentence cites [{n}], which was not given; dropped")
            clean = _CITE.sub("", text).strip()
            if not clean:
                continue
            sentences.append(GeneratedSentence(clean, _statements(clean, quant)))
            citations.append({"text": clean, "knowledge": list(dict.fromkeys(cited))})
        if not self.trained:
            warnings.append("CT assistant reference variant: random weights; its text "
                            "exercises the pipeline and means nothing clinically")
        if quant is None:
            warnings.append("no ct-quant result in this job: the prompt carries no measured "
                            "quantities")
        raw = {"prompt": prompt, "question": question, "query": query,
               "entries": [{k: e.get(k) for k in ("id", "title", "score")} for e in entries],
               "quantities": quantities, "images": shown, "answer": answer,
               "citations": citations, "generation": gen, "seconds": round(seconds, 3)}
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version,
                                            self.spec.sha256 if self.trained else None),
                            trained=self.trained,
                            text=[TextSection("findings", tuple(sentences))] if sentences
                            else [], warnings=warnings, raw=raw)
