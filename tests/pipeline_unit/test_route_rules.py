"""Routing rules: defaults per domain, unrouted studies, validation and the JSON form."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file

from app.pipeline.analyze import read_header
from app.pipeline.routing import (
    DEFAULT_RULES,
    RouteRule,
    RuleError,
    StudyMeta,
    match,
    rules_from_dicts,
    summarise,
)


def route(*instances: dict) -> list[str]:
    return [r.name for r in match(DEFAULT_RULES, summarise(list(instances)))]


def test_chest_dx_routes_to_cxr():
    assert route({"Modality": "DX", "BodyPartExamined": "CHEST"}) == ["cxr-chest"]
    assert route({"Modality": "CR", "BodyPartExamined": "thorax"}) == ["cxr-chest"]


def test_cr_without_body_part_routes_by_chest_description_or_view():
    assert route({"Modality": "CR", "StudyDescription": "XR CHEST 2 VIEWS"}) == ["cxr-description"]
    assert route({"Modality": "DX", "SeriesDescription": "Lungs PA"}) == ["cxr-description"]
    assert route({"Modality": "CR", "ViewPosition": "PA"}) == ["cxr-view"]
    coded = {"Modality": "DX", "ViewCodeSequence": [{"CodeMeaning": "postero-anterior"}]}
    assert route(coded) == ["cxr-view"]


def test_radiograph_of_another_body_part_is_not_cxr():
    assert route({"Modality": "CR", "BodyPartExamined": "HAND", "ViewPosition": "PA"}) == []
    assert route({"Modality": "CR", "StudyDescription": "XR WRIST"}) == []


def test_ct_routes_to_ct_with_measurement_and_the_assistant():
    meta = summarise([read_header(get_testdata_file("CT_small.dcm"))])
    (rule,) = match(DEFAULT_RULES, meta)
    assert (rule.domain, rule.queue, rule.pipeline) == (
        "ct", "ct", ("technical", "ct-quant", "ct-assistant"))
    assert rule.steps() == [("technical", True), ("ct-quant", True), ("ct-assistant", False)]


def test_ecg_waveform_routes_to_ecg_pipeline():
    meta = summarise([read_header(get_testdata_file("waveform_ecg.dcm"))])
    (rule,) = match(DEFAULT_RULES, meta)
    assert rule.name == "ecg-waveform"
    assert rule.pipeline == ("technical", "ecg-measure", "merl")
    assert route({"Modality": "ECG"}) == ["ecg-modality"]
    assert route({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.9.1.3"}) == ["ecg-waveform"]


def test_whole_slide_routes_to_pathology():
    assert route({"Modality": "SM", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.6"}) == [
        "pathology-wsi"]
    assert route({"Modality": "SM"}) == ["pathology-sm"]


def test_mr_study_is_unrouted():
    assert route({"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
                  "BodyPartExamined": "PROSTATE"}) == []


def test_highest_priority_rule_per_domain_and_domains_ordered_by_priority():
    rules = [
        RouteRule(name="ct-low", priority=1, domain="ct", modality=["CT"], pipeline=["technical"]),
        RouteRule(name="ct-high", priority=9, domain="ct", modality=["CT"], pipeline=["technical"]),
        RouteRule(name="ecg", priority=5, domain="ecg", modality=["ECG"], pipeline=["technical"]),
    ]
    meta = StudyMeta(modalities=frozenset({"CT", "ECG"}))
    assert [r.name for r in match(rules, meta)] == ["ct-high", "ecg"]


def test_match_accepts_the_stored_dict_form_of_a_study_summary():
    meta = summarise([{"Modality": "CT", "StudyDescription": "CT chest"}])
    assert match(DEFAULT_RULES, meta.to_dict()) == match(DEFAULT_RULES, meta)


@pytest.mark.parametrize("fields, message", [
    ({"domain": "mri"}, "domain must be one of"),
    ({"queue": "gpu"}, "queue must be one of"),
    ({"pipeline": []}, "at least one engine family"),
    ({"pipeline": ["technical", "technical"]}, "twice"),
    ({"description_pattern": "chest("}, "not a valid regular expression"),
    ({"sop_class_uids": ["1.2.abc"]}, "not valid DICOM UIDs"),
    ({"priority": "high"}, "priority must be an integer"),
    ({"modality": "CT"}, "must be a list of strings"),
    ({"name": " "}, "non-empty name"),
    ({"modality": []}, "at least one criterion"),
])
def test_invalid_rules_are_refused(fields, message):
    base = {"name": "r", "domain": "ct", "modality": ["CT"], "pipeline": ["technical"]}
    with pytest.raises(RuleError, match=message):
        RouteRule(**{**base, **fields})


def test_rules_round_trip_through_their_json_form():
    again = rules_from_dicts([r.to_dict() for r in DEFAULT_RULES])
    assert again == list(DEFAULT_RULES)
    assert DEFAULT_RULES[0].to_dict()["pipeline"] == [
        "technical", "ecg-measure", {"family": "merl", "required": False}]
    assert DEFAULT_RULES[0].steps() == [("technical", True), ("ecg-measure", True),
                                        ("merl", False)]


def test_pipeline_steps_are_required_unless_marked_optional():
    rule = RouteRule(name="r", domain="ct", modality=["CT"],
                     pipeline=["technical", {"family": "extra", "required": False}])
    assert rule.optional == ("extra",) and rule.steps() == [("technical", True),
                                                             ("extra", False)]
    assert RouteRule(name="r", domain="ct", modality=["CT"], pipeline=["technical", "extra"],
                     optional=["extra"]) == rule
    with pytest.raises(RuleError, match="does not run"):
        RouteRule(name="r", domain="ct", modality=["CT"], pipeline=["technical"],
                  optional=["extra"])
    with pytest.raises(RuleError, match="'required' of pipeline step"):
        RouteRule(name="r", domain="ct", modality=["CT"],
                  pipeline=[{"family": "technical", "required": "no"}])
    with pytest.raises(RuleError, match="unknown field"):
        RouteRule(name="r", domain="ct", modality=["CT"],
                  pipeline=[{"family": "technical", "optional": True}])


def test_stored_rule_with_unknown_field_or_duplicate_name_is_refused():
    good = DEFAULT_RULES[-1].to_dict()
    with pytest.raises(RuleError, match="unknown rule field"):
        RouteRule.from_dict({**good, "modalities": ["CT"]})
    with pytest.raises(RuleError, match="lacks"):
        RouteRule.from_dict({"name": "x", "modality": ["CT"]})
    with pytest.raises(RuleError, match="unique"):
        rules_from_dicts([good, good])


def test_summarise_collects_sets_over_instances():
    meta = summarise([
        {"Modality": "ct", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "StudyDescription": "Abd",
         "SeriesDescription": "Axial 5mm"},
        {"Modality": "SEG", "SeriesDescription": "Liver", "BodyPartExamined": "abdomen"},
    ])
    assert meta.modalities == {"CT", "SEG"}
    assert meta.body_parts == {"ABDOMEN"}
    assert meta.study_description == "Abd"
    assert meta.series_descriptions == ("Axial 5mm", "Liver")
