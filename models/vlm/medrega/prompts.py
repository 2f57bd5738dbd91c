"""MedRegA's task prompts, kept as data in ``prompts.json`` beside this module.

Source: xmed-lab/MedRegA, ``demo_data/data_file.jsonl`` at commit dfdb0db. The entries marked
``"origin": "demo_data"`` render back to the human turn of the named records byte for byte;
those marked ``"medgate"`` were written by MedGate in the same style where the demo has no
record for a task and language. A question is ``preamble + separator + "<image>\\n" +
question`` (separator " " in English, none in Chinese, none after a preamble ending in a
newline), with the fields filled in.
"""

from __future__ import annotations

import json
import numbers
import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.base import ContractError

from .boxes import BoxError, render_box, render_ref

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
TASKS = ("vqa", "report", "classification", "region_to_text", "text_to_region",
         "grounded_report", "grounded_lesion")
LANGUAGES = ("en", "zh")
FIELDS = ("question", "modality", "a_modality", "objects", "region", "diagnoses")
ORIGINS = ("demo_data", "medgate")
IMAGE = "<image>\n"
# Letter names that start with a vowel sound: "an MRI", "an X-ray", "an OCT" but "a CT".
_AN_LETTERS = set("AEFHILMNORSX")


class PromptError(ContractError):
    """An unknown task or language, a missing field, or a prompts file that is not valid."""


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _validate(doc: Any) -> dict[str, Any]:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise PromptError(f"prompts file: {message}")

    need(isinstance(doc, dict) and isinstance(doc.get("source"), str), "needs a 'source' text")
    need(isinstance(doc.get("tasks"), dict), "needs a 'tasks' object")
    sep = doc.get("separator")
    need(isinstance(sep, dict) and all(isinstance(sep.get(lang), str) for lang in LANGUAGES),
         f"needs a 'separator' text for each of {LANGUAGES}")
    need(sorted(doc["tasks"]) == sorted(TASKS),
         f"tasks are {sorted(doc['tasks'])}, must be {sorted(TASKS)}")
    for task, entry in doc["tasks"].items():
        need(isinstance(entry, dict) and sorted(entry) == sorted(LANGUAGES),
             f"task {task!r} needs exactly the languages {LANGUAGES}")
        for lang, p in entry.items():
            where = f"{task}/{lang}"
            need(isinstance(p.get("preamble"), str) and bool(p["preamble"]),
                 f"{where} needs a preamble")
            need(isinstance(p.get("question"), str), f"{where} needs a question")
            need(p.get("origin") in ORIGINS, f"{where}: origin must be one of {ORIGINS}")
            if p["origin"] == "demo_data":
                need(isinstance(p.get("records"), list) and bool(p["records"]),
                     f"{where}: a demo_data entry names its records")
            try:
                used = _template_fields(p["preamble"]) | _template_fields(p["question"])
            except ValueError as exc:
                raise PromptError(f"prompts file: {where} is not a format string: {exc}") from exc
            need(used <= set(FIELDS), f"{where} uses unknown fields {sorted(used - set(FIELDS))}"
                                      f"; known: {list(FIELDS)}")
            need("region" not in used or isinstance(p.get("region_ref"), str),
                 f"{where} uses {{region}} and needs a region_ref")
    return doc


def load_prompts(path: str | Path | None = None) -> dict[str, Any]:
    """The prompts file (``prompts.json`` beside this module unless ``path``), validated."""
    try:
        doc = json.loads(Path(path or PROMPTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PromptError(f"cannot read prompts file {path or PROMPTS_FILE}: {exc}") from exc
    return _validate(doc)


@lru_cache(maxsize=1)
def _prompts() -> dict[str, Any]:
    return load_prompts()


def language_of(tag: str) -> str:
    """The prompt language of a BCP 47 tag: "zh-Hans", "zh-CN" -> "zh"; "en-GB" -> "en"."""
    primary = tag.replace("_", "-").split("-")[0].lower() if isinstance(tag, str) else ""
    if primary not in LANGUAGES:
        raise PromptError(f"language {tag!r} is not one of {LANGUAGES} (or a tag of one)")
    return primary


def with_article(noun: str) -> str:
    """ "a chest x-ray", "an OCT", "an MRI", "a CT", "an ultrasound"."""
    word = noun.split()[0] if noun.split() else noun
    head = word.split("-")[0]
    if len(head) == 1 or head.isupper():  # an abbreviation or a letter: read letter by letter
        vowel_sound = head[:1].upper() in _AN_LETTERS
    else:
        vowel_sound = word[:1].lower() in "aeiou"
    return f"{'an' if vowel_sound else 'a'} {noun}"


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"field {name!r} must be non-empty text, not {value!r}")
    return value


def _names(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise PromptError(f"field {name!r} must be a name or a non-empty list of names")
    return [_text(name, v) for v in items]


def _region(value: Any, ref: str) -> str:
    boxes = [value] if (isinstance(value, Sequence) and len(value) == 4
                        and not isinstance(value, str)
                        and all(isinstance(v, numbers.Integral) for v in value)) else value
    if isinstance(boxes, str) or not isinstance(boxes, Sequence):
        raise PromptError(f"field 'region' must be a grid box (x1, y1, x2, y2), not {value!r}")
    return render_box(ref, boxes)


def _fields(entry: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in given.items():
        try:
            if name == "objects":
                out[name] = ", ".join(render_ref(n) for n in _names(name, value))
            elif name == "region":
                out[name] = _region(value, entry.get("region_ref", "this"))
            elif name == "diagnoses":
                items = _names(name, value)
                if any("\n" in d for d in items):
                    raise PromptError("field 'diagnoses': one diagnosis per item, no newlines")
                out[name] = "\n".join(items)
            else:
                out[name] = _text(name, value)
        except BoxError as exc:
            raise PromptError(f"field {name!r}: {exc}") from exc
    if "modality" in out and "a_modality" not in out:
        out["a_modality"] = with_article(out["modality"])
    return out


def render(task: str, language: str, *, short_answer: bool = False, **fields: Any) -> str:
    """The full question text of ``task`` in ``language`` (a BCP 47 tag), as the demo data
    writes it. Fields: ``question``, ``modality``, ``objects`` (names), ``region`` (a grid
    box), ``diagnoses`` (names); fields a template does not use are ignored. ``short_answer``
    (vqa only) appends the demo's "single word or phrase" instruction."""
    doc = _prompts()
    if not isinstance(task, str) or task not in doc["tasks"]:
        raise PromptError(f"unknown task {task!r}; tasks: {list(TASKS)}")
    lang = language_of(language)
    entry = doc["tasks"][task][lang]
    needed = _template_fields(entry["preamble"]) | _template_fields(entry["question"])
    values = _fields(entry, fields)
    # a_modality is made from modality, so it is modality that is missing
    missing = sorted({"modality" if m == "a_modality" else m for m in needed - set(values)})
    if missing:
        raise PromptError(f"task {task!r} ({lang}) needs field(s) {missing}; it uses "
                          f"{sorted(needed)}")
    preamble = entry["preamble"].format(**values)
    question = entry["question"].format(**values)
    if short_answer:
        if "short_answer" not in entry:
            raise PromptError(f"task {task!r} has no short-answer form; only 'vqa' has one")
        question += entry["short_answer"]
    sep = "" if preamble.endswith("\n") else doc["separator"][lang]
    return preamble + sep + IMAGE + question
