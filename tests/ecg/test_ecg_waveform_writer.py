"""WFDB -> DICOM ECG waveform: dciodvfy finds no error, and reading it back gives the same mV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.dicom.waveform import (
    GENERAL_ECG,
    TWELVE_LEAD_ECG,
    WaveformWriteError,
    wfdb_to_dicom,
)
from models.ecg.leads import STANDARD_LEADS
from models.ecg.signal import read_ecg
from tests.conftest import dciodvfy, shared_file


def physical(record: Path, n: int | None = None) -> tuple[np.ndarray, list[str], list[float]]:
    import wfdb

    rec = wfdb.rdrecord(str(record))
    steps = [1.0 / g for g in rec.adc_gain]  # mV per count
    sig = rec.p_signal.T
    return (sig if n is None else sig[:, :n]), list(rec.sig_name), steps


@pytest.mark.parametrize("name,iod,sop_class,seconds", [
    ("s0010_re", "12-lead", TWELVE_LEAD_ECG, 10.0),  # 38 s, 15 leads: 12 leads, first 10 s
    ("s0010_re", "auto", GENERAL_ECG, 38.4),  # every lead, whole
    ("100", "auto", GENERAL_ECG, 1805.6),  # two-lead Holter record
])
def test_written_instance_is_valid_and_round_trips(tmp_path, name, iod, sop_class, seconds):
    record = shared_file(f"ecg/wfdb/{name}.hea").with_suffix("")
    out = tmp_path / f"{name}.dcm"
    ds = wfdb_to_dicom(record, out, patient_name="Test^Patient", patient_id="WFDB-1",
                       study_id="1", iod=iod)
    assert ds.medgate_report.sop_class_uid == sop_class
    lines = dciodvfy(out)
    errors = [line for line in lines if "Error" in line]
    assert not errors, "\n".join(errors)

    back = read_ecg(out, target_fs=None, derive=False)  # native rate, no derived leads
    stored = pydicom.dcmread(out)
    assert stored.SOPClassUID == sop_class and stored.Modality == "ECG"
    assert abs(back.duration_s - seconds) < 0.1
    src, names, steps = physical(record, back.n_samples)
    for k, lead in enumerate(back.leads):
        i = k if iod == "auto" else names.index(next(n for n in names if n.lower() == lead.lower()))
        # the same millivolts, within half a quantisation step
        assert np.nanmax(np.abs(back.signals_mv[k] - src[i])) <= steps[i] / 2 + 1e-9, lead
    if sop_class == TWELVE_LEAD_ECG:
        assert back.leads == list(STANDARD_LEADS)
        assert "first 10 s" in stored.SeriesDescription
        codes = [c.ChannelSourceSequence[0].CodeValue
                 for c in stored.WaveformSequence[0].ChannelDefinitionSequence]
        assert codes[:3] == ["2:1", "2:2", "2:61"]  # MDC codes of CID 3001


def test_record_without_the_12_leads_cannot_be_forced_into_the_12_lead_iod(tmp_path):
    record = shared_file("ecg/wfdb/100.hea").with_suffix("")
    with pytest.raises(WaveformWriteError, match="12 standard leads"):
        wfdb_to_dicom(record, tmp_path / "x.dcm", iod="12-lead")
    assert not (tmp_path / "x.dcm").exists()
