"""The acquiring cart's own measurements (Waveform Annotation Module, PS3.3 C.10.10), read from
pydicom's Mortara 12-lead ECG and from modified copies of it, and reported by the engine."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from models.base import ModelSpec, StudyInput, build
from models.ecg.cart import read_cart
from models.ecg.delineate import delineate
from models.ecg.filters import diagnostic
from models.ecg.signal import read_ecg

ECG = get_testdata_file("waveform_ecg.dcm")


@pytest.fixture(scope="module")
def original() -> Dataset:
    return pydicom.dcmread(ECG)


@pytest.fixture
def ds(original) -> Dataset:
    return copy.deepcopy(original)


def _item(ds: Dataset, meaning: str) -> Dataset:
    return next(a for a in ds.WaveformAnnotationSequence
                if "ConceptNameCodeSequence" in a and "NumericValue" in a
                and a.ConceptNameCodeSequence[0].CodeMeaning == meaning)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def test_mortara_cart_values_statements_and_codes_are_read(original):
    cart = read_cart(original)
    assert cart.values() == {"rr_interval": 982.0, "pr_interval": 161.0, "qrs_duration": 75.0,
                             "qt_interval": 368.0, "qtc": 370.0, "p_axis": 74.0,
                             "qrs_axis": 52.0, "t_axis": 57.0}
    qt = cart.get("qt_interval")
    assert (qt.unit, qt.code.scheme, qt.code.value, qt.code.meaning) == (
        "ms", "SCPECG", "5.13.5-11", "QT Interval")
    assert cart.get("qtc").formula is None  # "QTc Interval" does not name its correction
    assert cart.get("p_axis").unit == "deg" and cart.get("rr_interval").annotation_group == 1
    assert cart.statements == ("RITMO SINUSALE", "ECG NORMALE")
    assert cart.other == ()
    # PP Interval is stored as 0 ms: not a measurement, left out and said
    assert cart.get("pp_interval") is None
    assert any("PP Interval 0" in n for n in cart.notes)
    assert any("60 per-beat" in n for n in cart.notes)
    assert cart.device.startswith("Mortara")


def test_median_beat_fiducials_map_to_the_median_group_sample_axis(original):
    fid = read_cart(original).median_fiducials
    assert fid is not None
    assert (fid.multiplex_group, fid.group_label, fid.fs, fid.n_samples) == (
        2, "MEDIAN BEAT", 1000.0, 1200)
    assert fid.annotation_group == 2
    # stored 1-based positions (PS3.3 C.10.10.1) 299, 413, 460, 501, 535, 828
    assert {p.name: p.position for p in fid.points} == {
        "p_on": 299, "p_off": 413, "qrs_on": 460, "r": 501, "qrs_off": 535, "t_end": 828}
    assert {p.name: p.sample for p in fid.points} == {
        "p_on": 298, "p_off": 412, "qrs_on": 459, "r": 500, "qrs_off": 534, "t_end": 827}
    # the cart's own global intervals are these fiducials' differences
    assert fid.ms_from("p_on", "qrs_on") == -161.0
    assert fid.ms_from("qrs_off") == 75.0 and fid.ms_from("t_end") == 368.0
    # the file references multiplex group 1 for them; the reader says how it placed them
    assert any("annotation group 2" in n and "MEDIAN BEAT" in n
               for n in read_cart(original).notes)


def test_record_carries_cart_and_median_group_matches_its_fiducials():
    rec = read_ecg(ECG)
    assert rec.cart is not None and rec.cart.get("qt_interval").value == 368.0
    median = next(g for g in rec.groups if g.label == "MEDIAN BEAT")
    fid = rec.cart.median_fiducials
    assert median.fs == fid.fs and median.signals_mv.shape[1] == fid.n_samples
    assert all(0 <= p.sample < median.signals_mv.shape[1] for p in fid.points)
    # MedGate's delineator runs on the cart's stored median beat on the same sample axis;
    # how close the two agree is benchmarked (bench/ecg_cart.py), not asserted here
    sig = diagnostic(median.signals_mv, median.fs)
    r = int(np.argmax(np.abs(sig).sum(axis=0)[fid.get("qrs_on").sample:
                                               fid.get("qrs_off").sample])
            + fid.get("qrs_on").sample)
    ours, _ = delineate(sig, median.fs, r)
    assert 0 <= ours.qrs_on < r < ours.qrs_off < median.signals_mv.shape[1]


def test_file_without_annotations_gives_empty_result_and_record_without_cart(ds, tmp_path):
    del ds.WaveformAnnotationSequence
    cart = read_cart(ds)
    assert cart.empty and cart.measurements == () and cart.median_fiducials is None
    assert cart.notes == ()
    path = tmp_path / "no_annotations.dcm"
    ds.save_as(path)
    assert read_ecg(path).cart is None


def test_wfdb_record_has_no_cart(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    from models.ecg import synthetic

    ecg = synthetic.generate(heart_rate=70, duration_s=10.0, seed=1)
    wfdb.wrsamp("syn", fs=500, units=["mV"] * 12, sig_name=list(ecg.leads),
                p_signal=ecg.signals_mv.T, fmt=["16"] * 12, adc_gain=[1000.0] * 12,
                baseline=[0] * 12, write_dir=str(tmp_path))
    assert read_ecg(tmp_path / "syn.hea").cart is None


def test_seconds_are_converted_and_unknown_units_are_left_out_with_a_note(ds):
    qt = _item(ds, "QT Interval")
    qt.NumericValue = "0.368"
    qt.MeasurementUnitsCodeSequence[0].CodeValue = "s"
    qt.MeasurementUnitsCodeSequence[0].CodeMeaning = "seconds"
    pr = _item(ds, "PR Interval")
    pr.MeasurementUnitsCodeSequence[0].CodeValue = "[lb_av]"  # a mass, not a time
    pr.MeasurementUnitsCodeSequence[0].CodeMeaning = "pound"
    axis = _item(ds, "P Axis")
    axis.MeasurementUnitsCodeSequence[0].CodeValue = "ms"  # an axis in ms cannot be read
    cart = read_cart(ds)
    m = cart.get("qt_interval")
    assert m.value == pytest.approx(368.0) and m.unit == "ms"
    assert (m.stored_value, m.stored_unit) == (0.368, "s")
    assert cart.get("pr_interval") is None and cart.get("p_axis") is None
    assert any("PR Interval" in n and "[lb_av]" in n for n in cart.notes)
    assert any("P Axis" in n and "'ms'" in n for n in cart.notes)


def test_unknown_code_is_kept_as_other_never_mapped(ds):
    item = _item(ds, "QRS Duration")
    item.ConceptNameCodeSequence[0].CodeValue = "5.13.5-99"
    item.ConceptNameCodeSequence[0].CodeMeaning = "Some vendor duration"
    cart = read_cart(ds)
    assert cart.get("qrs_duration") is None
    (other,) = cart.other
    assert other.name == "other" and other.code.meaning == "Some vendor duration"
    assert (other.value, other.unit, other.code.value) == (75.0, "ms", "5.13.5-99")


def test_mdc_coded_measurements_are_read_with_their_formula(ds):
    qt = _item(ds, "QT Interval")
    qt.ConceptNameCodeSequence[0] = _code("2:16160", "MDC", "QT interval global")
    qtc = _item(ds, "QTc Interval")
    qtc.ConceptNameCodeSequence[0] = _code("2:15880", "MDC", "QTc global using Bazett formula")
    rate = copy.deepcopy(qt)
    rate.ConceptNameCodeSequence[0] = _code("2:16770", "MDC", "MDC_ECG_HEART_RATE")
    rate.MeasurementUnitsCodeSequence[0] = _code("/min", "UCUM", "per minute")
    rate.NumericValue = "61"
    axis = _item(ds, "QRS Axis")
    # a reference id is longer than a Code Value may be: Long Code Value (PS3.3 8.8)
    long_code = Dataset()
    long_code.LongCodeValue = "MDC_ECG_ANGLE_QRS_FRONT"
    long_code.CodingSchemeDesignator, long_code.CodeMeaning = "MDC", "QRS axis"
    axis.ConceptNameCodeSequence[0] = long_code
    per_lead = copy.deepcopy(qt)
    per_lead.ConceptNameCodeSequence[0] = _code("2:8192", "MDC", "QT interval per lead")
    ds.WaveformAnnotationSequence += [rate, per_lead]
    cart = read_cart(ds)
    assert cart.get("qt_interval").code.scheme == "MDC"
    assert cart.get("qt_interval").value == 368.0
    assert cart.get("qtc").formula == "Bazett" and cart.get("qtc").value == 370.0
    assert cart.get("heart_rate").value == 61.0 and cart.get("heart_rate").unit == "/min"
    assert cart.get("qrs_axis").value == 52.0
    assert [o.code.value for o in cart.other] == ["2:8192"]  # per-lead: not a global value


@pytest.fixture(scope="module")
def result():
    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    return engine.run(StudyInput("ecg", [Path(ECG)]))


def test_engine_reports_cart_values_beside_its_own_with_differences(result):
    by = {m.id: m for m in result.measurements}
    for name, value in (("qt_interval", 368.0), ("pr_interval", 161.0),
                        ("qrs_duration", 75.0), ("rr_interval", 982.0), ("qtc", 370.0),
                        ("p_axis", 74.0), ("qrs_axis", 52.0), ("t_axis", 57.0)):
        assert by[f"m:cart_{name}"].value == value
        assert by[f"m:cart_{name}"].unit == by.get(f"m:{name}", by["m:qtc_bazett"]).unit
    qt = by["m:cart_qt_interval"]
    assert "acquiring device" in qt.code.meaning and qt.where.instance_uid
    for name in ("qt_interval", "pr_interval", "qrs_duration", "rr_interval"):
        diff = by[f"m:{name}_cart_difference"]
        assert diff.value == pytest.approx(by[f"m:{name}"].value - by[f"m:cart_{name}"].value,
                                           abs=1e-3)
    # the cart's QTc names no correction: no difference against Bazett or Fridericia
    assert "m:qtc_cart_difference" not in by
    line = result.raw["summary"]["measurements"].splitlines()[-1]
    assert line.startswith("Acquiring device measured: ")
    assert "PR 161 ms (MedGate" in line and "QT 368 ms" in line
    assert "QTc 370 ms (correction not stated" in line and "axes P/QRS/T 74/52/57 deg" in line


def test_cart_statements_never_become_medgate_findings(result):
    assert result.raw["cart"]["statements"] == ["RITMO SINUSALE", "ECG NORMALE"]
    assert result.raw["cart"]["source"] == "acquiring device"
    texts = " ".join(f.label + " " + " ".join(map(str, f.criteria)) for f in result.findings)
    assert "RITMO" not in texts and "NORMALE" not in texts
    assert all("cart" not in e for f in result.findings for e in f.evidence)
    assert "RITMO" not in " ".join(result.raw["summary"].values())
