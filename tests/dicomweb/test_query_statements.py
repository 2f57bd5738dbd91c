"""QIDO-RS and C-FIND cost a bounded number of SQL statements, however many rows match.

The statements are counted with SQLAlchemy's ``before_cursor_execute`` event on the engine, at
two sizes of the index (2 studies x 2 series x 2 instances, then 3 x 3 x 5): each search must
run the same number of statements at both sizes, and no more than a small bound. A search that
goes back to the database once per matching row (an N+1) fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from app.db.session import counted_statements
from tests.dicomweb.conftest import make_instance, multipart, stow_headers


def _uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.998." + ".".join(str(p) for p in parts)


def _study(s: int) -> str:
    return _uid(1, s)


def _series(s: int, k: int) -> str:
    return _uid(2, s, k)


def _store(client, keys, studies: range, series: range, instances: range) -> None:
    """Instances ``instances`` of series ``series`` in each of ``studies`` (odd series MR,
    even ones CT)."""
    parts = []
    for s in studies:
        for k in series:
            for n in instances:
                parts.append(make_instance(
                    study=_study(s), series=_series(s, k), sop=_uid(3, s, k, n),
                    Modality=("CT", "MR")[k % 2], SeriesNumber=k + 1, InstanceNumber=n + 1,
                    PatientID=f"P{s}", PatientName=f"Doe^P{s}", StudyDate=f"202301{s + 1:02d}",
                    SeriesDate=f"202301{s + 1:02d}"))
    r = client.post("/dicomweb/studies", content=multipart(parts),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text


@contextmanager
def _reading(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """The files pydicom reads meanwhile."""
    reads: list[object] = []
    read = pydicom.dcmread

    def counting(path, **kw):  # noqa: ANN001, ANN202
        reads.append(path)
        return read(path, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(pydicom, "dcmread", counting)
        yield reads


# (level, study in the path, series in the path, query parameters)
SEARCHES: dict[str, tuple[str, bool, bool, list[tuple[str, str]]]] = {
    "studies": ("STUDY", False, False, []),
    "studies PatientID": ("STUDY", False, False, [("PatientID", "P0")]),
    "studies StudyDate range": ("STUDY", False, False, [("StudyDate", "20230101-20231231")]),
    "studies ModalitiesInStudy": ("STUDY", False, False, [("ModalitiesInStudy", "MR")]),
    "studies limit/offset": ("STUDY", False, False, [("limit", "2"), ("offset", "1")]),
    "studies includefield header": ("STUDY", False, False,
                                    [("includefield", "SeriesDate,Rows,00081050")]),
    "studies includefield all": ("STUDY", False, False, [("includefield", "all")]),
    "series": ("SERIES", False, False, []),
    "series of a study": ("SERIES", True, False, []),
    "series Modality": ("SERIES", False, False, [("Modality", "CT")]),
    "series ModalitiesInStudy": ("SERIES", False, False, [("ModalitiesInStudy", "MR")]),
    "series includefield header": ("SERIES", False, False, [("includefield", "Rows")]),
    "series includefield all": ("SERIES", False, False, [("includefield", "all")]),
    "instances": ("INSTANCE", False, False, []),
    "instances of a study": ("INSTANCE", True, False, []),
    "instances of a series": ("INSTANCE", True, True, []),
    "instances limit/offset": ("INSTANCE", False, False, [("limit", "3"), ("offset", "2")]),
    "instances includefield header": ("INSTANCE", True, False, [("includefield", "Columns")]),
    "instances includefield all": ("INSTANCE", True, True, [("includefield", "all")]),
}
# The most statements one search may run below the router (the match query, its aggregates,
# the representative instances for header fields).
MAX_SEARCH_STATEMENTS = 3
# ... and through the whole HTTP request (the API key, the audit event, the commit).
MAX_REQUEST_STATEMENTS = 8

FIND = {
    "PATIENT": (PatientRootQueryRetrieveInformationModelFind,
                {"PatientName": "", "PatientID": "", "NumberOfPatientRelatedStudies": ""}),
    "STUDY": (StudyRootQueryRetrieveInformationModelFind,
              {"StudyInstanceUID": "", "PatientID": "", "StudyDate": "", "ModalitiesInStudy": "",
               "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}),
    "SERIES": (StudyRootQueryRetrieveInformationModelFind,
               {"StudyInstanceUID": "", "SeriesInstanceUID": "", "Modality": "",
                "NumberOfSeriesRelatedInstances": ""}),
    "IMAGE": (StudyRootQueryRetrieveInformationModelFind,
              {"StudyInstanceUID": "", "SeriesInstanceUID": "", "SOPInstanceUID": "",
               "InstanceNumber": ""}),
}
# The C-FIND handler, audit events aside: the match query and its aggregates.
MAX_FIND_STATEMENTS = 2


def _path(level: str, in_study: bool, in_series: bool) -> str:
    path = f"/studies/{_study(0)}" if in_study else ""
    if in_series:
        path += f"/series/{_series(0, 0)}"
    return path + {"STUDY": "/studies", "SERIES": "/series", "INSTANCE": "/instances"}[level]


def _measure(client, keys, monkeypatch: pytest.MonkeyPatch,
             find: Callable[[str], tuple[int, int]]) -> dict[str, tuple[int, int, int, int]]:
    """Per search: (statements below the router, statements of the HTTP request, results,
    files read)."""
    from app.db.session import session_scope
    from app.dicom import wado

    out: dict[str, tuple[int, int, int, int]] = {}
    for name, (level, in_study, in_series, params) in SEARCHES.items():
        study = _study(0) if in_study else None
        series = _series(0, 0) if in_series else None
        with session_scope() as session, _reading(monkeypatch) as reads:
            req = wado.parse_search(level, params, study, series)
            with counted_statements() as below:
                results, _ = wado.run_search(session, req, "http://testserver/dicomweb")
        with counted_statements() as request:
            r = client.get(f"/dicomweb{_path(level, in_study, in_series)}", params=params,
                           headers=keys["clinician"])
        assert r.status_code == 200, r.text
        assert r.json() == results, name
        out[name] = (len(below), len(request), len(results), len(reads))
    for level in FIND:
        statements, matches = find(level)
        out[f"C-FIND {level}"] = (statements, statements, matches, 0)
    return out


def _c_find(scp) -> Callable[[str], tuple[int, int]]:  # noqa: ANN001
    def run(level: str) -> tuple[int, int]:
        model, keys = FIND[level]
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = level
        for kw, value in keys.items():
            setattr(identifier, kw, value)
        ae = AE(ae_title="PYSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(model)
        assoc = ae.associate(*scp.address, ae_title=scp.settings.ae_title)
        assert assoc.is_established
        try:
            with counted_statements() as seen:
                rsps = [status.Status for status, _ in assoc.send_c_find(identifier, model)]
        finally:
            assoc.release()
        assert rsps[-1] == 0x0000 and set(rsps[:-1]) <= {0xFF00}, rsps
        # The SCP writes audit events of associations (accepted, released) on its own
        # threads, which may fall in the window; those (and the C-FIND's own) are not counted.
        return len([s for s in seen if "audit_event" not in s]), len(rsps) - 1
    return run


@pytest.fixture
def scp(medgate) -> Iterator[Any]:
    from tests.dimse.conftest import _start

    yield from _start(medgate)


def test_search_statements_do_not_grow_with_the_results(client, keys, scp, monkeypatch):
    _store(client, keys, range(2), range(2), range(2))
    small = _measure(client, keys, monkeypatch, _c_find(scp))
    _store(client, keys, range(2), range(2), range(2, 5))  # more instances in the same series,
    _store(client, keys, range(2), range(2, 3), range(5))  # a series more in each study
    _store(client, keys, range(2, 3), range(3), range(5))  # and one study more
    large = _measure(client, keys, monkeypatch, _c_find(scp))
    report = "\n".join(f"{name:32} {small[name]} -> {large[name]}" for name in small)
    print(report)
    for name in small:
        (s_below, s_request, s_n, _), (l_below, l_request, l_n, reads) = small[name], large[name]
        # header fields: one file per result (the study's or series' first instance, or the
        # instance itself), none when the index answers everything
        assert reads == (l_n if "includefield header" in name or name == "instances "
                         "includefield all" else 0), f"{name} read {reads} files"
        if "limit" not in name:
            assert l_n > s_n or name.startswith("C-FIND PATIENT") or "PatientID" in name, name
        assert (l_below, l_request) == (s_below, s_request), f"{name} grew:\n{report}"
        if name.startswith("C-FIND"):
            assert l_below <= MAX_FIND_STATEMENTS, f"{name}:\n{report}"
        else:
            assert l_below <= MAX_SEARCH_STATEMENTS, f"{name}:\n{report}"
            assert l_request <= MAX_REQUEST_STATEMENTS, f"{name}:\n{report}"
