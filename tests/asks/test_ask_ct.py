"""A question about a CT region's numbers is measured, not generated: a box on a slice of a CT
phantom series goes to ct-quant (rule-based, so no reference-answer setting is needed) and the
answer gives the region's area and HU statistics."""

from __future__ import annotations

import numpy as np
import pydicom
from sqlalchemy import select

from tests.ct.phantoms import write_series
from tests.pipeline.conftest import complete_now, store


def test_a_ct_box_is_answered_with_its_measured_attenuation(api, auth, tmp_path, monkeypatch):
    from app.config import reset_settings
    from app.db.models import Ask
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    monkeypatch.setenv("MEDGATE_ALLOW_REFERENCE_ANSWERS", "false")
    reset_settings()
    hu = np.full((5, 40, 36), 30.0, dtype=np.float32)
    hu[2, 8:18, 6:26] = -80.0  # fat
    paths = write_series(tmp_path / "ct", hu, spacing=(2.5, 0.8, 0.8), patient_id="ASK-CT")
    for p in paths:
        study = store(p)
    complete_now()
    instance = str(pydicom.dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID)
    r = api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                 json={"instance_uid": instance, "question": "What is the attenuation here?",
                       "box": [6, 8, 20, 10]})
    assert r.status_code == 202, r.text
    assert r.json()["model"] == {"family": "ct-quant", "version": "1.0.0", "trained": True}
    with session_factory()() as s:
        job_id = s.scalar(select(Ask.job_fk).where(Ask.id == r.json()["id"]))
    assert execute(job_id) == "done"
    body = api.get(r.json()["url"], headers=auth["clinician"]).json()
    assert body["state"] == "done" and "notice" not in body
    text = body["answer"]["text"]
    assert "mean -80.0 HU, SD 0.0 HU" in text and "128 mm²" in text
