"""Knowledge retrieval (MMed-RAG style): corpus, per-domain hybrid indexes, adaptive selection.

Public entry points, for the CLI and the API:

* ``check(root)`` – problems in the corpus (``medgate kb check``);
* ``build(corpus_root, out_dir, progress=cb)`` – build the indexes if stale (``medgate kb build``);
* ``search(query, domain=None, k=5, gamma=1.5)`` and ``get_entry(id)``;
* ``add_case(domain, report_id, text)`` and ``search_cases(query, domain, k)``;
* ``identify_domain(query, domain=..., metadata=...)``.
"""

from app.rag.cases import add_case, count_cases, search_cases
from app.rag.corpus import CorpusError, check, default_corpus_root, load_corpus
from app.rag.domain import domain_from_metadata, identify_domain
from app.rag.index import BuildResult, build
from app.rag.search import ensure_index, get_entry, search
from app.rag.select import adaptive_select

__all__ = [
    "BuildResult",
    "CorpusError",
    "add_case",
    "adaptive_select",
    "build",
    "check",
    "count_cases",
    "default_corpus_root",
    "domain_from_metadata",
    "ensure_index",
    "get_entry",
    "identify_domain",
    "load_corpus",
    "search",
    "search_cases",
]
