"""Measurements on synthetic 12-lead ECGs whose intervals are known by construction."""

from __future__ import annotations

import pytest

from models.ecg import measure, synthetic
from models.ecg.signal import EcgRecord

# heart rate, PR, QRS, QT (ms), morphology, frontal QRS axis
CASES = [
    (50, 160, 90, 440, "normal", 60),
    (60, 240, 90, 400, "normal", 60),
    (75, 180, 100, 400, "normal", -60),
    (90, 200, 110, 360, "normal", 120),
    (100, 150, 80, 340, "normal", 60),
    (120, 140, 80, 300, "normal", 30),
    (140, 120, 80, 270, "normal", 60),
    (75, 160, 150, 440, "lbbb", 0),
    (80, 170, 130, 420, "rbbb", 60),
]


def _analyse(ecg: synthetic.SyntheticEcg) -> measure.EcgAnalysis:
    return measure.analyse(EcgRecord(ecg.signals_mv, ecg.fs, list(ecg.leads), "synthetic"))


@pytest.mark.parametrize("hr,pr,qrs,qt,morph,axis", CASES)
def test_intervals_within_tolerance(hr, pr, qrs, qt, morph, axis):
    ecg = synthetic.generate(heart_rate=hr, pr_ms=pr, qrs_ms=qrs, qt_ms=qt, morphology=morph,
                             qrs_axis=axis, noise_mv=0.01, wander_mv=0.05, seed=hr)
    truth = ecg.truth
    v = _analyse(ecg).values
    assert abs(v["heart_rate"] - truth["heart_rate"]) <= 2.0
    assert abs(v["pr_interval"] - truth["pr_ms"]) <= 10.0
    assert abs(v["qrs_duration"] - truth["qrs_ms"]) <= 10.0
    assert abs(v["qt_interval"] - truth["qt_ms"]) <= 20.0
    assert abs(v["qrs_axis"] - truth["qrs_axis"]) <= 10.0
    rr_s = 60.0 / v["heart_rate"]
    assert v["qtc_bazett"] == pytest.approx(v["qt_interval"] / rr_s ** 0.5, rel=1e-6)
    assert v["qtc_fridericia"] == pytest.approx(v["qt_interval"] / rr_s ** (1 / 3), rel=1e-6)


def test_generator_truth_matches_request():
    ecg = synthetic.generate(heart_rate=72, pr_ms=180, qrs_ms=96, qt_ms=410)
    t = ecg.truth
    assert (round(t["pr_ms"]), round(t["qrs_ms"]), round(t["qt_ms"])) == (180, 96, 410)
    assert t["heart_rate"] == pytest.approx(72, abs=0.01)


def test_measurements_say_where_they_were_taken():
    a = _analyse(synthetic.generate(heart_rate=70, st_shift_mv={"II": 0.2}))
    by_id = {m.id: m for m in a.measurements}
    assert by_id["m:heart_rate"].unit == "/min" and by_id["m:heart_rate"].where.lead is None
    assert by_id["m:heart_rate"].where.beats == tuple(range(len(a.beats)))
    assert by_id["m:qrs_duration"].unit == "ms" and by_id["m:qrs_duration"].where.beats
    assert by_id["m:qrs_axis"].unit == "deg"
    st = by_id["m:st_deviation:II"]
    assert st.unit == "mV" and st.where.lead == "II" and 0.12 < st.value < 0.28
    assert by_id["m:signal_quality:V1"].unit == "1" and 0 <= by_id["m:signal_quality:V1"].value <= 1
    for name in ("rr_interval", "pr_interval", "qt_interval", "qtc_bazett", "qtc_fridericia",
                 "p_axis", "t_axis", "rr_sdnn", "sokolow_lyon", "cornell_voltage"):
        assert f"m:{name}" in by_id, name
    for lead in ("V1", "V5", "aVL"):
        assert f"m:r_amplitude:{lead}" in by_id and f"m:s_amplitude:{lead}" in by_id
