"""Offline analysis: run the routed pipeline on local files, without a server or a database.

``analyze_paths`` expands folders, reads DICOM headers (and WFDB ``.hea`` records, each an ECG
study of its own), groups instances by StudyInstanceUID, routes each study, runs the engines of the
rule's pipeline in order and composes the draft. It is what ``medgate analyze`` prints and what
benchmarks call.

It must never write files, touch the database or the broker, or drop an input silently: unreadable
files and unrouted studies come back as results of their own, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.dicom.headers import read_header
from app.pipeline.routing import DEFAULT_RULES, RouteRule, StudyMeta, match, summarise
from app.rag.search import knowledge_search
from app.registry.defaults import default_spec
from app.reports.composer import KnowledgeLookup, compose
from models.base import ContractError, EngineResult, ModelSpec, StudyInput, build, load_engine
from models.phrasing import labeller_for
from models.technical import read_wfdb_header

Status = Literal["analyzed", "unrouted", "unreadable"]


@dataclass
class AnalysisResult:
    """The outcome for one study (or one unreadable file)."""

    status: Status
    paths: list[str]
    study_uid: str | None = None
    domain: str | None = None
    rule: str | None = None
    queue: str | None = None
    pipeline: list[str] = field(default_factory=list)
    study_meta: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    draft: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "study_uid": self.study_uid, "domain": self.domain,
                "rule": self.rule, "queue": self.queue, "pipeline": list(self.pipeline),
                "paths": list(self.paths), "study_meta": self.study_meta,
                "results": self.results, "draft": self.draft, "warnings": list(self.warnings),
                "reason": self.reason}


def expand_paths(paths: Sequence[Path | str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under the given paths (folders recursively, sorted, hidden files skipped) and the
    paths that do not exist. WFDB data and annotation files beside a ``.hea`` are left out: the
    header stands for its record."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and not any(part.startswith(".")
                                                    for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    headers = {p.with_suffix("") for p in files if p.suffix.lower() == ".hea"}
    kept = [p for p in dict.fromkeys(files)
            if p.suffix.lower() == ".hea" or p.with_suffix("") not in headers]
    return kept, missing


def _wfdb_meta(path: Path) -> dict[str, Any]:
    header = read_wfdb_header(path)
    return {"Modality": "ECG", "RecordName": header["record_name"],
            "SamplingFrequency": header["fs"], "NumberOfWaveformChannels": header["n_sig"],
            "LeadNames": list(header["sig_name"]), "StudyDescription": "WFDB record"}


def _run_engines(rule: RouteRule, study: StudyInput, specs: Mapping[str, ModelSpec],
                 warnings: list[str]) -> list[EngineResult]:
    """Every engine of the rule in order; offline, a failing engine (required or optional)
    becomes a warning so the others' results are still shown."""
    results: list[EngineResult] = []
    for family, required in rule.steps():
        spec = specs.get(family) or default_spec(family)
        what = "engine" if required else "optional engine"
        try:
            engine = load_engine(build(spec))
        except (ContractError, ImportError) as exc:
            warnings.append(f"{what} {family}@{spec.version} is not available: {exc}")
            continue
        study.earlier = list(results)
        try:
            result = engine.run(study)
        except Exception as exc:  # one engine failing must not hide the others' results
            reason = str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
            warnings.append(f"{what} {family}@{spec.version} failed: {reason}")
            continue
        if not isinstance(result, EngineResult):
            warnings.append(f"{what} {family}@{spec.version} returned "
                            f"{type(result).__name__}, not an EngineResult; ignored")
            continue
        results.append(result)
    return results


def analyze_study(domain_rules: list[RouteRule], study_uid: str | None, paths: list[Path],
                  metadata: list[dict[str, Any]], meta: StudyMeta,
                  specs: Mapping[str, ModelSpec], knowledge: KnowledgeLookup | None
                  ) -> AnalysisResult:
    """Run the first (highest priority) matching rule's pipeline on one study."""
    out = AnalysisResult(status="unrouted", paths=[str(p) for p in paths], study_uid=study_uid,
                         study_meta=meta.to_dict())
    if not domain_rules:
        out.reason = "no routing rule matches this study"
        return out
    rule = domain_rules[0]
    out.status, out.domain, out.rule = "analyzed", rule.domain, rule.name
    out.queue, out.pipeline = rule.queue, list(rule.pipeline)
    if len(domain_rules) > 1:
        others = ", ".join(f"{r.domain} ({r.name})" for r in domain_rules[1:])
        out.warnings.append(f"the study also matches {others}; analysed as {rule.domain}")
    study = StudyInput(domain=rule.domain, paths=list(paths), metadata=metadata,
                       study_uid=study_uid, knowledge=knowledge_search)
    results = _run_engines(rule, study, specs, out.warnings)
    out.results = [r.to_dict() for r in results]
    out.draft = compose(results, knowledge, labeller=labeller_for(rule.domain)).to_dict()
    return out


def analyze_paths(paths: Sequence[Path | str], rules: Sequence[RouteRule] = DEFAULT_RULES,
                  specs: Mapping[str, ModelSpec] | None = None,
                  knowledge: KnowledgeLookup | None = None,
                  progress: Callable[[str], None] | None = None) -> list[AnalysisResult]:
    """Analyse local files: one result per study, per WFDB record and per unreadable file."""
    files, missing = expand_paths(paths)
    out: list[AnalysisResult] = []
    unreadable = [AnalysisResult(status="unreadable", paths=[str(p)], reason=r)
                  for p, r in missing]
    studies: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    records: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        try:
            if path.suffix.lower() == ".hea":
                records.append((path, _wfdb_meta(path)))
                continue
            meta = read_header(path)
        except ValueError as exc:
            unreadable.append(AnalysisResult(status="unreadable", paths=[str(path)],
                                             reason=str(exc)))
            continue
        key = str(meta.get("StudyInstanceUID") or f"file:{path}")
        studies.setdefault(key, []).append((path, meta))

    groups = [(None if k.startswith("file:") else k, members) for k, members in studies.items()]
    groups += [(None, [record]) for record in records]
    for study_uid, members in groups:
        if progress is not None:
            progress(study_uid or str(members[0][0]))
        metadata = [m for _, m in members]
        meta = summarise(metadata)
        out.append(analyze_study(match(rules, meta), study_uid, [p for p, _ in members],
                                 metadata, meta, specs or {}, knowledge))
    return out + unreadable
