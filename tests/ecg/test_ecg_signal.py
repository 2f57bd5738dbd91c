"""Reading ECGs: DICOM waveform groups, WFDB (.dat and .mat), lead names, derivation, units."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from models.ecg.errors import (
    EcgInputError,
    EmptySignalError,
    NoWaveformError,
    UnknownUnitsError,
    UnsupportedWaveformError,
)
from models.ecg.leads import STANDARD_LEADS, derive_missing_leads, normalise_lead_name
from models.ecg.signal import EcgRecord, load_dicom, read_ecg, standardise
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def ecg_ds() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))


def test_dicom_12_lead_reads_rhythm_group_in_millivolts(ecg_ds):
    rec = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    assert rec.leads == list(STANDARD_LEADS)
    assert rec.fs == 500.0 and rec.original_fs == 1000.0
    assert rec.signals_mv.shape == (12, 5000)
    assert rec.group_label == "RHYTHM"
    assert [g.label for g in rec.groups] == ["MEDIAN BEAT"]  # the other group is kept
    assert rec.patient == {"sex": "F", "age_years": 42.0}
    # sensitivity 1.25 uV: raw counts x 1.25e-3 = mV
    raw = np.frombuffer(ecg_ds.WaveformSequence[0].WaveformData, "<i2").reshape(10000, 12)
    native = load_dicom(ecg_ds)
    assert np.allclose(native.signals_mv[0], raw[:, 0] * 1.25e-3)
    # a 12-lead resting ECG spans a few millivolts
    assert 0.5 < float(np.ptp(rec.lead("II"))) < 5.0


def test_dicom_units_and_baseline_are_applied(ecg_ds):
    ds = copy.deepcopy(ecg_ds)
    for ch in ds.WaveformSequence[0].ChannelDefinitionSequence:
        ch.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
        ch.ChannelSensitivity = "0.00125"
        ch.ChannelBaseline = "0.5"
        ch.ChannelSensitivityCorrectionFactor = "2"
    base = load_dicom(ecg_ds).signals_mv
    changed = load_dicom(ds).signals_mv
    assert np.allclose(changed, base * 2 + 0.5)


def test_wfdb_dat_record_with_modified_lead_names():
    rec = read_ecg(shared_file("ecg/wfdb/100.hea"))
    assert rec.leads == ["II", "V5"]  # MLII is read as II
    assert any("MLII" in n for n in rec.notes)
    assert rec.fs == 500.0 and rec.original_fs == 360.0
    assert abs(rec.duration_s - 1805.56) < 0.1


def test_wfdb_mat_record(tmp_path):
    # PhysioNet Challenge layout: int16 'val' matrix in a .mat file, described by a .hea header
    from scipy.io import savemat

    t = np.arange(5000) / 500.0
    sig = np.vstack([np.round(1000 * np.sin(2 * np.pi * (k + 1) * t)) for k in range(12)])
    savemat(tmp_path / "A0001.mat", {"val": sig.astype(np.int16)}, format="4")
    lines = ["A0001 12 500 5000"] + [
        f"A0001.mat 16+24 1000/mV 16 0 {int(sig[k, 0])} 0 0 {lead}"
        for k, lead in enumerate(STANDARD_LEADS)]
    (tmp_path / "A0001.hea").write_text("\n".join(lines + ["#Age: 63", "#Sex: Male"]) + "\n")
    rec = read_ecg(tmp_path / "A0001.hea")
    assert rec.leads == list(STANDARD_LEADS)
    assert rec.patient == {"age_years": 63.0, "sex": "M"}
    assert np.allclose(rec.lead("I"), sig[0] / 1000.0, atol=1e-9)


def test_lead_name_normalisation():
    assert normalise_lead_name("MLII") == "II"
    assert normalise_lead_name("Lead aVR") == "aVR"
    assert normalise_lead_name("AVL") == "aVL"
    assert normalise_lead_name("v5") == "V5"
    assert normalise_lead_name("5.6.3-9-64") == "aVF"  # SCP-ECG code
    assert normalise_lead_name("2:61") == "III"  # MDC code
    assert normalise_lead_name("vx") == "vx"  # not a 12-lead lead: unchanged


def test_limb_leads_derived_only_when_exact():
    rng = np.random.default_rng(0)
    lead_i, lead_ii = rng.normal(size=100), rng.normal(size=100)
    sig, names, notes = derive_missing_leads(np.vstack([lead_i, lead_ii]), ["I", "II"])
    assert names == ["I", "II", "III", "aVR", "aVL", "aVF"]
    assert np.allclose(sig[2], lead_ii - lead_i)
    assert np.allclose(sig[5], (lead_ii + sig[2]) / 2)
    assert any("II - I" in n for n in notes)
    # a single limb lead determines nothing else
    sig, names, _ = derive_missing_leads(lead_ii[None], ["II"])
    assert names == ["II"]
    rec = standardise(EcgRecord(np.vstack([lead_i, lead_ii]), 500.0, ["I", "II"], "t"))
    assert rec.derived_leads == ["III", "aVR", "aVL", "aVF"]


# -- bad input --------------------------------------------------------------------------------


def test_dicom_without_waveform_is_refused():
    with pytest.raises(NoWaveformError, match="no Waveform Sequence"):
        read_ecg(get_testdata_file("CT_small.dcm"))


def test_unknown_units_are_refused(ecg_ds):
    ds = copy.deepcopy(ecg_ds)
    unit = ds.WaveformSequence[0].ChannelDefinitionSequence[3].ChannelSensitivityUnitsSequence[0]
    unit.CodeValue, unit.CodeMeaning = "mm[Hg]", "millimetre of mercury"
    with pytest.raises(UnknownUnitsError, match="mm\\[Hg\\]"):
        load_dicom(ds)
    del ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivity
    with pytest.raises(UnknownUnitsError):
        load_dicom(ds)


def test_empty_and_unsupported_waveforms_are_refused(ecg_ds):
    ds = copy.deepcopy(ecg_ds)
    ds.WaveformSequence[0].NumberOfWaveformSamples = 0
    with pytest.raises(EmptySignalError):
        load_dicom(ds)
    ds = copy.deepcopy(ecg_ds)
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:100]
    with pytest.raises(EmptySignalError, match="bytes"):
        load_dicom(ds)
    ds = copy.deepcopy(ecg_ds)
    ds.WaveformSequence[0].WaveformSampleInterpretation = "MB"  # mu-law
    ds.WaveformSequence[0].WaveformBitsAllocated = 8
    with pytest.raises(UnsupportedWaveformError):
        load_dicom(ds)
    with pytest.raises(EmptySignalError):
        standardise(EcgRecord(np.zeros((12, 0)), 500.0, list(STANDARD_LEADS), "t"))


def test_files_that_are_not_ecgs_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an ECG")
    with pytest.raises(EcgInputError, match="neither a DICOM file nor a WFDB record"):
        read_ecg(text)
    with pytest.raises(EcgInputError, match="no such ECG file"):
        read_ecg(tmp_path / "missing.dcm")
    (tmp_path / "broken.hea").write_text("broken 2 500 1000\nbroken.dat 16 200 16 0 0 0 0 I\n")
    with pytest.raises(EcgInputError):
        read_ecg(tmp_path / "broken.hea")  # header without its signal file
    # every one of these is a ValueError for callers that know only the model contract
    assert issubclass(EcgInputError, ValueError)
