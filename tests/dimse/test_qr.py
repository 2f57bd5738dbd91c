"""Query/Retrieve C-MOVE and C-GET against the SCP: dcmtk getscu and movescu (with dcmtk
storescp as the move destination) and pynetdicom as SCU for exact statuses."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from app.db.models import AuditEvent, Series
from app.db.session import session_factory, session_scope
from app.dicom import peers, store
from tests.conftest import tool, wait_for
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP, free_port

STUDY_GET = StudyRootQueryRetrieveInformationModelGet
STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
PATIENT_GET = PatientRootQueryRetrieveInformationModelGet
PATIENT_MOVE = PatientRootQueryRetrieveInformationModelMove


def add_peer(scp: RunningSCP, ae_title: str, **fields: object) -> None:
    with session_scope(scp.settings.db_url) as session:
        peers.create(session, ae_title, "test", **fields)  # type: ignore[arg-type]


def sr_for(ct: Dataset, path: Path) -> Path:
    """A Basic Text SR in the CT's study, in a series of its own (as MedGate writes results)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.StudyInstanceUID, generate_uid()
    ds.PatientID, ds.PatientName = ct.PatientID, ct.PatientName
    ds.StudyDate, ds.StudyTime = ct.StudyDate, ct.StudyTime
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"

    def code(value: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
        return c

    ds.ConceptNameCodeSequence = [code("126000", "Imaging Measurement Report")]
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "No finding"
    item.ConceptNameCodeSequence = [code("121071", "Finding")]
    ds.ContentSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Stored:
    scp: RunningSCP
    study: str            # the CT study: 3 CT slices in one series and a derived SR
    ct_series: str
    ct: list[str]         # SOP Instance UIDs of the CT slices
    sr: str               # SOP Instance UID of the SR
    sr_series: str
    patient: str
    other_study: str      # MR_small: another patient
    mr: str

    @property
    def study_uids(self) -> set[str]:
        return {*self.ct, self.sr}


@pytest.fixture
def stored(sqlite_scp: RunningSCP, tmp_path: Path) -> Stored:
    """A CT study (3 slices) with a derived SR series, and an MR study of another patient;
    peers GETSCU, MOVESCU and PYQR may retrieve, PYSCU (the shared fixture's) may not."""
    for ae in ("GETSCU", "MOVESCU", "PYQR"):
        add_peer(sqlite_scp, ae, host="127.0.0.1", can_query=True, can_retrieve=True)
    sessions = session_factory(sqlite_scp.settings.db_url)
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    uids = []
    for n in range(3):
        if n:
            ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ct.InstanceNumber = n + 1
        path = tmp_path / f"ct{n}.dcm"
        ct.save_as(path, enforce_file_format=True)
        uids.append(store.store_path(sessions, path, source="dimse:TEST").sop_instance_uid)
    sr = store.store_path(sessions, sr_for(ct, tmp_path / "sr.dcm"), source=store.DERIVED)
    mr = store.store_path(sessions, PYDICOM_FILES / "MR_small.dcm")
    with sessions() as s:  # the SR series is one of MedGate's own derived series
        assert s.scalar(select(Series.derived).where(Series.series_uid == sr.series_uid))
    return Stored(sqlite_scp, ct.StudyInstanceUID, ct.SeriesInstanceUID, uids,
                  sr.sop_instance_uid, sr.series_uid, ct.PatientID, mr.study_uid,
                  mr.sop_instance_uid)


def events(stored: Stored, action: str) -> list[AuditEvent]:
    with session_factory(stored.scp.settings.db_url)() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def sop_uids(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.iterdir() if p.is_file()}


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# ---------------------------------------------------------------- pynetdicom as SCU

@dataclass
class GetResult:
    statuses: list[Dataset]               # every C-GET-RSP status data set
    identifiers: list[Dataset | None]
    received: list[Dataset]               # instances the SCP sent back

    @property
    def final(self) -> Dataset:
        return self.statuses[-1]

    def counts(self) -> tuple[int, int, int]:
        f = self.final
        return (int(f.get("NumberOfCompletedSuboperations", 0)),
                int(f.get("NumberOfFailedSuboperations", 0)),
                int(f.get("NumberOfWarningSuboperations", 0)))


def requestor(scp: RunningSCP, aet: str, contexts: list, roles: list | None = None,
              handlers: list | None = None) -> Association:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate(*scp.address, contexts=contexts, ae_title=scp.settings.ae_title,
                         ext_neg=roles or [], evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def c_get(scp: RunningSCP, query: Dataset, model: str = STUDY_GET, aet: str = "PYQR",
          storage: tuple[str, ...] = (CTImageStorage, MRImageStorage, BasicTextSRStorage),
          cancel_after: int | None = None) -> GetResult:
    received: list[Dataset] = []
    holder: dict[str, Association] = {}

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        if cancel_after is not None and len(received) == cancel_after:
            holder["assoc"].send_c_cancel(1, None, model)
        return 0x0000

    contexts = [build_context(model)] + [build_context(uid, ExplicitVRLittleEndian)
                                         for uid in storage]
    roles = [build_role(uid, scp_role=True) for uid in storage]
    assoc = requestor(scp, aet, contexts, roles, [(evt.EVT_C_STORE, on_store)])
    holder["assoc"] = assoc
    try:
        out = [(s, i) for s, i in assoc.send_c_get(query, model, msg_id=1)]
    finally:
        assoc.release()
    return GetResult([s for s, _ in out], [i for _, i in out], received)


def c_move(scp: RunningSCP, query: Dataset, destination: str, model: str = STUDY_MOVE,
           aet: str = "PYQR") -> list[Dataset]:
    assoc = requestor(scp, aet, [build_context(model)])
    try:
        return [s for s, _ in assoc.send_c_move(query, destination, model)]
    finally:
        assoc.release()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp on a free port, writing what it receives to a folder."""
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen([tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=10, what="storescp listening")
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- dcmtk getscu and movescu

def test_getscu_retrieves_the_study_with_its_derived_sr(stored, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    result = run(tool("getscu"), "-v", "-S", "-aec", "MEDGATE", "-aet", "GETSCU", "-od",
                 str(out), "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={stored.study}", "127.0.0.1", str(stored.scp.port))
    assert result.returncode == 0, result.stderr
    assert len(list(out.iterdir())) == 4, result.stderr
    assert sop_uids(out) == stored.study_uids
    # what arrives is what is stored: the same data set, in the stored transfer syntax
    for path in out.iterdir():
        got = pydicom.dcmread(path)
        kept = pydicom.dcmread(stored.scp.stored_path(got.SOPInstanceUID))
        assert got == kept and got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_movescu_sends_the_study_to_storescp(stored, storescp, tmp_path):
    port, received = storescp
    add_peer(stored.scp, "STORESCP", host="127.0.0.1", port=port)
    result = run(tool("movescu"), "-v", "-S", "-aec", "MEDGATE", "-aet", "MOVESCU", "-aem",
                 "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={stored.study}", "127.0.0.1", str(stored.scp.port))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(list(received.iterdir())) == 4, timeout=10, what="4 files")
    assert sop_uids(received) == stored.study_uids
    (event,) = wait_for(lambda: events(stored, "dicom.move"), timeout=10)
    assert (event.actor, event.outcome) == ("dicom:MOVESCU", "success")
    d = event.detail
    assert (d["level"], d["keys"], d["destination"], d["model"]) == \
        ("STUDY", ["StudyInstanceUID"], "STORESCP", "study")
    assert (d["instances"], d["completed"], d["failed"], d["warning"], d["status"]) == \
        (4, 4, 0, 0, "0x0000")
    assert stored.study not in json.dumps(d) and stored.patient not in json.dumps(d)


def test_movescu_to_an_unknown_destination_is_refused_a801(stored):
    result = run(tool("movescu"), "-v", "-S", "-aec", "MEDGATE", "-aet", "MOVESCU", "-aem",
                 "NOWHERE", "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={stored.study}", "127.0.0.1", str(stored.scp.port))
    text = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in text or "0xa801" in text.lower(), text
    (event,) = events(stored, "dicom.move")
    assert event.outcome == "failure" and event.detail["status"] == "0xA801"


# ---------------------------------------------------------------- rights and refusals

def test_a_peer_without_the_retrieve_right_gets_0124_and_nothing(stored, storescp):
    port, received = storescp
    add_peer(stored.scp, "STORESCP", host="127.0.0.1", port=port)
    got = c_get(stored.scp, identifier("STUDY", StudyInstanceUID=stored.study), aet="PYSCU")
    assert [s.Status for s in got.statuses] == [0x0124]
    assert "may not retrieve" in got.final.ErrorComment
    assert got.received == []
    moved = c_move(stored.scp, identifier("STUDY", StudyInstanceUID=stored.study),
                   "STORESCP", aet="PYSCU")
    assert [s.Status for s in moved] == [0x0124]
    time.sleep(0.5)
    assert list(received.iterdir()) == []
    assert [(e.action, e.outcome, e.detail["status"]) for e in
            events(stored, "dicom.get") + events(stored, "dicom.move")] == \
        [("dicom.get", "refused", "0x0124"), ("dicom.move", "refused", "0x0124")]


def test_getscu_without_the_retrieve_right_is_refused(stored, tmp_path):
    with session_scope(stored.scp.settings.db_url) as session:
        peers.update(session, "GETSCU", "test", can_retrieve=False)
    out = tmp_path / "got"
    out.mkdir()
    result = run(tool("getscu"), "-v", "-S", "-aec", "MEDGATE", "-aet", "GETSCU", "-od",
                 str(out), "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={stored.study}", "127.0.0.1", str(stored.scp.port))
    assert "0x0124" in result.stderr.lower() or "0x124" in result.stderr.lower(), result.stderr
    assert list(out.iterdir()) == []


def test_move_destinations_must_be_known_peers_with_host_and_port(stored):
    add_peer(stored.scp, "NOPORT", host="127.0.0.1")
    add_peer(stored.scp, "ANYHOST", port=free_port())
    add_peer(stored.scp, "ANET", host="10.0.0.0/8", port=104)
    query = identifier("STUDY", StudyInstanceUID=stored.study)
    for destination, why in (("NOWHERE", "not a known peer"), ("NOPORT", "no host and port"),
                             ("ANYHOST", "no host and port"), ("ANET", "no host and port")):
        (status,) = c_move(stored.scp, query, destination)
        assert status.Status == 0xA801, destination
        assert why in status.ErrorComment


def test_a_move_destination_that_does_not_answer_is_a801(stored):
    add_peer(stored.scp, "DOWN", host="127.0.0.1", port=free_port())  # nobody listens
    statuses = c_move(stored.scp, identifier("STUDY", StudyInstanceUID=stored.study), "DOWN")
    assert [s.Status for s in statuses] == [0xA801]
    (event,) = wait_for(lambda: events(stored, "dicom.move"), timeout=10)
    assert event.outcome == "failure" and event.detail["status"] == "0xA801"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("level, keys, why", [
    ("STUDY", {}, "StudyInstanceUID is required"),
    ("STUDY", {"StudyInstanceUID": "1.2.3", "Modality": "CT"}, "not a unique key"),
    ("SERIES", {"StudyInstanceUID": "1.2.3"}, "SeriesInstanceUID is required"),
    ("STUDY", {"StudyInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.4"}, "not a unique key"),
    ("PATIENT", {"PatientID": "X"}, "QueryRetrieveLevel must be"),
    ("STUDY", {"StudyInstanceUID": "1.2.x"}, "not a valid UID"),
    ("SERIES", {"StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.4"},
     "one value above"),
    ("FRAME", {"StudyInstanceUID": "1.2"}, "QueryRetrieveLevel must be"),
])
def test_an_identifier_that_is_not_a_retrieve_identifier_is_a900(stored, level, keys, why):
    got = c_get(stored.scp, identifier(level, **keys))
    assert [s.Status for s in got.statuses] == [0xA900]
    assert why in got.final.ErrorComment and got.received == []
    (event,) = events(stored, "dicom.get")
    assert event.outcome == "failure" and event.detail["status"] == "0xA900"


def test_patient_root_patient_id_takes_no_wildcards(stored):
    got = c_get(stored.scp, identifier("PATIENT", PatientID="*"), model=PATIENT_GET)
    assert [s.Status for s in got.statuses] == [0xA900] and got.received == []


# ---------------------------------------------------------------- levels, models, statuses

def test_c_get_at_series_and_image_level(stored):
    series = c_get(stored.scp, identifier("SERIES", StudyInstanceUID=stored.study,
                                          SeriesInstanceUID=stored.ct_series))
    assert {r.SOPInstanceUID for r in series.received} == set(stored.ct)
    assert series.final.Status == 0x0000 and series.counts() == (3, 0, 0)
    assert [s.Status for s in series.statuses[:-1]] == [0xFF00] * 3

    # IMAGE level with a list of SOP Instance UIDs; the upper keys may be left out
    image = c_get(stored.scp, identifier("IMAGE", SOPInstanceUID=[stored.ct[1], stored.sr]))
    assert {r.SOPInstanceUID for r in image.received} == {stored.ct[1], stored.sr}
    assert image.counts() == (2, 0, 0)

    derived = c_get(stored.scp, identifier("SERIES", SeriesInstanceUID=stored.sr_series))
    assert [r.SOPInstanceUID for r in derived.received] == [stored.sr]
    (event, *_) = events(stored, "dicom.get")
    assert (event.detail["level"], event.detail["keys"]) == \
        ("SERIES", ["SeriesInstanceUID", "StudyInstanceUID"])


def test_patient_root_retrieves_by_patient_and_study(stored, storescp):
    got = c_get(stored.scp, identifier("PATIENT", PatientID=stored.patient), model=PATIENT_GET)
    assert {r.SOPInstanceUID for r in got.received} == stored.study_uids
    assert got.counts() == (4, 0, 0)

    mr = c_get(stored.scp, identifier("STUDY", PatientID="4MR1",
                                      StudyInstanceUID=stored.other_study), model=PATIENT_GET)
    assert [r.SOPInstanceUID for r in mr.received] == [stored.mr]
    # the keys above the level narrow the match: this study is not that patient's
    none = c_get(stored.scp, identifier("STUDY", PatientID="4MR1",
                                        StudyInstanceUID=stored.study), model=PATIENT_GET)
    assert none.received == [] and [s.Status for s in none.statuses] == [0x0000]

    port, received = storescp
    add_peer(stored.scp, "STORESCP", host="127.0.0.1", port=port)
    statuses = c_move(stored.scp, identifier("PATIENT", PatientID=stored.patient), "STORESCP",
                      model=PATIENT_MOVE)
    assert statuses[-1].Status == 0x0000
    assert int(statuses[-1].NumberOfCompletedSuboperations) == 4
    wait_for(lambda: len(list(received.iterdir())) == 4, timeout=10, what="4 files")
    assert sop_uids(received) == stored.study_uids


def test_movescu_patient_root_series_level(stored, storescp):
    port, received = storescp
    add_peer(stored.scp, "STORESCP", host="127.0.0.1", port=port)
    result = run(tool("movescu"), "-v", "-P", "-aec", "MEDGATE", "-aet", "MOVESCU", "-aem",
                 "STORESCP", "-k", "QueryRetrieveLevel=SERIES", "-k",
                 f"PatientID={stored.patient}", "-k", f"StudyInstanceUID={stored.study}", "-k",
                 f"SeriesInstanceUID={stored.sr_series}", "127.0.0.1", str(stored.scp.port))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(list(received.iterdir())) == 1, timeout=10, what="the SR")
    assert sop_uids(received) == {stored.sr}


def test_an_instance_without_an_accepted_storage_context_counts_as_failed(stored):
    # the requestor takes the storage SCP role for CT only: the SR cannot be sent
    got = c_get(stored.scp, identifier("STUDY", StudyInstanceUID=stored.study),
                storage=(CTImageStorage,))
    assert {r.SOPInstanceUID for r in got.received} == set(stored.ct)
    assert got.final.Status == 0xB000 and got.counts() == (3, 1, 0)
    assert got.identifiers[-1].FailedSOPInstanceUIDList == stored.sr
    (event,) = events(stored, "dicom.get")
    assert event.outcome == "warning"
    assert (event.detail["completed"], event.detail["failed"]) == (3, 1)


def test_a_stored_file_that_is_gone_counts_as_failed(stored):
    stored.scp.stored_path(stored.ct[0]).unlink()
    got = c_get(stored.scp, identifier("SERIES", StudyInstanceUID=stored.study,
                                       SeriesInstanceUID=stored.ct_series))
    assert got.final.Status == 0xB000 and got.counts() == (2, 1, 0)
    assert got.identifiers[-1].FailedSOPInstanceUIDList == stored.ct[0]


def test_no_match_is_success_with_no_sub_operations(stored):
    got = c_get(stored.scp, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    assert [s.Status for s in got.statuses] == [0x0000] and got.counts() == (0, 0, 0)
    (event,) = events(stored, "dicom.get")
    assert event.outcome == "success" and event.detail["instances"] == 0


def test_c_cancel_stops_the_sub_operations(stored):
    got = c_get(stored.scp, identifier("STUDY", StudyInstanceUID=stored.study), cancel_after=1)
    assert got.final.Status == 0xFE00
    assert len(got.received) == 1
    assert int(got.final.NumberOfCompletedSuboperations) == 1
    assert int(got.final.NumberOfRemainingSuboperations) == 3
    (event,) = events(stored, "dicom.get")
    assert event.outcome == "cancelled"


def test_a_retrieve_on_a_find_context_is_refused_0122(stored):
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    assoc = requestor(stored.scp, "PYQR", [build_context(FIND), build_context(STUDY_GET)])
    try:
        # a C-GET naming the Find model: the request does not fit its context
        statuses = [s.Status for s, _ in assoc.send_c_get(
            identifier("STUDY", StudyInstanceUID=stored.study), FIND)]
    finally:
        assoc.release()
    assert statuses == [0x0122]
    assert events(stored, "dicom.get") == []
