"""Retrieval benchmark: quality of dense, lexical and fused retrieval, domain identification,
the adaptive selection floor, and query latency against peers run in the same process.

Quality: recall@1, recall@5 and MRR on ``bench/rag_queries.jsonl`` (a hit is any relevant id
in the top results), with each query's own domain given, as the pipeline gives it.
Latency: p50/p95 per query at the real corpus size, and at 100,000 synthetic chunks, where the
dense vectors are random unit vectors and the BM25 documents are synthetic token lists (embedding
100k passages with MiniLM on two cores would take too long). Peers: brute-force numpy dot
product for the dense part and ``rank_bm25`` (when installed) for the lexical part.

HTTP (``--http``, or ``--http-only`` for nothing else): the real app, ``python -m app.cli serve``
on a free port with a temporary data folder (SQLite, no SCP, no embedded worker, the index
built above copied in), a clinician key made with ``medgate keys create``; then
``GET /api/v1/kb/search?q=...`` for every query with httpx on one kept-alive connection, first
as a warm-up (each query seen for the first time: its embedding is computed) and then timed
``--http-rounds`` times (warm: the per-process query-embedding cache answers). The peer, taking
turns with it query by query, is the same ``search()`` called in this process, so the HTTP
overhead (auth, routing, thread hops, JSON) is the difference.

    .venv/bin/python bench/rag.py [--queries F] [--corpus DIR] [--synthetic N] [--http]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import DOMAINS  # noqa: E402
from app.rag import index as kbindex  # noqa: E402
from app.rag.domain import KEYWORD_WEIGHT, domain_from_text, keyword_hits, text_scores  # noqa: E402
from app.rag.embedder import QUERIES, get_embedder  # noqa: E402
from app.rag.lexical import tokenize  # noqa: E402
from app.rag.search import search  # noqa: E402
from app.rag.select import DEFAULT_FLOOR, DEFAULT_GAMMA, adaptive_select  # noqa: E402

METHODS: dict[str, tuple[str, float]] = {
    "dense (cosine)": ("minmax", 1.0),
    "lexical (BM25)": ("minmax", 0.0),
    "fused: convex w=0.5 (default)": ("convex", 0.5),
    "fused: reciprocal rank (k=60)": ("rrf", 0.5),
    "fused: per-query min-max w=0.5": ("minmax", 0.5),
}
SWEEP = (0.3, 0.4, 0.6, 0.7)
# Queries about none of the four domains, to see what the floor lets through.
OFF_TOPIC = [
    "quarterly revenue forecast for the retail division",
    "how to bake sourdough bread at home",
    "best hiking trails in the alps in summer",
    "python list comprehension syntax",
    "football match results from last weekend",
    "renew a passport before travelling abroad",
    "tomato plants with yellow leaves in the garden",
    "configure a wifi router password",
]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def first_rank(ranked: list[str], relevant: set[str]) -> int | None:
    return next((i + 1 for i, e in enumerate(ranked) if e in relevant), None)


def quality(ranks: list[int | None]) -> tuple[float, float, float]:
    n = max(len(ranks), 1)
    r1 = sum(1 for r in ranks if r == 1) / n
    r5 = sum(1 for r in ranks if r is not None and r <= 5) / n
    mrr = sum(1.0 / r for r in ranks if r) / n
    return r1, r5, mrr


def row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(
        zip(cells, widths, strict=True)))


def eval_quality(kb: kbindex.KnowledgeBase, queries: list[dict], qvecs: np.ndarray) -> None:
    print(f"\n## Retrieval quality ({len(queries)} queries, domain given)")
    widths = [34, 9, 9, 7]
    print(row(["method", "recall@1", "recall@5", "MRR"], widths))
    configs = dict(METHODS)
    configs.update({f"  (convex w={w})": ("convex", w) for w in SWEEP})
    for name, (fusion, w) in configs.items():
        ranks = []
        for q, v in zip(queries, qvecs, strict=True):
            hits = kb.domains[q["domain"]].search(v, tokenize(q["query"]), fusion=fusion, w=w)
            ranks.append(first_rank([h.entry for h in hits], set(q["relevant"])))
        r1, r5, mrr = quality(ranks)
        print(row([name, f"{r1:.3f}", f"{r5:.3f}", f"{mrr:.3f}"], widths))


def eval_domain(kb: kbindex.KnowledgeBase, queries: list[dict], qvecs: np.ndarray) -> None:
    print("\n## Domain identification from the query text alone")
    right = {"keywords only": 0, "index scores only": 0, "index + keywords (used)": 0}
    for q, v in zip(queries, qvecs, strict=True):
        toks = tokenize(q["query"])
        kw = keyword_hits(toks)
        both = text_scores(kb, v, toks)
        idx = {d: both[d] - KEYWORD_WEIGHT * kw[d] for d in DOMAINS}
        kwbest = max(DOMAINS, key=lambda d: kw[d]) if max(kw.values()) else None
        right["keywords only"] += kwbest == q["domain"]
        right["index scores only"] += max(DOMAINS, key=lambda d: idx[d]) == q["domain"]
        right["index + keywords (used)"] += max(DOMAINS, key=lambda d: both[d]) == q["domain"]
    for name, n in right.items():
        print(f"{name:34} accuracy {n / len(queries):.3f} ({n}/{len(queries)})")


def eval_selection(kb: kbindex.KnowledgeBase, queries: list[dict], qvecs: np.ndarray) -> None:
    print(f"\n## Adaptive selection (gamma={DEFAULT_GAMMA}, k=5) by floor")
    print("hit = a relevant entry among the selected; auto dom = domain from the text; "
          f"off-topic = share of the {len(OFF_TOPIC)} off-topic queries that select anything")
    widths = [8, 9, 14, 14, 10]
    print(row(["floor", "hit", "hit auto dom", "mean selected", "off-topic"], widths))
    given, auto = [], []
    for q, v in zip(queries, qvecs, strict=True):
        toks = tokenize(q["query"])
        given.append(kb.domains[q["domain"]].search(v, toks))
        dom = domain_from_text(kb, v, toks)
        auto.append(kb.domains[dom].search(v, toks) if dom else [])
    off_hits = [
        [h for d in DOMAINS for h in kb.domains[d].search(v, tokenize(t), limit=5)]
        for t, v in zip(OFF_TOPIC, get_embedder().embed(OFF_TOPIC), strict=True)
    ]

    def pick(hits: list, floor: float) -> list:
        return adaptive_select(hits, score=lambda h: h.score, floor=floor, key=lambda h: h.entry)

    n = len(queries)
    for floor in (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
        sel = [pick(h, floor) for h in given]
        hit = sum(any(h.entry in q["relevant"] for h in s) for q, s in zip(queries, sel,
                                                                           strict=True))
        hit_auto = sum(any(h.entry in q["relevant"] for h in pick(a, floor))
                       for q, a in zip(queries, auto, strict=True))
        n_sel = sum(len(s) for s in sel)
        off = sum(bool(pick(h, floor)) for h in off_hits)
        mark = " (default)" if floor == DEFAULT_FLOOR else ""
        print(row([f"{floor:.2f}", f"{hit / n:.3f}", f"{hit_auto / n:.3f}",
                   f"{n_sel / n:.2f}", f"{off / len(OFF_TOPIC):.2f}"], widths) + mark)


def timeit(fns: list[Callable[[int], object]], n: int) -> list[list[float]]:
    """Per function, the ms of each of ``n`` calls; the functions take turns query by query, so
    that load from other processes on the machine falls on all of them alike."""
    out: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for f, xs in zip(fns, out, strict=True):
            t = time.perf_counter()
            f(i)
            xs.append((time.perf_counter() - t) * 1000)
    return out


def latency_real(kb_dir: Path, kb: kbindex.KnowledgeBase, queries: list[dict],
                 qvecs: np.ndarray) -> None:
    n_chunks = sum(len(kb.domains[d]) for d in DOMAINS)
    print(f"\n## Latency at the real corpus size ({len(kb.entries)} entries, {n_chunks} chunks), "
          f"{len(queries)} queries, ms")
    emb = get_embedder()
    qs = queries
    for q in qs[:10]:  # warm-up: first calls pay for lazy initialisation
        search(q["query"], kb_dir=kb_dir)

    def new(i: int, **kw: object) -> object:  # the query not seen before: embedding computed
        QUERIES.clear()
        return search(qs[i]["query"], kb_dir=kb_dir, **kw)

    e2e, auto, seen, enc, ret = timeit([
        lambda i: new(i, domain=qs[i]["domain"]),
        lambda i: new(i),
        lambda i: search(qs[i]["query"], kb_dir=kb_dir),  # just asked: the cached embedding
        lambda i: emb.embed([qs[i]["query"]]),
        lambda i: kb.domains[qs[i]["domain"]].search(qvecs[i], tokenize(qs[i]["query"])),
    ], len(qs))
    for name, xs in (("search(), new query, domain given", e2e),
                     ("search(), new query, domain from text", auto),
                     ("search(), query asked before (cached)", seen),
                     ("  of which: embed the query", enc),
                     ("  of which: hybrid search in domain", ret)):
        print(f"{name:38} p50 {pct(xs, 50):8.2f}  p95 {pct(xs, 95):8.2f}")


def synthetic(n: int, dim: int, seed: int) -> tuple[np.ndarray, list[list[str]]]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vocab = np.array([f"w{i}" for i in range(30000)])
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    lens = rng.integers(30, 90, size=n)
    flat = rng.choice(len(vocab), size=int(lens.sum()), p=p)
    docs, pos = [], 0
    for ln in lens:
        docs.append(vocab[flat[pos : pos + ln]].tolist())
        pos += ln
    return vecs, docs


def latency_synthetic(n: int, seed: int, nq: int) -> None:
    dim = 384
    print(f"\n## Latency at {n:,} synthetic chunks, {nq} queries, ms")
    print("Synthetic: dense vectors are random unit vectors (384-d), BM25 documents are synthetic "
          "token lists (Zipf over 30,000 words, 30-89 tokens); nothing here was embedded.")
    t = time.perf_counter()
    vecs, docs = synthetic(n, dim, seed)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    idx = kbindex.DomainIndex([{"entry": f"s{i}", "text": "", "tokens": d}
                               for i, d in enumerate(docs)], vecs, dim)
    t_ours = time.perf_counter() - t
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(0, n, size=nq)
    qv = vecs[picks] + 0.6 * rng.standard_normal((nq, dim), dtype=np.float32) / np.sqrt(dim)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qt = [list(rng.choice(docs[i], size=4)) for i in picks]
    found = sum(idx.search(qv[i], qt[i], limit=5)[0].entry == f"s{picks[i]}" for i in range(nq))
    print(f"generated in {t_gen:.1f} s; our index (FAISS flat + BM25) built in {t_ours:.1f} s; "
          f"source chunk ranked first for {found}/{nq} queries")

    ours, faiss_t, np_t, bm_t = timeit([
        lambda i: idx.search(qv[i], qt[i], limit=50),
        lambda i: idx.faiss.search(qv[i : i + 1], kbindex.CANDIDATES),
        lambda i: np.argpartition(-(vecs @ qv[i]), kbindex.CANDIDATES),
        lambda i: idx.bm25.scores(qt[i]),
    ], nq)
    print(row(["", "p50", "p95"], [44, 9, 9]))
    lines = [("ours: hybrid search (FAISS + BM25 + fusion)", ours),
             ("ours: dense part, FAISS IndexFlatIP top-200", faiss_t),
             ("peer: dense, numpy brute-force dot + top-200", np_t),
             ("ours: lexical part, BM25 postings", bm_t)]
    peer_bm = None
    try:
        from rank_bm25 import BM25Okapi

        t = time.perf_counter()
        rb = BM25Okapi(docs)
        t_rb = time.perf_counter() - t
        peer_bm = timeit([lambda i: rb.get_scores(qt[i])], min(nq, 50))[0]
        lines.append((f"peer: lexical, rank_bm25 BM25Okapi ({len(peer_bm)} q)", peer_bm))
    except ImportError:
        t_rb = None
        print("(rank_bm25 is not installed: no lexical peer)")
    for name, xs in lines:
        print(row([name, f"{pct(xs, 50):.2f}", f"{pct(xs, 95):.2f}"], [44, 9, 9]))
    print(f"ratio dense p50, numpy / FAISS: {pct(np_t, 50) / pct(faiss_t, 50):.2f}x")
    if peer_bm:
        print(f"ratio lexical p50, rank_bm25 / ours: {pct(peer_bm, 50) / pct(bm_t, 50):.1f}x "
              f"(rank_bm25 index built in {t_rb:.1f} s)")
        print(f"ratio hybrid p50, (numpy + rank_bm25) / ours: "
              f"{(pct(np_t, 50) + pct(peer_bm, 50)) / pct(ours, 50):.1f}x")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def latency_http(kb_dir: Path, queries: list[dict], rounds: int) -> None:
    """p50/p95 of GET /api/v1/kb/search against the running app, and in-process search()."""
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="medgate-bench-rag-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(tmp / "var"), MEDGATE_HTTP_HOST="127.0.0.1",
               MEDGATE_HTTP_PORT=str(port), MEDGATE_EMBEDDED_WORKER="false",
               MEDGATE_START_SCP="false", MEDGATE_DICOM_PORT=str(_free_port()))
    if os.environ.get("MEDGATE_EMBEDDER"):
        env["MEDGATE_EMBEDDER"] = os.environ["MEDGATE_EMBEDDER"]
    shutil.copytree(kb_dir, tmp / "var" / "kb")  # the index built above: no build in the app
    cli = [sys.executable, "-m", "app.cli"]
    log = tmp / "medgate.log"
    proc = None
    try:
        subprocess.run([*cli, "db", "upgrade"], env=env, cwd=REPO, check=True,
                       capture_output=True)
        made = subprocess.run([*cli, "keys", "create", "--role", "clinician", "--name", "bench",
                               "--person", "Dr Bench"], env=env, cwd=REPO, check=True,
                              capture_output=True, text=True)
        headers = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cli, "serve", "--no-migrate"], env=env, cwd=REPO,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"MedGate did not become ready\n{_tail(log)}")
                time.sleep(0.2)
            t_ready = time.perf_counter() - t0
            knowledge: dict = {}
            while knowledge.get("state") not in ("ready", "failed"):  # the warm-up thread
                knowledge = client.get("/readyz").json().get("checks", {}).get("knowledge", {})
                if time.monotonic() > deadline or not knowledge:
                    break
                time.sleep(0.2)
            t_warm = time.perf_counter() - t0

            def get(q: str) -> dict:
                r = client.get("/api/v1/kb/search", params={"q": q})
                r.raise_for_status()
                return r.json()

            t = time.perf_counter()
            get(queries[0]["query"])
            t_first = (time.perf_counter() - t) * 1000
            qs = [q["query"] for q in queries]
            QUERIES.clear()  # this process's peer sees each query for the first time too
            # Warm-up: every query once, over HTTP and in process (each embedding computed once).
            first_http, first_local = timeit([lambda i: get(qs[i]),
                                              lambda i: search(qs[i], kb_dir=kb_dir)], len(qs))
            http_ms: list[float] = []
            local_ms: list[float] = []
            floor_ms: list[float] = []
            for _ in range(rounds):
                h, loc, fl = timeit([lambda i: get(qs[i]),
                                     lambda i: search(qs[i], kb_dir=kb_dir),
                                     lambda i: client.get("/healthz").raise_for_status()],
                                    len(qs))
                http_ms += h
                local_ms += loc
                floor_ms += fl
            same = sum(get(q) == search(q, kb_dir=kb_dir) for q in qs[:20])
        print(f"\n## Latency over HTTP, GET /api/v1/kb/search?q=... (domain from the text), "
              f"{len(qs)} queries, ms")
        print(f"server: python -m app.cli serve (SQLite, no SCP, no worker); /readyz 200 "
              f"{t_ready:.1f} s after start, knowledge warm-up {knowledge.get('state', '?')} "
              f"after {t_warm:.1f} s; first search {t_first:.0f} ms; HTTP and in-process answers "
              f"identical for {same}/20 queries")
        widths = [52, 9, 9]
        print(row(["", "p50", "p95"], widths))
        for name, xs in (
            ("HTTP, each query the first time (warm-up)", first_http),
            ("in process search(), the first time (peer)", first_local),
            (f"HTTP, warm ({rounds} rounds)", http_ms),
            ("in process search(), warm (peer)", local_ms),
            ("HTTP GET /healthz (no key, no work: the floor)", floor_ms),
        ):
            print(row([name, f"{pct(xs, 50):.2f}", f"{pct(xs, 95):.2f}"], widths))
        print(f"HTTP overhead, warm p50: {pct(http_ms, 50) - pct(local_ms, 50):.2f} ms")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=Path, default=REPO / "bench" / "rag_queries.jsonl")
    ap.add_argument("--corpus", type=Path, default=REPO / "knowledge_base")
    ap.add_argument("--kb-dir", type=Path, default=REPO / "var" / "bench" / "kb",
                    help="where to build the index; reused while the corpus is unchanged")
    ap.add_argument("--synthetic", type=int, default=100_000, help="0 to skip")
    ap.add_argument("--synthetic-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--http", action="store_true",
                    help="also time GET /api/v1/kb/search against the running app")
    ap.add_argument("--http-only", action="store_true",
                    help="only the HTTP latency (skips quality, selection and synthetic)")
    ap.add_argument("--http-rounds", type=int, default=2)
    args = ap.parse_args(argv)
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))

    queries = [json.loads(x) for x in args.queries.read_text().splitlines() if x.strip()]
    kb_dir = args.kb_dir
    t = time.perf_counter()
    res = kbindex.build(args.corpus, kb_dir)
    kb = kbindex.load(kb_dir)
    print(f"embedder: {res.embedder}; index {'built' if res.rebuilt else 'reused'} in "
          f"{time.perf_counter() - t:.1f} s; entries per domain: {res.counts}")
    missing = {r for q in queries for r in q["relevant"]} - set(kb.entries)
    if missing:
        print(f"WARNING: relevant ids not in the corpus: {sorted(missing)}")
    if args.http_only:
        latency_http(kb_dir, queries, args.http_rounds)
        return
    qvecs = get_embedder().embed([q["query"] for q in queries])
    eval_quality(kb, queries, qvecs)
    eval_domain(kb, queries, qvecs)
    eval_selection(kb, queries, qvecs)
    latency_real(kb_dir, kb, queries, qvecs)
    if args.http:
        latency_http(kb_dir, queries, args.http_rounds)
    if args.synthetic:
        latency_synthetic(args.synthetic, args.seed, args.synthetic_queries)


if __name__ == "__main__":
    main()
