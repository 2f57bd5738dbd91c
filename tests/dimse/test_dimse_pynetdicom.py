"""The SCP against pynetdicom as SCU: negotiation, C-ECHO, C-STORE statuses, C-FIND."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from app.dicom import scp as scp_module
from app.dicom.scp import STORAGE_SOP_CLASSES
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP, split_part10


@pytest.fixture
def raw_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """send_c_store(path) sends the file's data set bytes unchanged (no decode, no re-encode)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def associate(scp: RunningSCP, contexts: list, aet: str = "PYSCU",
              handlers: list | None = None) -> Association:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate(*scp.address, contexts=contexts, ae_title=scp.settings.ae_title,
                        evt_handlers=handlers or [])


def contexts_for(paths: list[Path]) -> list:
    """One context per file: its SOP class, proposing only its own transfer syntax."""
    out = []
    for path in paths:
        meta, _ = split_part10(path)
        out.append(build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID]))
    return out


@pytest.fixture
def sr_seg_wsi_files(shared_data: Path) -> list[Path]:
    return [PYDICOM_FILES / "JPEG2000.dcm", PYDICOM_FILES / "waveform_ecg.dcm",
            PYDICOM_FILES / "MR_small_RLE.dcm", shared_data / "pathology" / "sm_image.dcm",
            shared_data / "pathology" / "sm_image_jpegls.dcm",
            shared_data / "sr_seg" / "dcmqi_tid1500_sr.dcm",
            shared_data / "sr_seg" / "sr_document.dcm", shared_data / "sr_seg" / "dcmqi_seg.dcm",
            shared_data / "cxr" / "dx_image.dcm"]


def store_files(scp: RunningSCP, paths: list[Path]) -> list[int]:
    assoc = associate(scp, contexts_for(paths))
    assert assoc.is_established
    try:
        return [assoc.send_c_store(path).Status for path in paths]
    finally:
        assoc.release()


def test_c_echo_answers_success(sqlite_scp):
    assoc = associate(sqlite_scp, [build_context(Verification)])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


NAMED_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SC": "1.2.840.10008.5.1.4.1.1.7", "12-lead ECG": "1.2.840.10008.5.1.4.1.1.9.1.1",
    "General ECG": "1.2.840.10008.5.1.4.1.1.9.1.2", "VL WSI": "1.2.840.10008.5.1.4.1.1.77.1.6",
    "Basic Text SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "Comprehensive SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "Comprehensive 3D SR": "1.2.840.10008.5.1.4.1.1.88.34",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
}


def test_every_storage_class_is_accepted_with_the_senders_first_transfer_syntax(sqlite_scp):
    assert set(NAMED_CLASSES.values()) <= set(STORAGE_SOP_CLASSES)
    assert len(STORAGE_SOP_CLASSES) == 170
    # PS3.8: at most 128 contexts per association request, so propose in batches.
    for first in (JPEG2000Lossless, ImplicitVRLittleEndian):
        for start in range(0, len(STORAGE_SOP_CLASSES), 120):
            batch = STORAGE_SOP_CLASSES[start:start + 120]
            assoc = associate(sqlite_scp, [build_context(uid, [first, ExplicitVRLittleEndian])
                                           for uid in batch])
            assert assoc.is_established
            accepted = {cx.abstract_syntax: cx.transfer_syntax[0]
                        for cx in assoc.accepted_contexts}
            assoc.release()
            assert set(accepted) == set(batch)
            assert set(accepted.values()) == {first}


def test_c_store_keeps_bytes_of_compressed_ecg_wsi_sr_and_seg_instances(scp, raw_send,
                                                                       sr_seg_wsi_files):
    assert store_files(scp, sr_seg_wsi_files) == [0x0000] * len(sr_seg_wsi_files)
    for path in sr_seg_wsi_files:
        meta, data = split_part10(path)
        stored_meta, stored_data = split_part10(scp.stored_path(meta.MediaStorageSOPInstanceUID))
        assert stored_meta.TransferSyntaxUID == meta.TransferSyntaxUID, path.name
        assert stored_data == data, f"{path.name}: the stored data set differs from the sent one"
    assert scp.counts()[2] == len(sr_seg_wsi_files)


def test_identical_resend_succeeds_and_a_changed_copy_is_refused_keeping_the_first(
        scp, raw_send, tmp_path):
    original = PYDICOM_FILES / "CT_small.dcm"
    assert store_files(scp, [original]) == [0x0000]
    sop = pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID
    first = scp.instance(sop)
    first_bytes = scp.stored_path(sop).read_bytes()

    assert store_files(scp, [original]) == [0x0000]  # identical bytes: success, nothing new
    assert scp.counts() == (1, 1, 1)

    changed = pydicom.dcmread(original)
    changed.PatientName = "Someone^Else"
    changed_path = tmp_path / "changed.dcm"
    changed.save_as(changed_path)
    assoc = associate(scp, contexts_for([changed_path]))
    rsp = assoc.send_c_store(changed_path)
    assoc.release()
    assert rsp.Status == 0x0111  # PS3.7 Annex C: Duplicate SOP Instance
    assert "already stored" in rsp.ErrorComment
    assert scp.counts() == (1, 1, 1)
    assert scp.instance(sop).sha256 == first.sha256
    assert scp.stored_path(sop).read_bytes() == first_bytes


def test_c_store_without_study_uid_fails_and_stores_nothing(sqlite_scp):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    del ds.StudyInstanceUID
    assoc = associate(sqlite_scp, [build_context(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert rsp.Status == 0xA900
    assert "StudyInstanceUID" in rsp.ErrorComment
    assert sqlite_scp.counts() == (0, 0, 0)
    assert sqlite_scp.stored_files() == []
    assert list((sqlite_scp.settings.store_dir / "tmp").iterdir()) == []


def test_c_store_with_a_uid_over_64_characters_fails_and_stores_nothing(sqlite_scp):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999." + "7" * 40  # 67 characters
    assoc = associate(sqlite_scp, [build_context(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert rsp.Status == 0xA900
    assert rsp.ErrorComment.startswith("invalid UID: SeriesInstanceUID has 67 characters")
    assert sqlite_scp.counts() == (0, 0, 0)
    assert sqlite_scp.stored_files() == []


def test_c_store_whose_data_set_uid_differs_from_the_request_is_refused(sqlite_scp, raw_send,
                                                                        tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # becomes the Affected SOP UID
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path)
    assoc = associate(sqlite_scp, contexts_for([path]))
    rsp = assoc.send_c_store(path)
    assoc.release()
    assert rsp.Status == 0xA900
    assert "Affected SOP Instance UID" in rsp.ErrorComment
    assert sqlite_scp.counts() == (0, 0, 0)


# -------------------------------------------------------------------------------- C-FIND

@pytest.fixture
def find_scp(sqlite_scp, raw_send, tmp_path) -> RunningSCP:
    unicode_name = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    unicode_name.SpecificCharacterSet = "ISO_IR 192"
    unicode_name.PatientName = "Müller^Jürgen"
    path = tmp_path / "mr_utf8.dcm"
    unicode_name.save_as(path)
    files = [PYDICOM_FILES / "CT_small.dcm", path]
    assert store_files(sqlite_scp, files) == [0x0000, 0x0000]
    return sqlite_scp


def c_find(scp: RunningSCP, model: str, **keys: object) -> list[tuple[int, pydicom.Dataset]]:
    identifier = pydicom.Dataset()
    for kw, value in keys.items():
        setattr(identifier, kw, value)
    assoc = associate(scp, [build_context(model, [ExplicitVRLittleEndian])])
    try:
        return [(status.Status, ident) for status, ident in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind


def test_c_find_study_level_matches_wildcards_and_returns_the_requested_keys(find_scp):
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm", stop_before_pixels=True)
    rsps = c_find(find_scp, STUDY_ROOT, QueryRetrieveLevel="STUDY", PatientName="Compressed*CT*",
                  StudyInstanceUID="", PatientID="", StudyDate="", ModalitiesInStudy="",
                  NumberOfStudyRelatedInstances="")
    assert [s for s, _ in rsps] == [0xFF00, 0x0000]
    ident = rsps[0][1]
    assert ident.StudyInstanceUID == ct.StudyInstanceUID
    assert ident.PatientID == ct.PatientID and ident.StudyDate == ct.StudyDate
    assert ident.ModalitiesInStudy == "CT" and ident.NumberOfStudyRelatedInstances == 1
    assert ident.RetrieveAETitle == "MEDGATE" and ident.QueryRetrieveLevel == "STUDY"
    assert "SeriesInstanceUID" not in ident  # only what was asked for, plus the unique key


def test_c_find_series_and_image_levels_and_utf8_names(find_scp):
    mr = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm", stop_before_pixels=True)
    series = c_find(find_scp, STUDY_ROOT, QueryRetrieveLevel="SERIES",
                    StudyInstanceUID=mr.StudyInstanceUID, SeriesInstanceUID="", Modality="",
                    PatientName="")
    assert [s for s, _ in series] == [0xFF00, 0x0000]
    assert series[0][1].SeriesInstanceUID == mr.SeriesInstanceUID
    assert series[0][1].Modality == "MR"
    assert str(series[0][1].PatientName) == "Müller^Jürgen"
    assert series[0][1].SpecificCharacterSet == "ISO_IR 192"

    images = c_find(find_scp, STUDY_ROOT, QueryRetrieveLevel="IMAGE",
                    SeriesInstanceUID=mr.SeriesInstanceUID, SOPInstanceUID="", SOPClassUID="")
    assert [(s, i.SOPInstanceUID) for s, i in images[:-1]] == [(0xFF00, mr.SOPInstanceUID)]


def test_c_find_patient_root_patient_level_lists_each_patient_once(find_scp):
    rsps = c_find(find_scp, PatientRootQueryRetrieveInformationModelFind,
                  QueryRetrieveLevel="PATIENT", PatientName="", PatientID="")
    names = sorted(str(i.PatientName) for s, i in rsps if s == 0xFF00)
    assert names == ["CompressedSamples^CT1", "Müller^Jürgen"]


def test_c_find_ignores_an_unsupported_optional_key_with_warning_status(find_scp):
    rsps = c_find(find_scp, STUDY_ROOT, QueryRetrieveLevel="STUDY", InstitutionName="Nowhere",
                  StudyInstanceUID="")
    assert [s for s, _ in rsps] == [0xFF01, 0xFF01, 0x0000]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_c_find_with_a_bad_identifier_answers_a900(find_scp):
    for keys in ({"QueryRetrieveLevel": "PATIENT"},  # not in the Study Root model
                 {"QueryRetrieveLevel": "FRAME"},
                 {"QueryRetrieveLevel": "STUDY", "StudyDate": "2020"}):  # not a date or range
        rsps = c_find(find_scp, STUDY_ROOT, StudyInstanceUID="", **keys)
        assert [s for s, _ in rsps] == [0xA900], keys


# -------------------------------------------------------------------------------- known peers

@pytest.fixture
def guarded_scp(sqlite_medgate) -> Iterator[RunningSCP]:
    from tests.dimse.conftest import _start

    yield from _start(sqlite_medgate, peers=("GOODSCU",))


def test_an_unknown_calling_ae_is_rejected_and_stores_nothing(guarded_scp):
    received = []
    ct = PYDICOM_FILES / "CT_small.dcm"
    assoc = associate(guarded_scp, contexts_for([ct]), aet="BADSCU",
                      handlers=[(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))])
    assert assoc.is_rejected and not assoc.is_established
    (rj,) = received
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert (rj.result_str, rj.source_str, rj.reason_str) == (
        "Rejected Permanent", "Service User", "Calling AE title not recognised")
    assert guarded_scp.counts() == (0, 0, 0)

    good = associate(guarded_scp, contexts_for([ct]), aet="GOODSCU")
    assert good.is_established
    assert good.send_c_store(pydicom.dcmread(ct)).Status == 0x0000
    good.release()
    assert guarded_scp.counts() == (1, 1, 1)


# -------------------------------------------------------------------------------- service

def test_start_scp_listens_until_stopped_and_is_a_no_op_when_disabled(sqlite_medgate, caplog):
    from tests.dimse.conftest import free_port

    # accept-any (explicit, for demos) lets an unregistered AE in, with a warning at start
    settings = sqlite_medgate.model_copy(update={"dicom_host": "127.0.0.1",
                                                 "dicom_port": free_port(),
                                                 "dicom_accept_any_peer": True})
    stop = scp_module.start_scp(settings)
    assert any(r.levelname == "WARNING" and "ACCEPT_ANY_PEER" in r.getMessage()
               for r in caplog.records)
    running = RunningSCP(settings, None)  # type: ignore[arg-type]
    assoc = associate(running, [build_context(Verification)])
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    stop()
    assert not associate(running, [build_context(Verification)]).is_established

    disabled = settings.model_copy(update={"start_scp": False})
    scp_module.start_scp(disabled)()
    assert not associate(running, [build_context(Verification)]).is_established
