"""The bad-input corpus over C-STORE (issue 10): every case whose breakage lies in the data set
is sent as the data set of a C-STORE on the context its file meta names, bytes as they are
(pynetdicom's chunked send reads them from the file without decoding), and gets the status
STOW-RS gives it, mapped to C-STORE (app.dicom.scp.C_STORE_STATUS); nothing is stored."""

from __future__ import annotations

import pytest
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from tests.badinput.corpus import BOMB_LIMIT, FILE_CASES, meta_end, ok_part

CASES = [c for c in FILE_CASES if c.cstore is not None]


@pytest.fixture
def corpus_scp(monkeypatch, sqlite_medgate):
    from app.config import get_settings, reset_settings
    from tests.dimse.conftest import _start

    monkeypatch.setenv("MEDGATE_MAX_INFLATED_BYTES", str(BOMB_LIMIT))
    reset_settings()
    assert get_settings().max_inflated_bytes == BOMB_LIMIT
    yield from _start(get_settings())


def _send(scp, files) -> list[int]:
    """C-STORE each Part 10 file's data set as is; the statuses in order."""
    import pydicom

    metas = [pydicom.filereader.read_file_meta_info(f) for f in files]
    contexts = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}
    ae = AE(ae_title="CORPUS")
    ae.requested_contexts = [build_context(a, [t]) for a, t in sorted(contexts)]
    assoc = ae.associate(*scp.address, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    assoc.dimse_timeout = 10
    statuses = []
    try:
        for f in files:
            rsp = assoc.send_c_store(f)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses


def test_every_broken_data_set_gets_its_c_store_status(corpus_scp, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    from app.dicom.scp import C_STORE_STATUS

    files = []
    for i, case in enumerate(CASES):
        data = case.build()
        assert len(data) >= meta_end(data)
        path = tmp_path / f"case{i}.dcm"
        path.write_bytes(data)
        files.append(path)
    statuses = _send(corpus_scp, files)
    wrong = {c.name: hex(s) for c, s in zip(CASES, statuses, strict=True)
             if s != C_STORE_STATUS.get(c.cstore, c.cstore)}
    assert not wrong, wrong
    assert corpus_scp.counts() == (0, 0, 0)
    assert corpus_scp.stored_files() == []
    assert not any((corpus_scp.settings.store_dir / "tmp").iterdir())
    # the instance the cases were broken from is stored on the same path
    good = tmp_path / "good.dcm"
    good.write_bytes(ok_part())
    assert _send(corpus_scp, [good]) == [0x0000]
    assert corpus_scp.counts() == (1, 1, 1)
