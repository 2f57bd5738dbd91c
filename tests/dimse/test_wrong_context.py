"""Requests that do not fit their presentation context, and C-STOREs without a data set.

Each is answered at once (never a C-ECHO-RSP, never silence until the network timeout) and
leaves the association usable. The requests are built by hand so that they go out on the
context chosen here, not on the one pynetdicom's send_c_store would pick.
"""

from __future__ import annotations

import time
from io import BytesIO

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.dimse.conftest import PYDICOM_FILES, RunningSCP

CT = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")


def _encoded(ds: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


CT_BYTES = _encoded(CT)


def _associate(scp: RunningSCP) -> Association:
    ae = AE(ae_title="PYSCU")
    for uid in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate(*scp.address, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    # an answer must come within this (the SCP used to leave these until its 60 s network
    # timeout): get_msg gives (None, None) after it and the status checks fail
    assoc.dimse_timeout = 5
    return assoc


def _context_id(assoc: Association, abstract_syntax: str) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts
                if cx.abstract_syntax == abstract_syntax)


def _store_rq(sop_class: str, data: bytes | None, message_id: int = 1) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = message_id
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = CT.SOPInstanceUID
    rq.Priority = 2
    rq.DataSet = BytesIO(data) if data is not None else None
    return rq


def _exchange(assoc: Association, rq, context_id: int, extra_pdata: P_DATA | None = None):
    """Send ``rq`` on ``context_id`` (plus raw P-DATA after it) and wait for the response,
    pausing the requestor's reactor as pynetdicom's own send_* methods do."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        started = time.monotonic()
        assoc.dimse.send_msg(rq, context_id)
        if extra_pdata is not None:
            assoc.dul.send_pdu(extra_pdata)
        _, rsp = assoc.dimse.get_msg(block=True)
        return rsp, time.monotonic() - started
    finally:
        assoc._reactor_checkpoint.set()


def _still_usable(assoc: Association, scp: RunningSCP) -> None:
    assert assoc.is_established
    assert assoc.send_c_store(CT).Status == 0x0000
    assert scp.instance(CT.SOPInstanceUID) is not None
    assoc.release()


@pytest.mark.parametrize("sop_class", [Verification, CTImageStorage],
                         ids=["naming-verification", "naming-ct"])
def test_c_store_on_the_verification_context_is_refused_not_echoed(sqlite_scp, sop_class):
    assoc = _associate(sqlite_scp)
    rsp, _ = _exchange(assoc, _store_rq(sop_class, CT_BYTES),
                          _context_id(assoc, Verification))
    # before: a C-ECHO-RSP with 0x0000 (naming Verification) or the instance was stored
    assert isinstance(rsp, C_STORE) and rsp.Status == 0x0122, rsp
    assert sqlite_scp.counts() == (0, 0, 0)
    _still_usable(assoc, sqlite_scp)


@pytest.mark.parametrize("sop_class", [StudyRootQueryRetrieveInformationModelFind,
                                       CTImageStorage], ids=["naming-find", "naming-ct"])
def test_c_store_on_a_find_context_is_answered_at_once(sqlite_scp, sop_class):
    assoc = _associate(sqlite_scp)
    rsp, _ = _exchange(assoc, _store_rq(sop_class, CT_BYTES),
                          _context_id(assoc, StudyRootQueryRetrieveInformationModelFind))
    # before: an A-ABORT (naming the Find model) or the instance was stored on the Find context
    assert isinstance(rsp, C_STORE) and rsp.Status == 0x0122, rsp
    assert sqlite_scp.counts() == (0, 0, 0)
    _still_usable(assoc, sqlite_scp)


def test_c_find_on_a_storage_context_is_refused_0122(sqlite_scp):
    assoc = _associate(sqlite_scp)
    rq = C_FIND()
    rq.MessageID, rq.Priority = 3, 2
    rq.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    rq.Identifier = BytesIO(_encoded(identifier))
    rsp, _ = _exchange(assoc, rq, _context_id(assoc, CTImageStorage))
    assert isinstance(rsp, C_FIND) and rsp.Status == 0x0122
    _still_usable(assoc, sqlite_scp)


def test_c_store_with_an_empty_data_set_is_answered_a900_at_once(sqlite_scp):
    """The command announces a data set and its one, last fragment is empty (PS3.8 E.2)."""
    assoc = _associate(sqlite_scp)
    cx = _context_id(assoc, CTImageStorage)
    empty_last_fragment = P_DATA()
    empty_last_fragment.presentation_data_value_list.append([cx, b"\x02"])
    rsp, _ = _exchange(assoc, _store_rq(CTImageStorage, b""), cx, empty_last_fragment)
    assert isinstance(rsp, C_STORE) and rsp.Status == 0xA900
    assert rsp.ErrorComment == "the data set is empty"
    assert sqlite_scp.counts() == (0, 0, 0)
    _still_usable(assoc, sqlite_scp)


def test_c_store_without_a_data_set_is_answered_a900_at_once(sqlite_scp):
    """Command Data Set Type 0x0101 (no data set) on a C-STORE-RQ, which must carry one."""
    assoc = _associate(sqlite_scp)
    rsp, _ = _exchange(assoc, _store_rq(CTImageStorage, None),
                          _context_id(assoc, CTImageStorage))
    assert isinstance(rsp, C_STORE) and rsp.Status == 0xA900
    _still_usable(assoc, sqlite_scp)


def test_c_store_whose_announced_data_set_never_comes_is_answered(sqlite_scp):
    """pynetdicom as a sender announces a data set for BytesIO(b"") and sends no fragment;
    the SCP waited for it until the network timeout. Now a silent peer is answered."""
    sqlite_scp.scp.announced_data_set_wait = 0.5
    assoc = _associate(sqlite_scp)
    rsp, took = _exchange(assoc, _store_rq(CTImageStorage, b""),
                          _context_id(assoc, CTImageStorage))
    assert isinstance(rsp, C_STORE) and rsp.Status == 0xA900, rsp
    assert 0.5 <= took < 4
    assert sqlite_scp.counts() == (0, 0, 0)
    _still_usable(assoc, sqlite_scp)


def test_a_slow_sender_is_not_cut_short(sqlite_scp):
    """The wait counts the peer's silence, not the time since the command: a data set that
    trickles in for longer than the wait is stored normally."""
    import socket

    if not hasattr(socket, "TCP_INFO"):
        pytest.skip("the platform cannot tell when the peer last sent data")
    sqlite_scp.scp.announced_data_set_wait = 0.6
    assoc = _associate(sqlite_scp)
    cx = _context_id(assoc, CTImageStorage)
    body = P_DATA()
    body.presentation_data_value_list.append([cx, b"\x02" + CT_BYTES])
    wire = P_DATA_TF(body).encode()
    chunks = [wire[i:i + len(wire) // 8 + 1] for i in range(0, len(wire), len(wire) // 8 + 1)]
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(_store_rq(CTImageStorage, b""), cx)  # the command alone
        started = time.monotonic()
        for chunk in chunks:  # the data set PDU, a piece every 0.25 s (2 s in all)
            time.sleep(0.25)
            assoc.dul.socket.socket.sendall(chunk)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert time.monotonic() - started > 3 * 0.6
    assert isinstance(rsp, C_STORE) and rsp.Status == 0x0000, rsp
    assert sqlite_scp.counts() == (1, 1, 1)
    assoc.release()
