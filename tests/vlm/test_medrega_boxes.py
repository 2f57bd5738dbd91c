"""MedRegA's box grammar: conversion, rendering, parsing (demo answers, malformed and random
text) and regions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.base import ContractError, Region
from models.vlm.medrega.boxes import (
    GRID_MAX,
    BoxError,
    GroundedSpan,
    parse_answer,
    render_box,
    render_ref,
    spans_to_regions,
    to_grid,
    to_pixels,
)

DEMO = Path(__file__).parent / "data" / "medrega_demo_prompts.jsonl"
RECORDS = {r["id"]: r for r in map(json.loads, DEMO.read_text(encoding="utf-8").splitlines())}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- demo answers -------------------------------------------------------------------------


def test_demo_answer_with_two_boxes_of_one_object():
    parsed = parse_answer(RECORDS[8]["answer"])
    assert parsed.warnings == ()
    assert parsed.spans == (GroundedSpan("carotid vessel wall",
                                         ((365, 293, 416, 598), (596, 316, 635, 464)),
                                         0, len(RECORDS[8]["answer"])),)
    assert parsed.plain == "carotid vessel wall"


def test_demo_grounded_report_with_two_objects():
    answer = RECORDS[9]["answer"]
    parsed = parse_answer(answer)
    assert parsed.warnings == ()
    assert [(s.ref, s.boxes) for s in parsed.spans] == [
        ("right lung", ((102, 106, 481, 910),)), ("left lung", ((535, 128, 923, 889),))]
    for span in parsed.spans:
        assert answer[span.start:span.end].startswith(f"<ref>{span.ref}</ref><box>")
        assert answer[span.start:span.end].endswith("]]</box>")
    assert parsed.plain == ("right lung, left lung: No focal consolidation, pleural effusion, or "
                            "pneumothorax is seen. There is no evidence for pulmonary edema. No "
                            "radiographic evidence for acute cardiopulmonary process")


def test_demo_chinese_lesion_answer():
    parsed = parse_answer(RECORDS[10]["answer"])
    assert parsed.warnings == ()
    assert [(s.ref, s.boxes, s.start) for s in parsed.spans] == [
        ("胰腺癌", ((661, 528, 743, 599),), 0)]
    assert parsed.plain.startswith("胰腺癌：胰尾部见一稍低密度肿块，约39mm×28mm×36mm")
    assert parsed.plain.endswith("胰腺癌可能性大。")


@pytest.mark.parametrize("rid", [0, 1, 2, 3, 4, 5, 6, 7])
def test_demo_answers_without_spans_read_unchanged(rid):
    parsed = parse_answer(RECORDS[rid]["answer"])
    assert parsed == parse_answer(RECORDS[rid]["answer"])
    assert (parsed.spans, parsed.warnings, parsed.plain) == ((), (), RECORDS[rid]["answer"])


def test_demo_prompts_parse_too():
    # record 7's question points at a region; record 9's names two refs without boxes
    assert [s.boxes for s in parse_answer(RECORDS[7]["prompt"]).spans] == [
        ((421, 351, 505, 470),)]
    parsed = parse_answer(RECORDS[9]["prompt"])
    assert parsed.spans == ()
    assert parsed.plain.endswith("describe the condition of right lung, left lung")
    starts = [RECORDS[9]["prompt"].index(f"<ref>{r}") for r in ("right lung", "left lung")]
    assert [w for w in parsed.warnings if w.startswith("ref at")] == [
        f"ref at {p} has no box" for p in starts]


# --- well-formed variations -----------------------------------------------------------------


@pytest.mark.parametrize("box", ["[[1,2,3,4]]", "[[ 1, 2 , 3, 4 ]]", "[[1, 2, 3, 4]]",
                                 "[[1，2，3，4]]", " [[1,2,3,4]] ", "[[\n1,\t2, 3, 4]]"])
def test_whitespace_variations(box):
    parsed = parse_answer(f"<ref>lesion</ref><box>{box}</box>")
    assert parsed.warnings == ()
    assert parsed.spans[0].boxes == ((1, 2, 3, 4),)


def test_whitespace_between_ref_and_box():
    text = "see <ref>liver</ref> \n <box>[[10, 20, 30, 40]]</box> here"
    parsed = parse_answer(text)
    assert parsed.warnings == ()
    assert parsed.spans == (GroundedSpan("liver", ((10, 20, 30, 40),), 4, text.index(" here")),)
    assert parsed.plain == "see liver here"


def test_chinese_text_and_full_width_punctuation():
    text = "影像所见：<ref>左肺</ref><box>[[535, 128, 923, 889]]</box>，<ref>右肺</ref>" \
           "<box>[[102, 106, 481, 910]]</box>：未见明显异常（复查）。"
    parsed = parse_answer(text)
    assert parsed.warnings == ()
    assert [(s.ref, s.boxes) for s in parsed.spans] == [
        ("左肺", ((535, 128, 923, 889),)), ("右肺", ((102, 106, 481, 910),))]
    assert parsed.plain == "影像所见：左肺，右肺：未见明显异常（复查）。"


def test_three_boxes_and_edges():
    text = render_box("nodule", [(0, 0, 999, 999), (5, 5, 5, 5), (1, 2, 3, 4)])
    assert text == "<ref>nodule</ref><box>[[0, 0, 999, 999], [5, 5, 5, 5], [1, 2, 3, 4]]</box>"
    assert parse_answer(text).spans[0].boxes == ((0, 0, 999, 999), (5, 5, 5, 5), (1, 2, 3, 4))


def test_plain_tidies_whitespace_only_at_cuts():
    text = "A  <box>[[1, 2, 3, 4]]</box> B,  C <box>[[1, 2, 3, 4]]</box>. D"
    parsed = parse_answer(text)
    assert parsed.plain == "A  B,  C. D"  # kept "  " where no tag was, trimmed around boxes


# --- malformed answers ----------------------------------------------------------------------


@pytest.mark.parametrize("text, warning", [
    ("<ref>a</ref><box>[[1, 2, 3]]</box>", "box at 18: 3 numbers, not 4"),
    ("<ref>a</ref><box>[[1, 2, 3, 4, 5]]</box>", "box at 18: 5 numbers, not 4"),
    ("<ref>a</ref><box>[[]]</box>", "box at 18: 0 numbers, not 4"),
    ("<ref>a</ref><box>[[1, 2, 3, 1200]]</box>", "box at 18: coordinate 1200 outside 0..999"),
    ("<ref>a</ref><box>[[1, -2, 3, 4]]</box>", "box at 18: coordinate -2 outside 0..999"),
    ("<ref>a</ref><box>[[1, 2, 3, 123456789012345]]</box>",
     "box at 18: coordinate 123456789012… outside 0..999"),
    ("<ref>a</ref><box>[[9, 2, 3, 4]]</box>", "box at 18: x2 < x1"),
    ("<ref>a</ref><box>[[1, 9, 3, 4]]</box>", "box at 18: y2 < y1"),
    ("<ref>a</ref><box>[[1.5, 2, 3, 4]]</box>", "box at 18: '1.5' is not an integer"),
    ("<ref>a</ref><box>1, 2, 3, 4</box>", "box at 12: no [x1, y1, x2, y2] list"),
    ("<ref>a</ref> and more", "ref at 0 has no box"),
    ("<ref>a</ref>, <ref>b</ref><box>[[1, 2, 3, 4]]</box>", "ref at 0 has no box"),
    ("<ref>a</ref><box>[[1, 2, 3, 4]", "unclosed <box> at 12"),
    ("so <ref>a <box>[[1, 2, 3, 4]]</box>", "unclosed <ref> at 3"),
    ("see <box>[[1, 2, 3, 4]]</box>", "box at 4 without a ref"),
    ("text</ref>", "stray </ref> at 4"),
    ("text</box>", "stray </box> at 4"),
    ("<ref> </ref><box>[[1, 2, 3, 4]]</box>", "ref at 0 is empty"),
    ("<ref>a</ref><box>[[1, 2, 3, 4]] junk</box>", "box at 12: unexpected text 'junk'"),
])
def test_malformed_spans_warn(text, warning):
    parsed = parse_answer(text)
    assert warning in parsed.warnings
    assert all(s.ref != "a" for s in parsed.spans) or "unexpected" in warning


def test_bad_boxes_are_dropped_and_good_ones_kept():
    text = "<ref>a</ref><box>[[1, 2, 3, 4], [1, 2, 3], [7, 8, 900, 950], [5, 0, 1, 0]]</box>"
    parsed = parse_answer(text)
    assert parsed.spans[0].boxes == ((1, 2, 3, 4), (7, 8, 900, 950))
    assert parsed.warnings == (f"box at {text.index('[1, 2, 3]')}: 3 numbers, not 4",
                               f"box at {text.index('[5, 0')}: x2 < x1")


def test_plain_of_malformed_text():
    assert parse_answer("<ref>a</ref><box>[[1, 2, 3, 4]").plain == "a"
    assert parse_answer("x <box>[[1, 2]]</box>, y").plain == "x, y"
    assert parse_answer("</ref></box>").plain == ""


def test_warnings_are_capped():
    parsed = parse_answer("</box>" * 80)
    assert parsed.warnings[:2] == ("stray </box> at 0", "stray </box> at 6")
    assert len(parsed.warnings) == 51 and parsed.warnings[-1] == "and 30 more warnings"


def test_not_a_string():
    parsed = parse_answer(None)  # type: ignore[arg-type]
    assert parsed.spans == () and parsed.warnings == ("answer is not a string (NoneType)",)


FRAGMENTS = st.sampled_from(["<ref>", "</ref>", "<box>", "</box>", "[[", "]]", "[", "]", ",",
                             ", ", "，", " ", "\n", "0", "7", "999", "1000", "-", "12345678",
                             "x", "肺", "：", "<", ">", "</", "ref", "box", ".5"])


@FUZZ
@given(st.text())
def test_parse_never_raises_on_any_text(text):
    parsed = parse_answer(text)
    assert parsed.text == text
    _check_invariants(parsed)


@FUZZ
@given(st.lists(FRAGMENTS, max_size=60).map("".join))
def test_parse_never_raises_on_tag_soup(text):
    _check_invariants(parse_answer(text))


def _check_invariants(parsed):
    for span in parsed.spans:
        assert span.ref and span.boxes
        assert parsed.text[span.start:span.end].startswith("<ref>")
        assert parsed.text[span.start:span.end].endswith("</box>")
        for x1, y1, x2, y2 in span.boxes:
            assert 0 <= x1 <= x2 <= GRID_MAX and 0 <= y1 <= y2 <= GRID_MAX
    assert "<ref>" not in parsed.plain and "<box>" not in parsed.plain


def test_parse_is_linear_on_adversarial_text():
    for text in ("<ref>" * 40000, "<ref>a</ref><box>" + "[" * 100000, "[[1," * 50000,
                 "<ref>a</ref><box>[[" + "1, " * 100000 + "]]</box>", "</box>" * 30000,
                 "<ref>a</ref>  <box>[[1, 2, 3, 4]] x" * 20000, "<ref>a</ref><box>[[ " * 20000,
                 "<ref></ref> " * 30000):
        t0 = time.perf_counter()
        parsed = parse_answer(text)
        assert time.perf_counter() - t0 < 2.0
        assert len(parsed.warnings) <= 51


# --- rendering ------------------------------------------------------------------------------


def test_render_matches_demo_format():
    assert render_box("carotid vessel wall", [(365, 293, 416, 598), (596, 316, 635, 464)]) \
        == RECORDS[8]["answer"]
    assert render_ref("right lung") == "<ref>right lung</ref>"


@pytest.mark.parametrize("ref, boxes", [
    ("a<b", [(1, 2, 3, 4)]), ("a>b", [(1, 2, 3, 4)]), ("", [(1, 2, 3, 4)]), ("a", []),
    ("a", [(1, 2, 3, 1000)]), ("a", [(-1, 2, 3, 4)]), ("a", [(5, 2, 3, 4)]),
    ("a", [(1, 5, 3, 4)]), ("a", [(1, 2, 3)]), ("a", [(1.0, 2, 3, 4)]), ("a", [(True, 2, 3, 4)]),
])
def test_render_refuses_bad_input(ref, boxes):
    with pytest.raises(BoxError):
        render_box(ref, boxes)


GRID_BOXES = st.tuples(st.integers(0, GRID_MAX), st.integers(0, GRID_MAX),
                       st.integers(0, GRID_MAX), st.integers(0, GRID_MAX)).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
REFS = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
               min_size=1, max_size=20).filter(lambda s: s.strip() == s and s)


@FUZZ
@given(st.lists(st.tuples(REFS, st.lists(GRID_BOXES, min_size=1, max_size=4)), max_size=4),
       st.sampled_from([" ", ", ", "：", "\n", " and "]))
def test_render_then_parse_round_trip(objects, glue):
    rendered = [render_box(ref, boxes) for ref, boxes in objects]
    text = "Findings: " + glue.join(rendered) + "."
    parsed = parse_answer(text)
    assert parsed.warnings == ()
    assert [(s.ref, list(s.boxes)) for s in parsed.spans] == objects
    assert [text[s.start:s.end] for s in parsed.spans] == rendered


# --- conversion -----------------------------------------------------------------------------


SIZES = st.integers(1, 10000)


@FUZZ
@given(GRID_BOXES, SIZES, SIZES)
def test_grid_to_pixels_to_grid_is_exact(box, width, height):
    px = to_pixels(box, width, height)
    assert 0 <= px[0] and px[0] + px[2] <= width + 1e-9
    assert to_grid(px, width, height) == box


@st.composite
def pixel_boxes(draw, max_size=10000):
    width, height = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    coord = st.floats(0, 1, allow_nan=False)
    xs = sorted((draw(coord) * width, draw(coord) * width))
    ys = sorted((draw(coord) * height, draw(coord) * height))
    return (xs[0], ys[0], xs[1] - xs[0], ys[1] - ys[0]), width, height


def _corner_errors(box, width, height):
    back = to_pixels(to_grid(box, width, height), width, height)
    corners = lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])  # noqa: E731
    return [abs(a - b) for a, b in zip(corners(back), corners(box), strict=True)]


@FUZZ
@given(pixel_boxes())
def test_pixels_to_grid_to_pixels_within_half_a_step(case):
    box, width, height = case
    x1, y1, x2, y2 = _corner_errors(box, width, height)
    half_x, half_y = width / GRID_MAX / 2, height / GRID_MAX / 2
    tol = 1e-9 * max(width, height)
    assert max(x1, x2) <= half_x + tol and max(y1, y2) <= half_y + tol


@FUZZ
@given(pixel_boxes(max_size=2 * GRID_MAX))
def test_pixels_to_grid_to_pixels_within_a_pixel_up_to_1998(case):
    # Half a step is W / 1998 px, so at most one pixel while W <= 1998. Beyond that it cannot
    # hold: 1000 grid values cannot name more than about 2000 distinct edges to the pixel.
    box, width, height = case
    assert max(_corner_errors(box, width, height)) <= 1 + 1e-9


def test_to_grid_examples():
    assert to_grid((0, 0, 512, 512), 512, 512) == (0, 0, 999, 999)
    assert to_grid((0, 0, 0, 0), 512, 512) == (0, 0, 0, 0)
    assert to_grid((256, 128, 0, 0), 512, 512) == (500, 250, 500, 250)  # 499.5 rounds up
    assert to_pixels((0, 0, 999, 999), 432, 300) == (0.0, 0.0, 432.0, 300.0)


@pytest.mark.parametrize("box, width, height", [
    ((0, 0, 1, 1), 0, 10), ((0, 0, 1, 1), 10, -1), ((0, 0, 1, 1), 10.5, 10),
    ((0, 0, 1, 1), True, 10), ((float("nan"), 0, 1, 1), 10, 10),
    ((0, 0, float("inf"), 1), 10, 10), ((0, 0, -1, 1), 10, 10), ((0, 0, 1, -1), 10, 10),
    ((-1, 0, 1, 1), 10, 10), ((5, 0, 6, 1), 10, 10), ((0, 9.5, 1, 1), 10, 10),
    ((0, 0, 1), 10, 10), ("abcd", 10, 10),
])
def test_to_grid_refuses(box, width, height):
    with pytest.raises(BoxError) as exc:
        to_grid(box, width, height)
    assert isinstance(exc.value, ContractError)


@pytest.mark.parametrize("box", [(0, 0, 1000, 1), (5, 0, 4, 1), (0, 5, 1, 4), (0, 0, 1),
                                 (0.5, 0, 1, 1)])
def test_to_pixels_refuses(box):
    with pytest.raises(BoxError):
        to_pixels(box, 10, 10)


# --- regions --------------------------------------------------------------------------------


def test_spans_to_regions():
    rec = RECORDS[8]
    spans = parse_answer(rec["answer"] + " and <ref>lumen</ref><box>[[0, 0, 999, 999]]</box>").spans
    regions = spans_to_regions(spans, rec["width"], rec["height"], "1.2.3.4", frame=2)
    assert [r.id for r in regions] == ["medrega:1", "medrega:2", "medrega:3"]
    assert [r.label for r in regions] == ["carotid vessel wall"] * 2 + ["lumen"]
    assert all(isinstance(r, Region) and r.kind == "box" and r.instance_uid == "1.2.3.4"
               and r.frame == 2 and r.instances == ("1.2.3.4",) for r in regions)
    assert regions[0].box == pytest.approx(to_pixels((365, 293, 416, 598), 432, 432))
    assert regions[2].box == (0.0, 0.0, 432.0, 432.0)
    assert regions[0].to_dict()["box"] == list(regions[0].box)
    assert [r.id for r in spans_to_regions(spans, 10, 10, "u", id_prefix="q")][:1] == ["q:1"]


def test_spans_to_regions_needs_an_instance():
    spans = parse_answer(RECORDS[8]["answer"]).spans
    with pytest.raises(ContractError):
        spans_to_regions(spans, 432, 432, "")
    assert spans_to_regions((), 432, 432, "u") == []
