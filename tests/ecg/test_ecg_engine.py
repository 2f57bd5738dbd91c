"""The ecg-measure engine end to end on pydicom's 12-lead ECG and through the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from models.base import ContractError, ModelSpec, StudyInput, build, families
from models.ecg.errors import EcgInputError
from models.ecg.leads import STANDARD_LEADS


@pytest.fixture(scope="module")
def result():
    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    return engine.run(StudyInput("ecg", [Path(get_testdata_file("waveform_ecg.dcm"))]))


def test_families_are_registered():
    assert {"ecg-measure", "merl"} <= set(families())


def test_pydicom_waveform_gives_12_leads_measurements_and_grounded_findings(result):
    assert result.trained is True and result.model.family == "ecg-measure"
    assert result.raw["leads"] == list(STANDARD_LEADS)
    assert result.raw["other_waveform_groups"] == ["MEDIAN BEAT"]
    ids = {m.id for m in result.measurements}
    for name in ("heart_rate", "rr_interval", "pr_interval", "qrs_duration", "qt_interval",
                 "qtc_bazett", "qtc_fridericia", "p_axis", "qrs_axis", "t_axis"):
        assert f"m:{name}" in ids, name
    for lead in STANDARD_LEADS:
        assert f"m:st_deviation:{lead}" in ids and f"m:signal_quality:{lead}" in ids
    by = {m.id: m for m in result.measurements}
    assert 50 <= by["m:heart_rate"].value <= 75
    assert 60 <= by["m:qrs_duration"].value <= 120
    assert 300 <= by["m:qt_interval"].value <= 480
    assert by["m:st_deviation:V2"].where.lead == "V2"
    assert by["m:heart_rate"].where.instance_uid  # the DICOM instance it was measured on
    assert result.findings
    for f in result.findings:  # EngineResult already refuses unknown evidence ids
        assert set(f.evidence) <= ids and f.knowledge and f.criteria
    assert "12-lead ECG" in result.raw["summary"]["technique"]


def test_wfdb_record_is_read_from_its_header_and_extra_leads_reported(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    import numpy as np

    from models.ecg import synthetic

    ecg = synthetic.generate(heart_rate=66, duration_s=10.0, seed=5)
    sig = np.vstack([ecg.signals_mv, ecg.signals_mv[1:2] * 0.5])  # a 13th, non-standard lead
    wfdb.wrsamp("syn", fs=500, units=["mV"] * 13, sig_name=list(ecg.leads) + ["X1"],
                p_signal=sig.T, fmt=["16"] * 13, adc_gain=[1000.0] * 13, baseline=[0] * 13,
                write_dir=str(tmp_path))
    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    res = engine.run(StudyInput("ecg", [tmp_path / "syn.dat", tmp_path / "syn.hea"]))
    assert res.raw["not_analysed_leads"] == ["X1"]
    assert any("X1" in w for w in res.warnings)
    hr = next(m for m in res.measurements if m.id == "m:heart_rate")
    assert abs(hr.value - 66) < 2


def test_study_without_ecg_is_refused(tmp_path):
    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    with pytest.raises(EcgInputError, match="no ECG waveform"):
        engine.run(StudyInput("ecg", [Path(get_testdata_file("CT_small.dcm"))]))
    with pytest.raises(ContractError):
        build(ModelSpec("ecg-measure", "1.0.0", variant="checkpoint", weights_path="x.pth"))
