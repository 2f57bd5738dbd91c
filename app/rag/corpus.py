"""The curated knowledge corpus: parse, load, hash and check ``knowledge_base/<domain>/<id>.md``.

An entry is one Markdown file with front matter between two ``---`` lines (``id``, ``domain``,
``title``, ``codes``, ``synonyms``) and body sections ``## Criteria``, ``## Report wording``,
``## Follow-up`` and ``## Sources``. The front matter is a small YAML subset (``key: value`` with
JSON/flow lists or ``- item`` block lists), parsed here so that no YAML library is needed.

This module only reads files; it never writes into the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from app.config import DOMAINS

REQUIRED_FIELDS = ("id", "domain", "title", "codes", "synonyms")
REQUIRED_SECTIONS = ("Criteria", "Report wording", "Follow-up", "Sources")
_LIST_FIELDS = ("codes", "synonyms")
_CODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*:\S+$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class CorpusError(ValueError):
    """The corpus has problems; ``problems`` lists them one per string."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("knowledge corpus has problems:\n" + "\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Entry:
    """One knowledge entry as written in the corpus."""

    id: str
    domain: str
    title: str
    codes: list[str] = field(default_factory=list)
    synonyms: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def section(self, name: str) -> str:
        return self.sections.get(name, "")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "domain": self.domain,
            "title": self.title,
            "codes": list(self.codes),
            "synonyms": list(self.synonyms),
            "sections": dict(self.sections),
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Entry:
        return cls(
            id=d["id"],
            domain=d["domain"],
            title=d["title"],
            codes=list(d.get("codes", [])),
            synonyms=list(d.get("synonyms", [])),
            sections=dict(d.get("sections", {})),
            path=d.get("path", ""),
        )


def default_corpus_root() -> Path:
    """``MEDGATE_KB_CORPUS`` if set, else ``knowledge_base/`` at the repository root."""
    env = os.environ.get("MEDGATE_KB_CORPUS")
    if env:
        return Path(env).resolve()
    return (Path(__file__).resolve().parents[2] / "knowledge_base").resolve()


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


def _parse_value(raw: str) -> str | list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            inner = raw[1:-1] if raw.endswith("]") else raw[1:]
            return [_unquote(p) for p in inner.split(",") if p.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {raw!r}")
        return [str(v) for v in value]
    return _unquote(raw)


def parse_front_matter(lines: list[str]) -> dict[str, str | list[str]]:
    """Parse the ``key: value`` lines of the front matter (without the ``---`` fences)."""
    data: dict[str, str | list[str]] = {}
    current: str | None = None
    for n, line in enumerate(lines, start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("- ") or stripped == "-":
            if current is None or not isinstance(data.get(current), list):
                raise ValueError(f"line {n}: list item without a key")
            data[current].append(_unquote(stripped[1:]))  # type: ignore[union-attr]
            continue
        if ":" not in line:
            raise ValueError(f"line {n}: expected 'key: value'")
        key, _, value = line.partition(":")
        key = key.strip()
        if value.strip():
            data[key] = _parse_value(value)
        else:
            data[key] = []  # a block list follows, or an empty value
        current = key
    return data


def split_sections(body: str) -> dict[str, str]:
    """``## Name`` headings to their text; text before the first heading is dropped."""
    sections: dict[str, str] = {}
    name: str | None = None
    buf: list[str] = []
    for line in body.splitlines():
        if line.startswith("## "):
            if name is not None:
                sections[name] = "\n".join(buf).strip()
            name, buf = line[3:].strip(), []
        elif name is not None:
            buf.append(line)
    if name is not None:
        sections[name] = "\n".join(buf).strip()
    return sections


def parse_text(text: str) -> tuple[dict[str, str | list[str]], dict[str, str]]:
    """Split a file's text into (front matter, sections). Raises ValueError when malformed."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter (the first line must be '---')")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by '---'") from None
    meta = parse_front_matter(lines[1:end])
    return meta, split_sections("\n".join(lines[end + 1 :]))


def _as_list(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) and v else (v if isinstance(v, list) else [])


def parse_entry(path: Path, root: Path | None = None) -> Entry:
    """Read one entry file. Raises ValueError when it cannot be parsed at all."""
    meta, sections = parse_text(Path(path).read_text(encoding="utf-8"))
    rel = str(Path(path).relative_to(root)) if root else str(path)
    return Entry(
        id=str(meta.get("id", "")),
        domain=str(meta.get("domain", "")),
        title=str(meta.get("title", "")),
        codes=_as_list(meta.get("codes")),
        synonyms=_as_list(meta.get("synonyms")),
        sections=sections,
        path=rel,
    )


def entry_files(root: Path) -> list[Path]:
    """All ``*.md`` files one folder below the root (``<domain>/<id>.md``), sorted."""
    root = Path(root)
    return sorted(p for p in root.glob("*/*.md") if p.is_file())


def load_corpus(root: Path | None = None, *, strict: bool = True) -> list[Entry]:
    """Parse every entry. With ``strict``, raise CorpusError if ``check`` finds any problem."""
    root = Path(root or default_corpus_root())
    if strict:
        problems = check(root)
        if problems:
            raise CorpusError(problems)
    entries = []
    for p in entry_files(root):
        try:
            entries.append(parse_entry(p, root))
        except (ValueError, UnicodeDecodeError):
            continue
    return entries


def corpus_hash(root: Path | None = None) -> str:
    """sha256 over every entry file's relative path and bytes; changes when any entry changes."""
    root = Path(root or default_corpus_root())
    h = hashlib.sha256()
    for p in entry_files(root):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _check_fields(rel: str, meta: dict, stem: str, folder: str) -> list[str]:
    out = []
    for f in REQUIRED_FIELDS:
        if f not in meta:
            out.append(f"{rel}: missing field '{f}'")
    for f in ("id", "domain", "title"):
        if f in meta and (not isinstance(meta[f], str) or not meta[f].strip()):
            out.append(f"{rel}: field '{f}' is empty or not a string")
    for f in _LIST_FIELDS:
        if f in meta and not isinstance(meta[f], list):
            out.append(f"{rel}: field '{f}' must be a list")
    eid, dom = meta.get("id"), meta.get("domain")
    if isinstance(eid, str) and eid:
        if eid != stem:
            out.append(f"{rel}: id '{eid}' does not match the file name '{stem}'")
        if not _ID_RE.match(eid):
            out.append(f"{rel}: id '{eid}' must be lower-case letters, digits, '-', '_' or '.'")
    if isinstance(dom, str) and dom:
        if dom not in DOMAINS:
            out.append(f"{rel}: domain '{dom}' is not one of {', '.join(DOMAINS)}")
        elif dom != folder:
            out.append(f"{rel}: domain '{dom}' does not match the folder '{folder}'")
    for code in meta.get("codes", []) if isinstance(meta.get("codes"), list) else []:
        if not _CODE_RE.match(code):
            out.append(f"{rel}: code '{code}' is not 'SYSTEM:code'")
    return out


def check(root: Path | None = None) -> list[str]:
    """Every problem in the corpus, one string each (empty list: the corpus is fine).

    Checks: parseable front matter, required fields, id equals the file name, domain is one of
    the four and equals the folder, code format, duplicate ids, required sections present and
    non-empty, and folders that are not a domain.
    """
    root = Path(root or default_corpus_root())
    if not root.is_dir():
        return [f"{root}: corpus folder does not exist"]
    problems: list[str] = []
    seen: dict[str, str] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in DOMAINS and any(sub.glob("*.md")):
            problems.append(f"{sub.name}/: folder is not a domain ({', '.join(DOMAINS)})")
    files = entry_files(root)
    if not files:
        problems.append(f"{root}: no entries found")
    for p in files:
        rel = p.relative_to(root).as_posix()
        try:
            meta, sections = parse_text(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{rel}: {e}")
            continue
        problems += _check_fields(rel, meta, p.stem, p.parent.name)
        for s in REQUIRED_SECTIONS:
            if s not in sections:
                problems.append(f"{rel}: missing section '## {s}'")
            elif not sections[s].strip():
                problems.append(f"{rel}: section '## {s}' is empty")
        eid = meta.get("id")
        if isinstance(eid, str) and eid:
            if eid in seen:
                problems.append(f"{rel}: duplicate id '{eid}' (also in {seen[eid]})")
            else:
                seen[eid] = rel
    return problems


_BY_ID: dict[str, dict] | None = None


def knowledge_lookup():  # noqa: ANN201 - the composer's KnowledgeLookup
    """Entries by id, read from the corpus files once per process. Citing an entry needs its
    title, not the search index, so a worker never waits for embeddings to cite."""
    global _BY_ID
    if _BY_ID is None:
        root = default_corpus_root()
        _BY_ID = ({e.id: e.to_dict() for e in load_corpus(root, strict=False)}
                  if root.is_dir() else {})
    return _BY_ID.get
