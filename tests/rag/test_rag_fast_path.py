"""The warm search path and the fast first start (hashing embedder, real instances throughout).

* a query's embedding is computed once per process, however often it is asked;
* a warm search reads no file: the index is loaded once;
* a build embeds only the chunks that neither the previous index nor the vectors shipped with
  the corpus hold, and refuses shipped vectors whose file does not match its manifest's sha256;
* the repository ships vectors for every chunk of its corpus with the default embedder, so a
  fresh clone's `medgate kb build` never loads the model;
* `medgate serve`'s warm-up reports the index state to /readyz.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from app.rag import index as kbindex
from app.rag.cases import add_case, search_cases
from app.rag.corpus import load_corpus
from app.rag.embedder import QUERIES, HashingEmbedder, QueryCache, embedder_name, get_embedder
from app.rag.index import SHIPPED, build, entry_chunks, read_shipped, save_vectors, text_key
from app.rag.search import WARM, search, warm_up

REPO = Path(__file__).resolve().parents[2]


class Counting:
    """Counts the texts a real embedder instance is given (its own ``embed`` does the work)."""

    def __init__(self, emb) -> None:  # noqa: ANN001
        self.emb, self.texts = emb, []
        self._embed = emb.embed
        emb.embed = self

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += list(texts)
        return self._embed(texts)

    def undo(self) -> None:
        del self.emb.embed


@pytest.fixture
def counted(rag_env):
    spy = Counting(get_embedder())
    yield spy
    spy.undo()


def test_the_same_query_is_embedded_once_per_process(rag_env, counted):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    counted.texts.clear()
    q = "LAA-950 percentage of lung below -950 HU"
    first = search(q, kb_dir=kb_dir)
    for _ in range(5):
        assert search(q, kb_dir=kb_dir) == first
    assert search(q, domain="ct", kb_dir=kb_dir)["results"] == first["results"]
    add_case("ct", "r1", "Centrilobular emphysema, LAA-950 of 14%.", kb_dir=kb_dir)
    assert search(q, domain="ct", cases=3, kb_dir=kb_dir)["cases"]
    assert search_cases(q, "ct", kb_dir=kb_dir)
    assert counted.texts.count(q) == 1  # knowledge and case search share it
    search("pneumothorax rim", kb_dir=kb_dir)
    assert counted.texts.count("pneumothorax rim") == 1 and QUERIES.hits >= 8


def test_the_query_cache_keeps_the_most_recent_queries_per_embedder():
    emb = HashingEmbedder(32)
    spy = Counting(emb)
    cache = QueryCache(size=2)
    a = cache.get(emb, "a")
    cache.get(emb, "b")
    assert cache.get(emb, "a") is a  # a is now the most recent
    cache.get(emb, "c")  # evicts b
    cache.get(emb, "a")
    cache.get(emb, "b")
    assert spy.texts == ["a", "b", "c", "b"] and len(cache) == 2
    assert not a.flags.writeable
    other = HashingEmbedder(16)
    assert cache.get(other, "a").shape == (16,)  # another embedder: its own entry


def test_a_warm_search_reads_no_file(rag_env):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    search("pleural effusion meniscus", kb_dir=kb_dir)
    reads_before = kbindex.READS
    opened: list[str] = []
    watching = [True]

    def hook(event: str, args: tuple) -> None:
        if watching[0] and event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # hooks stay for the process: this one stops watching at the end
    try:
        for q in ("pleural effusion meniscus", "QTc prolongation", "Gleason pattern 4",
                  "mitotic figures per 10 HPF", "RBBB rsR' in V1") * 4:
            search(q, kb_dir=kb_dir)
    finally:
        watching[0] = False
    assert kbindex.READS == reads_before
    assert [p for p in opened if str(kb_dir) in p or str(corpus) in p] == []


def _index_files(kb_dir: Path) -> dict[str, bytes]:
    folder = kb_dir / kbindex.read_meta(kb_dir)["current"]
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shipped_vectors_are_reused_and_the_index_is_what_a_full_build_writes(rag_env, counted,
                                                                               tmp_path):
    corpus, kb_dir = rag_env
    full = build(corpus, kb_dir)
    assert (full.embedded, full.reused) == (24, 0)
    folder = save_vectors(kb_dir, corpus)
    assert folder == corpus / SHIPPED and (folder / "vectors.npy").is_file()
    counted.texts.clear()
    fresh = tmp_path / "fresh-kb"
    again = build(corpus, fresh)
    assert again.rebuilt and (again.embedded, again.reused) == (0, 24)
    assert counted.texts == []  # the embedder was never asked
    assert _index_files(fresh) == _index_files(kb_dir)


def test_shipped_vectors_that_do_not_match_their_hash_are_not_used(rag_env, counted, tmp_path):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    save_vectors(kb_dir, corpus)
    npy = corpus / SHIPPED / "vectors.npy"
    data = bytearray(npy.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # one float of the last vector becomes +inf
    npy.write_bytes(bytes(data))
    keys, vectors, why = read_shipped(corpus, get_embedder().name)
    assert vectors is None and "sha256" in why
    counted.texts.clear()
    res = build(corpus, tmp_path / "other-kb")
    assert (res.embedded, res.reused) == (24, 0) and len(counted.texts) == 24
    assert _index_files(tmp_path / "other-kb") == _index_files(kb_dir)
    # vectors of another embedder are not used either
    assert build(corpus, tmp_path / "kb64", embedder="hashing:64").embedded == 24


def test_an_edited_entry_embeds_only_its_changed_chunk(rag_env, counted):
    corpus, kb_dir = rag_env
    build(corpus, kb_dir)
    p = corpus / "ct" / "ct-emphysema.md"
    p.write_text(p.read_text().replace("Correlate with spirometry", "Correlate with PFTs"))
    counted.texts.clear()
    res = build(corpus, kb_dir)
    assert res.rebuilt and (res.embedded, res.reused) == (1, 23)
    assert counted.texts == [t for _, t in entry_chunks(
        next(e for e in load_corpus(corpus) if e.id == "ct-emphysema")) if "PFTs" in t]
    out = search("correlate with PFTs", domain="ct", kb_dir=kb_dir)
    assert out["results"][0]["id"] == "ct-emphysema" and "PFTs" in out["results"][0]["passage"]
    assert build(corpus, kb_dir, force=True).embedded == 24  # force: everything again


def test_the_repository_ships_vectors_for_every_chunk_of_its_corpus():
    """Fails when an entry was edited without `medgate kb build --save-vectors`: a fresh
    clone's first start would then embed those chunks (correct, but not in seconds)."""
    root = REPO / "knowledge_base"
    keys, vectors, why = read_shipped(root, embedder_name(""))
    assert vectors is not None, why or f"no vectors in {root / SHIPPED}"
    manifest = json.loads((root / SHIPPED / "manifest.json").read_text())
    assert vectors.shape == (manifest["rows"], 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    wanted = {text_key(t) for e in load_corpus(root) for _, t in entry_chunks(e)}
    assert wanted == set(keys), f"{len(wanted - set(keys))} chunks have no shipped vector"
    assert (root / SHIPPED / "vectors.npy").stat().st_size < 2 * 1024 * 1024


def test_warm_up_builds_the_index_and_readiness_reports_it(rag_env, monkeypatch):
    from app.readiness import check_knowledge

    corpus, kb_dir = rag_env
    monkeypatch.setenv("MEDGATE_KB_CORPUS", str(corpus))
    assert check_knowledge() is None  # no warm-up in this process yet
    done = warm_up(kb_dir)
    assert done["state"] == "ready" and done["entries"] == 8
    assert check_knowledge()["state"] == "ready"
    p = corpus / "ecg" / "ecg-rbbb.md"
    p.write_text(p.read_text().replace("id: ecg-rbbb", "id: ecg-other"))
    from app.rag.search import reset

    reset()
    with pytest.raises(Exception, match="does not match"):
        warm_up(kb_dir)
    assert WARM["state"] == "failed"
    with pytest.raises(RuntimeError, match="knowledge index"):
        check_knowledge()
    reset()  # (the fixture's teardown does it too)
    assert check_knowledge() is None
