"""The per-domain case index of signed reports: it grows, it is searchable, it survives
concurrent writers in other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.rag import add_case, count_cases, search, search_cases
from app.rag.cases import case_index

REPO = Path(__file__).resolve().parents[2]

REPORTS = {
    "r1": "Right apical pneumothorax with a 2 cm rim. No mediastinal shift.",
    "r2": "Small left pleural effusion blunting the costophrenic angle.",
    "r3": "Clear lungs. Normal heart size. No pleural effusion or pneumothorax.",
}


def test_case_index_grows_and_finds_the_similar_report(rag_env):
    _, kb_dir = rag_env
    assert count_cases("cxr", kb_dir=kb_dir) == 0
    for rid, text in REPORTS.items():
        add_case("cxr", rid, text, kb_dir=kb_dir)
    assert count_cases("cxr", kb_dir=kb_dir) == 3
    assert count_cases("ct", kb_dir=kb_dir) == 0
    hits = search_cases("apical pneumothorax rim", "cxr", k=2, kb_dir=kb_dir)
    assert hits[0]["report_id"] == "r1" and len(hits) <= 2
    assert set(hits[0]) == {"report_id", "score", "text"}
    add_case("cxr", "r4", "Large right pneumothorax, apical rim 4 cm.", kb_dir=kb_dir)
    assert count_cases("cxr", kb_dir=kb_dir) == 4
    assert (kb_dir / "cases" / "cxr.jsonl").read_text().count("\n") == 4


def test_an_amended_report_replaces_its_earlier_text(rag_env):
    _, kb_dir = rag_env
    add_case("cxr", "r1", REPORTS["r1"], kb_dir=kb_dir)
    add_case("cxr", "r1", "Amended: left basal consolidation.", kb_dir=kb_dir)
    assert count_cases("cxr", kb_dir=kb_dir) == 1
    hits = search_cases("consolidation", "cxr", kb_dir=kb_dir)
    assert [h["text"] for h in hits] == ["Amended: left basal consolidation."]


def test_unknown_domain_and_empty_text_are_refused(rag_env):
    _, kb_dir = rag_env
    with pytest.raises(ValueError):
        add_case("mri", "r1", "text", kb_dir=kb_dir)
    with pytest.raises(ValueError):
        add_case("ct", "r1", "   ", kb_dir=kb_dir)


def test_concurrent_processes_append_without_losing_or_mixing_lines(rag_env):
    _, kb_dir = rag_env
    add_case("ecg", "seed", "Sinus rhythm, QTc 430 ms.", kb_dir=kb_dir)
    assert count_cases("ecg", kb_dir=kb_dir) == 1  # this process has read the file once
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from app.rag import add_case\n"
        "for i in range(15):\n"
        "    add_case('ecg', f'{sys.argv[1]}-{i}', 'Sinus rhythm with first degree AV block '"
        " * 20 + str(i), kb_dir=Path(sys.argv[2]))\n"
    )
    env = {**os.environ, "MEDGATE_EMBEDDER": "hashing"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, tag, str(kb_dir)], cwd=REPO, env=env)
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = (kb_dir / "cases" / "ecg.jsonl").read_text().splitlines()
    assert len(lines) == 31 and all(json.loads(x)["report_id"] for x in lines)
    assert count_cases("ecg", kb_dir=kb_dir) == 31  # read incrementally from where it stopped
    assert len(case_index("ecg", kb_dir=kb_dir).ids) == 31


def test_search_can_return_similar_prior_cases_beside_the_knowledge(rag_env):
    corpus, kb_dir = rag_env
    from app.rag import build

    build(corpus, kb_dir)
    add_case("cxr", "r1", REPORTS["r1"], kb_dir=kb_dir)
    out = search("apical pneumothorax", domain="cxr", cases=3, kb_dir=kb_dir)
    assert out["results"][0]["id"] == "cxr-pneumothorax"
    assert out["cases"][0]["report_id"] == "r1"
