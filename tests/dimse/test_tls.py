"""DICOM over TLS (PS3.15 Annex B): a second listener with the same AE, handlers and peers.

The test makes its own CA, a server certificate (for 127.0.0.1 and localhost) and a client
certificate with the openssl command line.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from app.config import Settings
from app.db.models import AuditEvent
from app.db.session import session_factory
from app.dicom.scp import DicomSCP, tls_context
from tests.conftest import tool, wait_for
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP, _start, free_port

CT_FILE = PYDICOM_FILES / "CT_small.dcm"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN=medgate-test-{name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-sha256", "-out", f"{name}.crt", "-extfile",
             f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-days", "2", "-sha256", "-subj", f"/CN=MedGate {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
          "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n"
          "keyUsage=critical,digitalSignature,keyEncipherment\n")
    _leaf(d, "stranger", "other_ca", "extendedKeyUsage=clientAuth\n"
          "keyUsage=critical,digitalSignature,keyEncipherment\n")
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key")


def _tls_settings(settings: Settings, pki: Pki, with_ca: bool) -> Settings:
    return settings.model_copy(update={
        "dicom_tls_port": free_port(), "dicom_tls_cert": pki.server_cert,
        "dicom_tls_key": pki.server_key, "dicom_tls_ca": pki.ca if with_ca else None})


@pytest.fixture
def tls_scp(sqlite_medgate: Settings, pki: Pki) -> Iterator[RunningSCP]:
    """Mutual TLS: the SCP asks for a client certificate signed by the test CA."""
    yield from _start(_tls_settings(sqlite_medgate, pki, with_ca=True))


@pytest.fixture
def server_only_tls_scp(sqlite_medgate: Settings, pki: Pki) -> Iterator[RunningSCP]:
    yield from _start(_tls_settings(sqlite_medgate, pki, with_ca=False))


def client_context(pki: Pki, cert: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert:
        d = pki.ca.parent
        ctx.load_cert_chain(d / f"{cert}.crt", d / f"{cert}.key")
    return ctx


def associate_tls(scp: RunningSCP, ctx: ssl.SSLContext | None, aet: str = "PYSCU",
                  port: int | None = None) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.connection_timeout = 5
    return ae.associate("127.0.0.1", port or scp.settings.dicom_tls_port,
                        ae_title=scp.settings.ae_title,
                        tls_args=(ctx, "localhost") if ctx is not None else None)


def audit(settings: Settings, action: str) -> list[AuditEvent]:
    with session_factory(settings.db_url)() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_tls_association_stores_an_instance(tls_scp, pki):
    assoc = associate_tls(tls_scp, client_context(pki))
    assert assoc.is_established
    assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
    assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
    assert assoc.send_c_store(pydicom.dcmread(CT_FILE)).Status == 0x0000
    assoc.release()
    assert tls_scp.counts() == (1, 1, 1)
    (event,) = audit(tls_scp.settings, "dicom.associate")
    assert event.outcome == "success" and event.detail["tls"] is True
    summary = wait_for(lambda: audit(tls_scp.settings, "dicom.release"), timeout=10)[0]
    assert summary.detail["tls"] is True and summary.detail["stored"] == 1


def test_the_plain_port_still_works_beside_the_tls_port(tls_scp):
    assoc = associate_tls(tls_scp, None, port=tls_scp.port)
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_plain_association_on_the_tls_port_fails(tls_scp, pki):
    assoc = associate_tls(tls_scp, None)
    assert not assoc.is_established
    assert tls_scp.counts() == (0, 0, 0)
    refused = wait_for(lambda: audit(tls_scp.settings, "dicom.tls"), timeout=10)
    assert refused[0].outcome == "refused" and refused[0].detail["address"] == "127.0.0.1"
    # the listener is not held up by it: a TLS association right after succeeds
    good = associate_tls(tls_scp, client_context(pki))
    assert good.is_established
    good.release()


def test_an_idle_connection_does_not_hold_up_the_tls_listener(tls_scp, pki):
    import socket
    import time

    with socket.create_connection(("127.0.0.1", tls_scp.settings.dicom_tls_port)):
        time.sleep(0.2)  # connected, sending nothing: its handshake waits in its own thread
        started = time.monotonic()
        assoc = associate_tls(tls_scp, client_context(pki))
        assert assoc.is_established and time.monotonic() - started < 3
        assoc.release()


@pytest.mark.parametrize("cert", [None, "stranger"], ids=["no-certificate", "other-ca"])
def test_a_client_without_a_trusted_certificate_fails_when_a_ca_is_set(tls_scp, pki, cert):
    assoc = associate_tls(tls_scp, client_context(pki, cert))
    established = assoc.is_established
    if established:  # TLS 1.3: the client hears of the refusal only when it reads
        assoc.send_c_echo()
        established = assoc.is_established
    assert not established
    refused = wait_for(lambda: audit(tls_scp.settings, "dicom.tls"), timeout=10)
    assert "certificate" in refused[0].detail["reason"].lower()
    assert audit(tls_scp.settings, "dicom.associate") == []


def test_without_a_ca_a_client_needs_no_certificate(server_only_tls_scp, pki):
    assoc = associate_tls(server_only_tls_scp, client_context(pki, None))
    assert assoc.is_established
    assert assoc.send_c_store(pydicom.dcmread(CT_FILE)).Status == 0x0000
    assoc.release()


def test_the_peer_checks_apply_on_the_tls_port(tls_scp, pki):
    received: list = []
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", tls_scp.settings.dicom_tls_port,
                         ae_title="MEDGATE", tls_args=(client_context(pki), "localhost"),
                         evt_handlers=[(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))])
    assert assoc.is_rejected
    assert (received[0].result, received[0].result_source, received[0].diagnostic) == (1, 1, 3)
    (event,) = wait_for(lambda: audit(tls_scp.settings, "dicom.associate"), timeout=10)
    assert event.outcome == "refused" and event.detail["tls"] is True


def test_dcmtk_storescu_over_tls_stores_an_instance(tls_scp, pki):
    sent = subprocess.run([tool("storescu"), "+tls", str(pki.client_key), str(pki.client_cert),
                           "+cf", str(pki.ca), "-aet", "STORESCU", "-aec", "MEDGATE",
                           "127.0.0.1", str(tls_scp.settings.dicom_tls_port), str(CT_FILE)],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert tls_scp.counts() == (1, 1, 1)


def test_tls_needs_a_certificate_and_a_key_and_allows_tls_1_2_at_least(sqlite_medgate, pki):
    half = sqlite_medgate.model_copy(update={"dicom_tls_port": free_port(),
                                             "dicom_tls_cert": pki.server_cert})
    with pytest.raises(RuntimeError, match="MEDGATE_DICOM_TLS_KEY"):
        DicomSCP(half).start()
    missing = half.model_copy(update={"dicom_tls_key": pki.ca.parent / "nope.key"})
    with pytest.raises(RuntimeError, match="cannot load"):
        DicomSCP(missing).start()
    ctx = tls_context(_tls_settings(sqlite_medgate, pki, with_ca=True))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
