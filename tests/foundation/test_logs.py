"""Log filters that keep patient data out of logs: query values in the access log, quoted
element values in pydicom's warnings."""

from __future__ import annotations

import logging

from app import logs


def test_access_log_keeps_query_keys_and_drops_their_values(caplog):
    logs.install()
    logger = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                    "/dicomweb/studies?PatientName=Doe%5EJane&PatientID=P-77&limit=5", "1.1",
                    200)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ('127.0.0.1:5 - "GET /dicomweb/studies?PatientName=…&PatientID=…&limit=… '
                    'HTTP/1.1" 200')
    assert logs.redact_path("/api/v1/reports/3") == "/api/v1/reports/3"


def test_pydicom_and_python_warnings_lose_quoted_values(caplog):
    import pydicom.config  # noqa: F401 - the pydicom logger exists

    logs.install()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane' in %s",
                                             "element (0010,0010)")
        # what logging.captureWarnings sends for warnings.warn(...)
        logging.getLogger("py.warnings").warning("%s", "x.py:1: UserWarning: bad value "
                                                 "b'Smith^Anna\\x00' in tag")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Doe" not in text and "Smith" not in text
    assert "Invalid value for VR PN: … in element (0010,0010)" in text
    logging.captureWarnings(False)
