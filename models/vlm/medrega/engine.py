"""The ``medrega`` engine: region-aware answers and grounded reports with MedRegA (Wang et al.,
ICLR 2025, ``xmed-lab/MedRegA``, on InternVL-Chat-V1-2).

One image is read (``models.vlm.images``): the instance a question points at, else the
study's frontal radiograph (CXR) or the middle slice of its largest series. It is transformed
as the authors do (``models.vlm.medrega.preprocess``: 448 px bicubic, ImageNet normalisation,
optional dynamic tiles), encoded by InternViT, pixel-shuffled and projected by ``mlp1`` into
256 tokens per tile that overwrite the ``<IMG_CONTEXT>`` tokens of the Hermes-2 prompt.

Which task (``models.vlm.medrega.prompts``, in English or Chinese by the question's language):

- no question: the grounded report of ``config["grounded_objects"][domain]`` (for CXR the
  right and left lung, as in the authors' demo); a domain with none configured is refused;
- a question with a box: region-to-text ("what is this region?"), the box sent in the model's
  0-999 grid;
- a question naming objects as ``<ref>…</ref>``: text-to-region;
- any other question: VQA.

The answer's ``<ref>…</ref><box>[[…]]</box>`` spans become pixel regions on the source
instance (``models.vlm.medrega.boxes``); in a grounded report each located organ or lesion is a
finding whose evidence is its regions, and the description after it is the finding's text.
Malformed spans are warnings, never a failed job.

Variants: ``reference`` (tiny ViT and Llama, the exact connector and template, a byte-level
tokenizer made at load, random weights, ``trained=False``) and ``checkpoint`` (a hub folder:
InternVL's ``config.json`` with ``vision_config`` and ``llm_config``, the shards, the
tokenizer).
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from models.base import (
    OWN_SCHEME,
    Code,
    ContractError,
    EngineResult,
    Finding,
    GeneratedSentence,
    InputError,
    ModelInfo,
    ModelSpec,
    StudyInput,
    TextSection,
    Where,
)
from models.runtime.tree import merge_config
from models.vlm.generation import GenerationSettings, generate
from models.vlm.hub import load_into, materialise, tie_lm_head, variant_of
from models.vlm.medrega.tree import BASE_CONFIG, FAMILY, REFERENCE_CONFIG
from models.vlm.splice import fill_context
from models.vlm.templates import template

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
INTERNVL_TOKENS = (IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>",
                   "<box>", "</box>")
GROUNDING_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")
CHATML = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# how the authors' prompts name the modality ("in this CT scan", "a chest x-ray image")
MODALITY_WORDS = {"CT": "CT", "MR": "MRI", "CR": "chest x-ray", "DX": "chest x-ray",
                  "US": "ultrasound", "OCT": "OCT", "OP": "fundus", "SM": "pathology",
                  "XC": "dermoscopy", "MG": "mammography"}
MODALITY_WORDS_ZH = {"CT": "CT", "MR": "MRI", "CR": "胸部X光", "DX": "胸部X光", "US": "超声",
                     "OCT": "OCT", "OP": "眼底", "SM": "病理", "XC": "皮肤镜", "MG": "乳腺X光"}
_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)


def _llm_only(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items()
            if not k.startswith("_") and k not in ("architectures", "model_type", "auto_map",
                                                   "transformers_version")}


class MedRegAEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("report", "ask", "ground")
    domains: ClassVar[tuple[str, ...]] = ("cxr", "ct")

    def __init__(self, spec: ModelSpec) -> None:
        v = variant_of(spec, FAMILY, "MedRegA", REFERENCE_CONFIG, BASE_CONFIG)
        self.spec, self.device, self.dtype = spec, v.device, v.dtype
        self.config, self.trained, self.hub = v.config, v.trained, v.hub
        self.load_notes: list[str] = []
        if self.hub is None:
            self.model_config = self.config["model"]
        else:
            self.model_config = self.hub.config
            for key in ("vision_config", "llm_config"):
                if not isinstance(self.model_config.get(key), dict):
                    raise ContractError(f"{self.hub.path}/config.json has no {key}: it is not "
                                        "an InternVL-Chat checkpoint")
            arch = (self.model_config["llm_config"].get("architectures") or ["?"])[0]
            if arch != "LlamaForCausalLM":
                raise ContractError(f"{self.hub.path}: the language model is {arch}; MedRegA's "
                                    "is LlamaForCausalLM (Nous-Hermes-2-Yi-34B)")
            if self.model_config.get("use_llm_lora") or self.model_config.get("use_backbone_lora"):
                raise ContractError(f"{self.hub.path}/config.json asks for unmerged LoRA "
                                    "adapters; merge them into the weights first")
        self.settings = GenerationSettings.from_config(self.config["generation"])
        self.model: Any = None
        self.tokenizer: Any = None
        self.template = template(str(self.model_config.get("template") or "Hermes-2"))
        self.eos_ids: list[int] = []
        self.context_id: int | None = None

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        if self.model is not None:
            return
        from models.vlm.medrega.net import build_medrega

        if self.hub is None:
            from models.vlm.medrega.prompts import load_prompts
            from models.vlm.reference import init_reference_weights, reference_tokenizer

            corpus = [e[k] for t in load_prompts()["tasks"].values() for e in t.values()
                      for k in ("preamble", "question")]
            tok = reference_tokenizer(
                corpus + ["<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: clear."],
                [*CHATML[:2], *INTERNVL_TOKENS], bos="<|startoftext|>", eos="<|endoftext|>",
                pad="<unk>", vocab_size=int(self.config["tokenizer_vocab"]), add_bos=False)
            cfg = merge_config(self.model_config, {"llm_config": {
                "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tok.pad_token_id}})
            model = materialise(lambda: build_medrega(cfg))
            init_reference_weights(model, int(self.config.get("seed", 0)))
        else:
            tok = self.hub.tokenizer()
            notes: list[str] = []
            state = self.hub.state_dict(notes)
            llm = self.model_config["llm_config"]
            tie_lm_head(state, "language_model.", bool(llm.get("tie_word_embeddings")), notes)
            cfg = {**self.model_config, "llm_config": _llm_only(llm)}
            model = load_into(lambda: build_medrega(cfg), state, what="MedRegA")
            self.load_notes = notes
        missing = [t for t in (IMG_CONTEXT, "<|im_end|>") if t not in tok.get_vocab()]
        if missing:
            raise ContractError(f"the MedRegA tokenizer lacks {missing}")
        self.context_id = tok.convert_tokens_to_ids(IMG_CONTEXT)
        # chat(): generation ends at <|im_end|> (the eos of InternVL's Yi-based models)
        self.eos_ids = [tok.convert_tokens_to_ids("<|im_end|>")]
        self.tokenizer = tok
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    # -- steps -------------------------------------------------------------------------------
    def ask(self, pixels: torch.Tensor, question: str, settings: GenerationSettings
            ) -> tuple[str, dict[str, Any]]:
        """(tiles, 3, S, S) and a question holding ``<image>`` -> the answer and how it went."""
        self.load()
        model = self.model
        tiles = int(pixels.shape[0])
        image = IMG_START + IMG_CONTEXT * (model.num_image_token * tiles) + IMG_END
        prompt = self.template.render(question.replace("<image>", image, 1))
        ids = self.tokenizer(prompt).input_ids
        with torch.inference_mode():
            features = model.extract_feature(pixels.to(self.device, self.dtype))
            embeds = fill_context(model.language_model.get_input_embeddings(), ids, features,
                                  int(self.context_id))
        out = generate(model.language_model, embeds, settings, self.tokenizer, self.eos_ids,
                       keep=GROUNDING_TOKENS)
        return out.text, {**out.to_dict(), "tiles": tiles, "prompt_tokens": len(ids),
                          "image_tokens": model.num_image_token * tiles,
                          "settings": settings.to_dict()}

    def question_for(self, study: StudyInput, modality: str, size: tuple[int, int]
                     ) -> tuple[str, str, str]:
        """(task, language, full question text) for the study or its prompt."""
        from models.vlm.medrega import boxes, prompts

        prompt = study.prompt
        lang = prompts.language_of(prompt.language) if prompt is not None else "en"
        words = MODALITY_WORDS_ZH if lang == "zh" else MODALITY_WORDS
        word = words.get(modality, "医学" if lang == "zh" else "medical")
        if prompt is None:
            objects = (self.config.get("grounded_objects") or {}).get(study.domain)
            if not objects:
                raise InputError(f"MedRegA has no study-level task for the {study.domain} "
                                 "domain: ask it a question (config grounded_objects names "
                                 "the organs it reports per domain)")
            return "grounded_report", lang, prompts.render("grounded_report", lang,
                                                           objects=list(objects), modality=word)
        if prompt.box is not None:
            grid = boxes.to_grid(prompt.box, size[0], size[1])
            return "region_to_text", lang, prompts.render("region_to_text", lang, region=grid,
                                                          modality=word)
        refs = _REF.findall(prompt.question)
        if refs:
            return "text_to_region", lang, prompts.render("text_to_region", lang,
                                                          objects=refs, modality=word)
        return "vqa", lang, prompts.render("vqa", lang, question=prompt.question.strip())

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        from models.vlm.images import read_display_image
        from models.vlm.medrega import boxes
        from models.vlm.medrega.preprocess import preprocess

        if study.domain not in self.domains:
            raise InputError(f"MedRegA reads {', '.join(self.domains)} images (its card), not a "
                             f"{study.domain} study")
        self.load()
        path, uid, frame, modality = _source(study)
        image = read_display_image(path, frame)
        task, lang, question = self.question_for(study, modality or image.modality,
                                                 (image.width, image.height))
        t0 = time.perf_counter()
        size = int(self.model_config.get("force_image_size")
                   or self.model_config["vision_config"]["image_size"])
        pixels = preprocess(image.rgb, size=size, dynamic=bool(self.config["dynamic"]),
                            max_num=int(self.config["max_num"]),
                            use_thumbnail=bool(self.model_config.get("use_thumbnail")))
        settings = self.settings
        answer, gen = self.ask(pixels, question, settings)
        seconds = time.perf_counter() - t0

        parsed = boxes.parse_answer(answer)
        regions = boxes.spans_to_regions(parsed.spans, image.width, image.height,
                                         instance_uid=uid or path.name, frame=frame)
        findings = _grounded_findings(parsed, regions, uid) if task == "grounded_report" else []
        warnings = [f"answer: {w}" for w in parsed.warnings]
        if not self.trained:
            warnings.append("MedRegA reference variant: random weights; its text and regions "
                            "exercise the pipeline and mean nothing clinically")
        if gen["stopped"] == "timeout":
            warnings.append(f"generation stopped at the time limit ({settings.timeout_s} s)")
        sentences = _sentences(parsed.plain, study.domain)
        raw = {"task": task, "language": lang, "question": question, "answer": answer,
               "text": parsed.plain, "spans": [{"ref": s.ref, "boxes": [list(b) for b in s.boxes]}
                                               for s in parsed.spans],
               "image": {"file": str(path), "instance_uid": uid, "frame": frame,
                         "width": image.width, "height": image.height,
                         "steps": list(image.steps)},
               "generation": gen, "seconds": round(seconds, 3),
               "load_notes": list(self.load_notes)}
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version,
                                            self.spec.sha256 if self.trained else None),
                            trained=self.trained, findings=findings, regions=regions,
                            text=[TextSection("findings", tuple(sentences))] if sentences else [],
                            warnings=warnings, raw=raw)


def _source(study: StudyInput) -> tuple[Path, str | None, int | None, str]:
    """(file, SOP Instance UID, frame, modality) of the image to read."""
    metadata = [study.metadata[i] if i < len(study.metadata) else {}
                for i in range(len(study.paths))]
    prompt = study.prompt
    if prompt is not None and prompt.instance_uid:
        for path, meta in zip(study.paths, metadata, strict=True):
            if meta.get("SOPInstanceUID") == prompt.instance_uid:
                return path, prompt.instance_uid, prompt.frame, str(meta.get("Modality") or "")
        raise InputError(f"the question points at instance {prompt.instance_uid}, which is not "
                         "in this study")
    if study.domain == "cxr":
        from models.cxr.views import select_views

        selection = select_views(list(zip(study.paths, metadata, strict=True)))
        if selection.frontal is not None:
            path = Path(selection.frontal[0] if isinstance(selection.frontal, tuple)
                        else selection.frontal)
            meta = next((m for p, m in zip(study.paths, metadata, strict=True) if p == path), {})
            uid = meta.get("SOPInstanceUID")
            return path, str(uid) if uid else None, None, str(meta.get("Modality") or "")
    series = max(study.series, key=lambda s: len(s.instances))
    middle = series.instances[len(series.instances) // 2]
    return middle.path, middle.sop_instance_uid, None, series.modality


def _slug(text: str) -> str:
    """A code value for a region's name; names without Latin letters (Chinese) get a digest."""
    slug = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return slug or "h" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _grounded_findings(parsed: Any, regions: list[Any], uid: str | None) -> list[Finding]:
    """One finding per located organ or lesion: its regions are the evidence, the description
    that follows its span is the criteria."""
    out: list[Finding] = []
    by_label: dict[str, list[str]] = {}
    for r in regions:
        by_label.setdefault(r.label, []).append(r.id)
    for n, span in enumerate(parsed.spans):
        ids = by_label.get(span.ref, [])
        if not ids:
            continue
        following = parsed.text[span.end:]
        nxt = parsed.spans[n + 1].start - span.end if n + 1 < len(parsed.spans) else None
        description = re.sub(r"<[^>]*>", "", following[:nxt]).strip(" ,:：;\n")
        out.append(Finding(code=Code(OWN_SCHEME, f"region:{_slug(span.ref)}", span.ref),
                           label=span.ref, state="present", evidence=tuple(ids),
                           where=Where(instance_uid=uid, region_id=ids[0]),
                           criteria=f"located by MedRegA; described as: {description}"
                           if description else "located by MedRegA"))
    return out


def _sentences(text: str, domain: str) -> list[GeneratedSentence]:
    if domain == "cxr":
        from models.cxr.statements import generated_sentences

        return generated_sentences(text)
    from models.cxr.labeller import split_sentences

    return [GeneratedSentence(text[a:b].strip()) for a, b in split_sentences(text)
            if text[a:b].strip()]
