"""WADO-RS never answers 5xx for what is stored (issue 10, item 6): an instance stored before
the store compared pixel data with the transfer syntax (its row says JPEG Baseline, its pixels
are native) gets a specific 422 problem for its pixel bulk data; the instance itself is still
retrieved as stored."""

from __future__ import annotations

import hashlib

from pydicom.uid import JPEGBaseline8Bit
from sqlalchemy import select

from tests.badinput.corpus import image, part10
from tests.dicomweb.conftest import multipart, stow_headers


def test_unframeable_pixel_data_is_a_422_not_a_500(client, keys, medgate):
    from app.db.models import Instance
    from app.db.session import session_scope

    ds = image(bits=8)
    r = client.post("/dicomweb/studies", content=multipart([part10(ds)]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    # what the store accepted before it checked: file meta and index say JPEG Baseline,
    # the pixels are native
    legacy = part10(ds, JPEGBaseline8Bit)
    with session_scope() as session:
        row = session.scalar(select(Instance))
        row.transfer_syntax_uid, row.size = JPEGBaseline8Bit, len(legacy)
        row.sha256 = hashlib.sha256(legacy).hexdigest()
        (medgate.store_dir / row.path).write_bytes(legacy)
    base = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    r = client.get(f"{base}/bulkdata/7FE00010", headers=keys["clinician"])
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "encapsulated" in r.json()["detail"]
    r = client.get(base, headers={**keys["clinician"], "Accept": 'multipart/related; '
                                  'type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
