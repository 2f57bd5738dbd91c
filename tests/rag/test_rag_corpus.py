"""Corpus parsing and ``check``: every kind of problem is reported, the real corpus is clean."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.rag.corpus import check, corpus_hash, load_corpus, parse_text

FIXTURE_KB = Path(__file__).parent / "fixture_kb"
REPO = Path(__file__).resolve().parents[2]

GOOD = """---
id: {id}
domain: {domain}
title: A title
codes: ["SNOMED:1234"]
synonyms: ["one", "two"]
---
## Criteria
Some criteria.

## Report wording
"Some wording."

## Follow-up
Some follow-up.

## Sources
- A source, 2020
"""


def _write(root: Path, domain: str, name: str, text: str) -> None:
    (root / domain).mkdir(parents=True, exist_ok=True)
    (root / domain / f"{name}.md").write_text(text)


def test_fixture_corpus_has_no_problems_and_loads_all_entries():
    assert check(FIXTURE_KB) == []
    entries = load_corpus(FIXTURE_KB)
    assert len(entries) == 8
    e = next(e for e in entries if e.id == "ct-emphysema")
    assert e.domain == "ct" and "LAA-950" in e.synonyms
    assert e.codes == ["SNOMED:87433001"]
    assert "-950 HU" in e.section("Criteria")


def test_front_matter_accepts_json_flow_and_block_lists():
    text = (
        "---\nid: x\ndomain: ct\ntitle: 'Quoted: title'\ncodes: [SNOMED:1, RadLex:RID2]\n"
        "synonyms:\n  - alpha\n  - \"beta\"\n---\n## Criteria\nc\n"
    )
    meta, sections = parse_text(text)
    assert meta["title"] == "Quoted: title"
    assert meta["codes"] == ["SNOMED:1", "RadLex:RID2"]
    assert meta["synonyms"] == ["alpha", "beta"]
    assert sections == {"Criteria": "c"}


def test_check_reports_each_kind_of_problem(tmp_path):
    root = tmp_path / "kb"
    _write(root, "ct", "ok", GOOD.format(id="ok", domain="ct"))
    _write(root, "ct", "wrong-name", GOOD.format(id="other-id", domain="ct"))
    _write(root, "ct", "wrong-folder", GOOD.format(id="wrong-folder", domain="ecg"))
    _write(root, "ecg", "bad-domain", GOOD.format(id="bad-domain", domain="mri"))
    _write(root, "ecg", "ok", GOOD.format(id="ok", domain="ecg"))  # duplicate id
    _write(root, "cxr", "no-title", GOOD.format(id="no-title", domain="cxr").replace(
        "title: A title\n", ""))
    _write(root, "cxr", "empty", GOOD.format(id="empty", domain="cxr").replace(
        "Some follow-up.", ""))
    _write(root, "cxr", "nosrc", GOOD.format(id="nosrc", domain="cxr").split("## Sources")[0])
    _write(root, "cxr", "badcode", GOOD.format(id="badcode", domain="cxr").replace(
        "SNOMED:1234", "1234"))
    _write(root, "pathology", "nofm", "# just markdown\n")
    _write(root, "mr", "x", GOOD.format(id="x", domain="mr"))
    problems = "\n".join(check(root))
    assert "ct/wrong-name.md: id 'other-id' does not match the file name 'wrong-name'" in problems
    assert "ct/wrong-folder.md: domain 'ecg' does not match the folder 'ct'" in problems
    assert "ecg/bad-domain.md: domain 'mri' is not one of" in problems
    assert "ecg/ok.md: duplicate id 'ok' (also in ct/ok.md)" in problems
    assert "cxr/no-title.md: missing field 'title'" in problems
    assert "cxr/empty.md: section '## Follow-up' is empty" in problems
    assert "cxr/nosrc.md: missing section '## Sources'" in problems
    assert "cxr/badcode.md: code '1234' is not 'SYSTEM:code'" in problems
    assert "pathology/nofm.md: no front matter" in problems
    assert "mr/: folder is not a domain" in problems
    assert not [p for p in problems.splitlines() if p.startswith("ct/ok.md")]


def test_corpus_hash_changes_when_an_entry_changes(tmp_path):
    root = tmp_path / "kb"
    shutil.copytree(FIXTURE_KB, root)
    before = corpus_hash(root)
    assert corpus_hash(root) == before
    p = root / "ct" / "ct-emphysema.md"
    p.write_text(p.read_text() + "\nmore\n")
    assert corpus_hash(root) != before


def test_real_corpus_passes_check():
    root = REPO / "knowledge_base"
    assert check(root) == []
