"""MedRegA's task prompts: the demo records byte for byte, every task in both languages, field
helpers, language tags and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.base import ContractError
from models.vlm.medrega import prompts
from models.vlm.medrega.boxes import parse_answer
from models.vlm.medrega.prompts import (
    LANGUAGES,
    TASKS,
    PromptError,
    language_of,
    load_prompts,
    render,
    with_article,
)

DEMO = Path(__file__).parent / "data" / "medrega_demo_prompts.jsonl"
RECORDS = {r["id"]: r for r in map(json.loads, DEMO.read_text(encoding="utf-8").splitlines())}

# record id -> (task, language, short_answer, fields) that render its human turn
DEMO_CASES = {
    0: ("vqa", "en", True, {"question": "What does this image show?"}),
    1: ("vqa", "en", True, {"question": "What is present?"}),
    2: ("vqa", "zh", True, {"question": "图像里包含的区域属于身体哪个部分?"}),
    3: ("vqa", "zh", True, {"question": "这张图片的成像方式是什么?"}),
    4: ("report", "en", False, {"modality": "chest x-ray"}),
    5: ("report", "zh", False, {}),
    6: ("classification", "en", False,
        {"modality": "OCT", "diagnoses": ["normal", "drusen", "diabetic macular edema",
                                          "choroidal neovascularization"]}),
    7: ("region_to_text", "en", False, {"modality": "CT", "region": (421, 351, 505, 470)}),
    8: ("text_to_region", "en", False, {"modality": "MRI", "objects": ["carotid vessel wall"]}),
    9: ("grounded_report", "en", False,
         {"modality": "chest x-ray", "objects": ["right lung", "left lung"]}),
    10: ("grounded_lesion", "zh", False, {"objects": ["胰腺癌"]}),
}

EXAMPLE_FIELDS = {"question": "Is there a nodule?", "modality": "CT",
                  "objects": ["liver", "spleen"], "region": (100, 200, 300, 400),
                  "diagnoses": ["normal", "pneumonia"]}


def test_every_demo_record_is_covered():
    assert sorted(DEMO_CASES) == sorted(RECORDS) == list(range(11))


@pytest.mark.parametrize("rid", sorted(DEMO_CASES))
def test_demo_prompts_byte_for_byte(rid):
    task, lang, short, fields = DEMO_CASES[rid]
    assert render(task, lang, short_answer=short, **fields) == RECORDS[rid]["prompt"]


@pytest.mark.parametrize("rid", sorted(DEMO_CASES))
def test_demo_records_are_marked_as_such(rid):
    task, lang, _, _ = DEMO_CASES[rid]
    entry = load_prompts()["tasks"][task][lang]
    assert entry["origin"] == "demo_data" and rid in entry["records"]


def test_origins():
    doc = load_prompts()
    assert "dfdb0db" in doc["source"]
    ours = {(t, lang) for t, e in doc["tasks"].items() for lang, p in e.items()
            if p["origin"] == "medgate"}
    assert ours == {("classification", "zh"), ("region_to_text", "zh"), ("text_to_region", "zh"),
                    ("grounded_report", "zh"), ("grounded_lesion", "en")}
    assert all(doc["tasks"][t][lang].get("note") for t, lang in ours)
    assert "这个区域" in doc["tasks"]["region_to_text"]["zh"]["note"]


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_renders_in_both_languages(task, lang):
    text = render(task, lang, **EXAMPLE_FIELDS)
    assert text.count("<image>\n") == 1
    before, after = text.split("<image>\n")
    assert "{" not in text and "}" not in text
    if lang == "en":
        assert before.startswith("You are a helpful medical assistant.")
        assert before.endswith((" ", "\n"))
    else:
        assert before.startswith("你是一个医疗助手，") and not before.endswith(" ")
    if task in ("text_to_region", "grounded_report", "grounded_lesion"):
        assert "<ref>liver</ref>, <ref>spleen</ref>" in after
        assert "0 to 999" in before or "0到999" in before
    if task == "region_to_text":
        ref = "this" if lang == "en" else "这个区域"
        assert f"<ref>{ref}</ref><box>[[100, 200, 300, 400]]</box>" in after
        assert [s.boxes for s in parse_answer(after).spans] == [((100, 200, 300, 400),)]
    if task == "classification":
        assert "\nnormal\npneumonia\n" in before
    if task == "vqa":
        assert after == "Is there a nodule?"


def test_short_answer():
    assert render("vqa", "en", short_answer=True, question="Which organ?").endswith(
        "Which organ? Answer the question using a single word or phrase.")
    assert render("vqa", "zh", short_answer=True, question="哪个器官?").endswith(
        "哪个器官?请用词或短语回答问题。")
    with pytest.raises(PromptError, match="only 'vqa'"):
        render("report", "en", short_answer=True, modality="CT")


@pytest.mark.parametrize("tag, lang", [("en", "en"), ("en-GB", "en"), ("EN-us", "en"),
                                       ("zh", "zh"), ("zh-Hans", "zh"), ("zh-CN", "zh"),
                                       ("zh_TW", "zh"), ("zh-Hant-HK", "zh")])
def test_language_tags(tag, lang):
    assert language_of(tag) == lang
    assert render("report", tag, modality="CT") == render("report", lang, modality="CT")


@pytest.mark.parametrize("tag", ["fr", "de-DE", "", "english", None])
def test_unknown_language_names_the_languages(tag):
    with pytest.raises(PromptError, match=r"\('en', 'zh'\)") as exc:
        render("vqa", tag, question="?")
    assert isinstance(exc.value, ContractError)


@pytest.mark.parametrize("task", ["detection", "VQA", "", None])
def test_unknown_task_names_the_tasks(task):
    with pytest.raises(PromptError) as exc:
        render(task, "en", question="?")
    assert all(t in str(exc.value) for t in TASKS)


@pytest.mark.parametrize("task, lang, fields, missing", [
    ("vqa", "en", {}, "['question']"),
    ("report", "en", {}, "['modality']"),
    ("classification", "en", {"modality": "OCT"}, "['diagnoses']"),
    ("classification", "zh", {}, "['diagnoses', 'modality']"),
    ("region_to_text", "en", {"modality": "CT"}, "['region']"),
    ("text_to_region", "zh", {"objects": ["肝"]}, "['modality']"),
    ("grounded_lesion", "zh", {"modality": "CT"}, "['objects']"),
])
def test_missing_field_names_the_fields(task, lang, fields, missing):
    with pytest.raises(PromptError, match="needs field") as exc:
        render(task, lang, **fields)
    assert missing in str(exc.value)


@pytest.mark.parametrize("fields", [
    {"objects": []}, {"objects": ["a<b"]}, {"objects": [""]}, {"objects": [3]},
    {"region": (1, 2, 3, 1000)}, {"region": (5, 2, 3, 4)}, {"region": "this"},
    {"diagnoses": ["a\nb"]}, {"modality": ""}, {"question": 7},
])
def test_bad_field_values(fields):
    with pytest.raises(PromptError):
        render("text_to_region", "en", **{"modality": "CT", "objects": ["x"], **fields})


def test_field_forms():
    one = render("text_to_region", "en", modality="CT", objects="liver")
    assert one == render("text_to_region", "en", modality="CT", objects=["liver"])
    two = render("region_to_text", "en", modality="CT", region=[(1, 2, 3, 4), (5, 6, 7, 8)])
    assert "<ref>this</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>" in two
    own = render("report", "en", modality="ultrasound", a_modality="a cardiac ultrasound")
    assert "You are given a cardiac ultrasound image" in own


@pytest.mark.parametrize("noun, expected", [
    ("chest x-ray", "a chest x-ray"), ("OCT", "an OCT"), ("MRI", "an MRI"), ("CT", "a CT"),
    ("X-ray", "an X-ray"), ("x-ray", "an x-ray"), ("ultrasound", "an ultrasound"),
    ("PET", "a PET"), ("fundus photograph", "a fundus photograph"), ("endoscopy", "an endoscopy"),
])
def test_with_article(noun, expected):
    assert with_article(noun) == expected


def test_load_prompts_validates(tmp_path):
    good = load_prompts()
    assert sorted(good["tasks"]) == sorted(TASKS)

    def broken(change):
        doc = json.loads(prompts.PROMPTS_FILE.read_text(encoding="utf-8"))
        change(doc)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        with pytest.raises(PromptError) as exc:
            load_prompts(path)
        return str(exc.value)

    assert "languages" in broken(lambda d: d["tasks"]["vqa"].pop("zh"))
    assert "must be" in broken(lambda d: d["tasks"].pop("report"))
    assert "preamble" in broken(lambda d: d["tasks"]["vqa"]["en"].pop("preamble"))
    assert "question" in broken(lambda d: d["tasks"]["vqa"]["en"].pop("question"))
    assert "origin" in broken(lambda d: d["tasks"]["vqa"]["en"].update(origin="x"))
    assert "records" in broken(lambda d: d["tasks"]["vqa"]["en"].pop("records"))
    assert "unknown fields" in broken(
        lambda d: d["tasks"]["vqa"]["en"].update(question="{organ}"))
    assert "region_ref" in broken(lambda d: d["tasks"]["region_to_text"]["en"].pop("region_ref"))
    assert "separator" in broken(lambda d: d.pop("separator"))
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts(tmp_path / "missing.json")
