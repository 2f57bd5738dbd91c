"""Building, persisting, reloading and searching the per-domain indexes (hashing embedder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.rag import build, get_entry, search
from app.rag.corpus import CorpusError
from app.rag.index import load, read_meta

REPO = Path(__file__).resolve().parents[2]


def test_build_writes_one_index_per_domain_and_skips_an_unchanged_corpus(rag_env):
    corpus, kb_dir = rag_env
    calls = []
    first = build(corpus, kb_dir, progress=lambda *a: calls.append(a))
    assert first.rebuilt and first.counts == {"cxr": 2, "ct": 2, "ecg": 2, "pathology": 2}
    meta = read_meta(kb_dir)
    assert meta["embedder"] == "hashing:256" and meta["corpus_hash"] == first.corpus_hash
    folder = kb_dir / meta["current"]
    assert sorted(p.name for p in folder.glob("*.faiss")) == [
        "ct.faiss", "cxr.faiss", "ecg.faiss", "pathology.faiss"]
    assert ("embed", 24, 24) in calls
    assert {c[0] for c in calls} == {"check", "embed", "write"}
    assert build(corpus, kb_dir).rebuilt is False
    assert read_meta(kb_dir)["current"] == meta["current"]


def test_build_reruns_when_the_corpus_or_the_embedder_changes(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    p = corpus / "ct" / "ct-emphysema.md"
    p.write_text(p.read_text().replace("Correlate with spirometry", "Correlate with PFTs"))
    assert build(corpus, kb_dir).rebuilt is True
    assert build(corpus, kb_dir).rebuilt is False
    assert build(corpus, kb_dir, embedder="hashing:64").rebuilt is True
    assert read_meta(kb_dir)["dim"] == 64
    assert len(list(kb_dir.glob("index-*"))) <= 2  # old folders are pruned


def test_build_refuses_a_corpus_with_problems(rag_env):
    corpus, kb_dir = rag_env
    p = corpus / "ecg" / "ecg-rbbb.md"
    p.write_text(p.read_text().replace("id: ecg-rbbb", "id: ecg-other"))
    with pytest.raises(CorpusError) as exc:
        build(corpus, kb_dir)
    assert any("does not match the file name" in x for x in exc.value.problems)


def test_search_returns_the_matching_entry_with_title_score_and_passage(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    out = search("LAA-950 percentage of lung below -950 HU", domain="ct", kb_dir=kb_dir)
    assert out["domain"] == "ct"
    top = out["results"][0]
    assert top["id"] == "ct-emphysema" and top["title"] == "Emphysema quantification"
    assert 0 < top["score"] <= 1 and "LAA-950" in top["passage"]
    assert all(set(r) == {"id", "title", "score", "passage"} for r in out["results"])
    assert len(out["results"]) <= 5


def test_explicit_domain_wins_then_metadata_then_text(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    assert search("QTc prolongation torsades", kb_dir=kb_dir)["domain"] == "ecg"
    assert search("mitotic figures hotspot", kb_dir=kb_dir)["domain"] == "pathology"
    assert search("QTc prolongation", metadata={"Modality": "CT"}, kb_dir=kb_dir)["domain"] == "ct"
    out = search("QTc", domain="cxr", metadata={"Modality": "ECG"}, kb_dir=kb_dir)
    assert out["domain"] == "cxr"
    with pytest.raises(ValueError):
        search("anything", domain="mri", kb_dir=kb_dir)


def test_a_query_that_matches_nothing_returns_no_results(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    assert search("zzzz qqqq", domain="cxr", kb_dir=kb_dir)["results"] == []


def test_get_entry_returns_sections_and_none_for_unknown_ids(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    e = get_entry("ecg-rbbb", kb_dir=kb_dir)
    assert e["domain"] == "ecg" and "RBBB" in e["synonyms"]
    assert "QRS duration" in e["sections"]["Criteria"]
    assert get_entry("no-such-entry", kb_dir=kb_dir) is None


def test_search_builds_a_missing_index_once_and_load_is_cached(rag_env):
    corpus, kb_dir = rag_env
    os.environ["MEDGATE_KB_CORPUS"] = str(corpus)
    try:
        assert search("pneumothorax rim", kb_dir=kb_dir)["results"][0]["id"] == "cxr-pneumothorax"
    finally:
        del os.environ["MEDGATE_KB_CORPUS"]
    assert read_meta(kb_dir)["corpus_root"] == str(corpus.resolve())
    assert load(kb_dir) is load(kb_dir)


def test_a_second_process_loads_the_built_index_without_rebuilding(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    meta_file = kb_dir / "meta.json"
    before = (meta_file.stat().st_mtime_ns, read_meta(kb_dir)["current"])
    code = (
        "import json\n"
        "from app.rag import build, search\n"
        f"r = build({str(corpus)!r})\n"
        "out = search('Gleason grade group on needle biopsy')\n"
        "print(json.dumps({'rebuilt': r.rebuilt, 'out': out}))\n"
    )
    env = {**os.environ, "MEDGATE_DATA_DIR": str(kb_dir.parent), "MEDGATE_EMBEDDER": "hashing"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["rebuilt"] is False
    assert got["out"]["domain"] == "pathology"
    assert got["out"]["results"][0]["id"] == "path-gleason"
    assert (meta_file.stat().st_mtime_ns, read_meta(kb_dir)["current"]) == before
