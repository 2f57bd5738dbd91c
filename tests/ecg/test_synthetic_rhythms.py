"""The synthetic ECG generator's rhythm truth, checked against itself and against physiology.

These tests do not run the interpreter: they check that the records the interpreter is tested
on say what they are (AV relationships, pauses, rates, spikes) and draw what they say.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.ecg import synthetic
from models.ecg.leads import STANDARD_LEADS

CLEAN = dict(noise_mv=0.0, wander_mv=0.0)
LEAD = {name: k for k, name in enumerate(STANDARD_LEADS)}


def gen(**kw) -> synthetic.SyntheticEcg:
    return synthetic.generate(**kw)


def window(ecg: synthetic.SyntheticEcg, lead: str, start_ms: float, length_ms: float):
    i0 = int(round(start_ms * ecg.fs / 1000))
    return ecg.signals_mv[LEAD[lead], i0:i0 + int(round(length_ms * ecg.fs / 1000))]


# --- invariants every rhythm must keep ---------------------------------------------------------

RHYTHMS = {
    "sinus": dict(),
    "sinus-ectopy": dict(premature={3: "pac", 6: "pac-aberrant", 9: "pvc"}),
    "frequent-pacs": dict(heart_rate=120, pac_every=3, qt_ms=320),
    "af": dict(rhythm="af", heart_rate=100, premature={5: "pvc", 9: "aberrant"}),
    "legacy-af": dict(heart_rate=95, p_wave=False, rr_jitter=0.25, fibrillation_mv=0.05,
                      qt_ms=360),
    "flutter-2": dict(rhythm="flutter", conduction=2, qt_ms=320),
    "flutter-variable": dict(rhythm="flutter", conduction="variable", qt_ms=320),
    "mobitz1": dict(av_block="mobitz1", heart_rate=80),
    "mobitz2": dict(av_block="mobitz2", av_ratio=3, heart_rate=80),
    "complete-junctional": dict(av_block="complete", heart_rate=80),
    "complete-ventricular": dict(av_block="complete", escape="ventricular", heart_rate=75),
    "junctional": dict(rhythm="junctional", heart_rate=50, retrograde_p=True),
    "paced-ventricular": dict(pacing="ventricular", heart_rate=60),
    "paced-atrial": dict(pacing="atrial", heart_rate=70),
    "paced-dual": dict(rhythm="paced", pacing="dual", heart_rate=65),
}


@pytest.mark.parametrize("case", sorted(RHYTHMS))
def test_timelines_are_consistent(case):
    ecg = gen(seed=2, **RHYTHMS[case])
    t = ecg.truth
    nb, na = len(t["qrs_onsets_ms"]), len(t["p_onsets_ms"])
    assert nb >= 4
    for key in ("beat_kinds", "pr_ms_per_beat", "beat_p_index", "qrs_ms_per_beat", "r_peaks"):
        assert len(t[key]) == nb, key
    for key in ("p_kinds", "p_conducted", "p_beat_index"):
        assert len(t[key]) == na, key
    assert list(ecg.r_peaks) == t["r_peaks"]
    assert np.all(np.diff(t["qrs_onsets_ms"]) > 0) and np.all(np.diff(t["p_onsets_ms"]) > 0)
    assert t["rr_ms"] == pytest.approx(list(np.diff(t["qrs_onsets_ms"])))
    assert t["heart_rate"] == pytest.approx(60000 / np.mean(t["rr_ms"]))
    assert t["ventricular_rate"] == t["heart_rate"]
    for b, k in enumerate(t["beat_p_index"]):  # both directions of every AV link
        if k is None:
            assert t["pr_ms_per_beat"][b] is None
        else:
            assert t["p_conducted"][k] and t["p_beat_index"][k] == b
            assert t["pr_ms_per_beat"][b] == pytest.approx(
                t["qrs_onsets_ms"][b] - t["p_onsets_ms"][k])
    assert sum(t["p_conducted"]) == sum(k is not None for k in t["beat_p_index"])
    # each R peak lies inside its own QRS
    for onset, width, r in zip(t["qrs_onsets_ms"], t["qrs_ms_per_beat"], t["r_peaks"],
                               strict=True):
        assert onset - 2 <= r * 1000 / ecg.fs <= onset + width + 2


def test_a_10_s_record_generates_fast():
    for kw in (dict(), dict(rhythm="flutter", conduction="variable"), dict(pacing="dual")):
        gen(**kw)  # warm-up
        best = min(_timed(kw) for _ in range(3))
        assert best < 0.2, (kw, best)


def _timed(kw) -> float:
    t0 = time.perf_counter()
    gen(**kw)
    return time.perf_counter() - t0


# --- sinus rhythm and the original meaning ---------------------------------------------------


def test_sinus_truth_keeps_its_original_keys_and_meaning():
    ecg = gen(heart_rate=72, pr_ms=180, qrs_ms=96, qt_ms=410)
    t = ecg.truth
    assert (round(t["pr_ms"]), round(t["qrs_ms"]), round(t["qt_ms"])) == (180, 96, 410)
    assert t["heart_rate"] == pytest.approx(72, abs=0.01)
    assert t["rhythm"] == "sinus" and t["av_block"] is None
    assert set(t["beat_kinds"]) == {"normal"} and all(t["p_conducted"])
    assert t["pr_ms_per_beat"] == pytest.approx([180.0] * len(t["qrs_onsets_ms"]))
    assert t["atrial_rate"] == pytest.approx(72)
    assert t["pacing_spikes_ms"] == [] and t["pacing_spike_width_ms"] is None


@pytest.mark.parametrize("rate,label", [(50, "sinus-bradycardia"), (72, "sinus"),
                                        (115, "sinus-tachycardia")])
def test_sinus_rate_labels(rate, label):
    assert gen(heart_rate=rate, qt_ms=330 if rate > 100 else 400).truth["rhythm"] == label


def test_first_degree_av_block_is_a_long_constant_pr():
    t = gen(heart_rate=70, pr_ms=240).truth
    assert t["av_block"] == "first-degree" and t["rhythm"] == "sinus"
    assert all(p == pytest.approx(240) for p in t["pr_ms_per_beat"])


def test_regular_rhythm_without_p_waves_is_labelled_junctional():
    t = gen(heart_rate=60, p_wave=False).truth
    assert t["rhythm"] == "junctional" and t["p_onsets_ms"] == [] and "pr_ms" not in t


# --- premature complexes -----------------------------------------------------------------------


def test_pvc_has_no_p_and_a_fully_compensatory_pause():
    ecg = gen(heart_rate=70, premature={5: "pvc"})
    t = ecg.truth
    rr = 60000 / 70
    assert t["beat_kinds"][5] == "pvc" and t["beat_p_index"][5] is None
    assert t["qrs_ms_per_beat"][5] >= 120 > t["qrs_ms_per_beat"][4]
    pre, post = t["rr_ms"][4], t["rr_ms"][5]
    assert pre < 0.8 * rr and pre + post == pytest.approx(2 * rr)
    # the sinus P due during the PVC is there, on time, and finds the ventricles refractory
    blocked = [p for p, c in zip(t["p_onsets_ms"], t["p_conducted"], strict=True) if not c]
    assert blocked == pytest.approx([t["qrs_onsets_ms"][4] + rr - 160])
    assert np.allclose(np.diff(t["p_onsets_ms"]), rr)


def test_a_late_pvc_at_a_slow_rate_is_interpolated():
    t = gen(heart_rate=40, qt_ms=420, premature={3: "pvc"}).truth
    rr = 60000 / 40
    assert t["beat_kinds"][3] == "pvc" and all(t["p_conducted"])
    assert t["rr_ms"][2] + t["rr_ms"][3] == pytest.approx(rr)  # sandwiched between sinus beats


def test_pac_is_an_early_different_p_with_a_non_compensatory_pause():
    ecg = gen(heart_rate=50, qt_ms=420, coupling=0.7, premature={4: "pac"}, **CLEAN)
    t = ecg.truth
    rr = 60000 / 50
    assert t["beat_kinds"][4] == "pac"
    k = t["beat_p_index"][4]
    assert t["p_kinds"][k] == "pac" and t["p_conducted"][k]
    pre, post = t["rr_ms"][3], t["rr_ms"][4]
    assert pre == pytest.approx(0.7 * rr)
    assert pre + post < 2 * rr - 100  # not compensatory
    # the sinus node is reset: the next sinus P comes one cycle after the PAC's P
    assert t["p_onsets_ms"][k + 1] - t["p_onsets_ms"][k] == pytest.approx(rr)
    assert t["qrs_ms_per_beat"][4] == pytest.approx(t["qrs_ms_per_beat"][3])  # normal QRS
    # its P is lower and of another shape than the sinus P (on a clean, T-free baseline)
    sinus = window(ecg, "II", t["p_onsets_ms"][k - 1] - 10, 130)
    ectopic = window(ecg, "II", t["p_onsets_ms"][k] - 10, 130)
    assert np.ptp(ectopic) < 0.8 * np.ptp(sinus)
    assert np.corrcoef(sinus, ectopic)[0, 1] < 0.9
    v1 = window(ecg, "V1", t["p_onsets_ms"][k], 110)
    assert v1.max() > 0.02 and v1.min() < -0.02  # biphasic in V1


def test_aberrant_pac_is_an_early_p_then_a_wide_qrs():
    t = gen(heart_rate=70, premature={4: "pac-aberrant"}).truth
    k = t["beat_p_index"][4]
    assert t["beat_kinds"][4] == "pac-aberrant" and t["p_kinds"][k] == "pac"
    assert t["qrs_ms_per_beat"][4] >= 120 and t["pr_ms_per_beat"][4] == pytest.approx(160)


def test_frequent_pacs_in_sinus_tachycardia():
    t = gen(heart_rate=120, pac_every=3, qt_ms=320).truth
    kinds = t["beat_kinds"]
    assert t["rhythm"] == "sinus-tachycardia"
    assert [i for i, k in enumerate(kinds) if k == "pac"] == list(range(2, len(kinds), 3))
    assert kinds.count("pac") >= 5


# --- atrial fibrillation and flutter ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_af_has_no_p_waves_and_irregular_rr(seed):
    ecg = gen(rhythm="af", heart_rate=90, seed=seed)
    t = ecg.truth
    rr = np.asarray(t["rr_ms"])
    assert t["rhythm"] == "af" and t["p_onsets_ms"] == [] and "pr_ms" not in t
    assert rr.std() / rr.mean() > 0.15
    assert np.all(rr >= 250)
    assert 4 <= t["f_wave_hz"] <= 9 and t["atrial_rate"] == pytest.approx(60 * t["f_wave_hz"])
    assert all(p is None for p in t["pr_ms_per_beat"])


def test_af_draws_f_waves_in_the_diastole_of_v1():
    ecg = gen(rhythm="af", heart_rate=70, **CLEAN)
    t = ecg.truth
    quiet = [window(ecg, "V1", q + 480, r - 560) for q, r in
             zip(t["qrs_onsets_ms"], t["rr_ms"], strict=False) if r > 700]
    assert quiet and all(np.ptp(w) > 0.04 for w in quiet)
    # their rate, from zero crossings in those T-to-QRS windows, is in the AF band
    crossings = sum(np.count_nonzero(np.diff(np.sign(w - w.mean()))) for w in quiet)
    seconds = sum(len(w) for w in quiet) / ecg.fs
    assert 3.5 <= crossings / 2 / seconds <= 9.5


def test_the_original_af_recipe_is_still_af():
    t = gen(heart_rate=95, p_wave=False, rr_jitter=0.25, fibrillation_mv=0.05, qt_ms=360,
            seed=3).truth
    rr = np.asarray(t["rr_ms"])
    assert t["rhythm"] == "af" and t["p_onsets_ms"] == [] and rr.std() / rr.mean() > 0.1


def test_wide_beats_in_af():
    t = gen(rhythm="af", heart_rate=90, premature={5: "pvc", 9: "aberrant"}).truth
    rr = 60000 / 90
    assert t["beat_kinds"][5] == "pvc" and t["beat_kinds"][9] == "aberrant"
    assert t["qrs_ms_per_beat"][5] >= 120 and t["qrs_ms_per_beat"][9] >= 120
    # Ashman: the aberrant beat closes a short cycle that follows a long one
    assert t["rr_ms"][7] == pytest.approx(1.5 * rr) and t["rr_ms"][8] < 0.7 * rr


@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_flutter_with_fixed_conduction(ratio):
    t = gen(rhythm="flutter", conduction=ratio, qt_ms=320, seed=ratio).truth
    pp = np.diff(t["p_onsets_ms"])
    assert t["rhythm"] == "flutter" and set(t["p_kinds"]) == {"flutter"}
    assert t["atrial_rate"] == pytest.approx(300) and np.allclose(pp, 200)
    assert t["conduction_ratios"] == [ratio] * (len(t["qrs_onsets_ms"]) - 1)
    assert np.allclose(t["rr_ms"], 200 * ratio)
    assert t["ventricular_rate"] == pytest.approx(300 / ratio)
    assert np.allclose(t["pr_ms_per_beat"], 160)  # constant F-to-QRS time
    conducted = np.flatnonzero(t["p_conducted"])
    assert np.all(np.diff(conducted) == ratio)


def test_flutter_with_variable_conduction():
    t = gen(rhythm="flutter", conduction="variable", atrial_rate=280, qt_ms=320, seed=4).truth
    cycle = 60000 / 280
    assert t["atrial_rate"] == pytest.approx(280)
    assert set(t["conduction_ratios"]) <= {2, 3, 4} and len(set(t["conduction_ratios"])) > 1
    assert np.allclose(np.asarray(t["rr_ms"]) / cycle, t["conduction_ratios"])


def test_flutter_sawtooth_is_largest_in_the_inferior_leads_and_v1():
    ecg = gen(rhythm="flutter", conduction=4, qt_ms=300, **CLEAN)
    t = ecg.truth
    gains = np.abs(synthetic._FLUTTER_GAINS)
    for strong in ("II", "III", "aVF", "V1"):
        for weak in ("I", "V5", "V6"):
            assert gains[LEAD[strong]] > 3 * gains[LEAD[weak]]
    # between the T end and the next QRS, lead II is a sawtooth: slow fall then fast rise
    q = t["qrs_onsets_ms"][2]
    f = next(p for p in t["p_onsets_ms"] if p > q + 400)
    w = window(ecg, "II", f, 200)
    slope = np.diff(w)
    assert np.ptp(w) > 0.15
    assert (slope < 0).sum() > 2 * (slope > 0).sum()
    assert slope.max() > 2 * -slope.min()


# --- AV block ---------------------------------------------------------------------------------


def test_mobitz1_pr_lengthens_then_a_p_is_dropped():
    t = gen(av_block="mobitz1", av_ratio=4, heart_rate=80).truth
    pp = 60000 / 80
    assert t["rhythm"] == "mobitz1" and t["av_block"] == "mobitz1"
    assert np.allclose(np.diff(t["p_onsets_ms"]), pp)
    conducted = t["p_conducted"]
    assert [i for i, c in enumerate(conducted) if not c] == list(range(3, len(conducted), 4))
    groups = [t["pr_ms_per_beat"][g:g + 3] for g in range(0, len(t["pr_ms_per_beat"]) - 2, 3)]
    assert len(groups) >= 2
    for prs in groups:
        assert prs[0] == pytest.approx(160)  # reset after the dropped P
        increments = np.diff(prs)
        assert np.all(increments > 0) and increments[1] < increments[0]  # Wenckebach
    rr = np.asarray(t["rr_ms"][:3])
    assert rr[1] < rr[0]  # RR shortens within the group
    assert rr[2] < 2 * pp  # the pause holding the dropped P is shorter than two P-P


@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_mobitz2_pr_is_constant_until_a_p_fails(ratio):
    t = gen(av_block="mobitz2", av_ratio=ratio, heart_rate=75).truth
    pp = 60000 / 75
    assert t["rhythm"] == "mobitz2"
    assert np.allclose(t["pr_ms_per_beat"], 160)
    dropped = [i for i, c in enumerate(t["p_conducted"]) if not c]
    assert dropped == list(range(ratio - 1, len(t["p_conducted"]), ratio))
    rr = np.asarray(t["rr_ms"])
    assert set(np.round(rr / pp).astype(int)) == ({1, 2} if ratio > 2 else {2})
    assert np.allclose(rr / pp, np.round(rr / pp))  # the pause is exactly two P-P


@pytest.mark.parametrize("escape,lo,hi,wide", [("junctional", 40, 60, False),
                                               ("ventricular", 20, 40, True)])
def test_complete_block_dissociates_p_and_qrs(escape, lo, hi, wide):
    ecg = gen(av_block="complete", escape=escape, heart_rate=80, duration_s=20, seed=1)
    t = ecg.truth
    assert t["rhythm"] == "complete-av-block" and t["escape"] == escape
    assert not any(t["p_conducted"]) and set(t["beat_kinds"]) == {"escape"}
    assert np.allclose(np.diff(t["p_onsets_ms"]), 750)  # atrial rate 80
    assert t["atrial_rate"] == pytest.approx(80)
    assert lo <= t["ventricular_rate"] <= hi and np.ptp(t["rr_ms"]) < 1e-6
    assert (t["qrs_ms"] >= 120) == wide and "pr_ms" not in t
    # the interval from the last P to each QRS wanders: no fixed relationship
    p = np.asarray(t["p_onsets_ms"])
    apparent = [q - p[p < q].max() for q in t["qrs_onsets_ms"] if (p < q).any()]
    assert np.ptp(apparent) > 150


def test_complete_block_rates_can_be_set():
    t = gen(av_block="complete", atrial_rate=100, escape_rate=55, heart_rate=70).truth
    assert t["atrial_rate"] == pytest.approx(100) and t["ventricular_rate"] == pytest.approx(55)


# --- junctional and paced rhythms -----------------------------------------------------------


@pytest.mark.parametrize("rate,label", [(45, "junctional"), (80, "accelerated-junctional")])
def test_junctional_rhythm_is_regular_narrow_without_a_p_before_the_qrs(rate, label):
    t = gen(rhythm="junctional", heart_rate=rate).truth
    assert t["rhythm"] == label and set(t["beat_kinds"]) == {"junctional"}
    assert t["p_onsets_ms"] == [] and np.ptp(t["rr_ms"]) < 1e-6 and t["qrs_ms"] < 110


def test_junctional_retrograde_p_follows_the_qrs_inverted_inferiorly():
    ecg = gen(rhythm="junctional", heart_rate=50, retrograde_p=True, **CLEAN)
    t = ecg.truth
    assert set(t["p_kinds"]) == {"retrograde"} and not any(t["p_conducted"])
    assert t["rp_ms"] > t["qrs_ms"]
    for q, p in zip(t["qrs_onsets_ms"], t["p_onsets_ms"], strict=True):
        assert p - q == pytest.approx(t["rp_ms"])
    p = t["p_onsets_ms"][2]
    for lead in ("II", "III", "aVF"):  # below the ST level it sits on
        assert window(ecg, lead, p, 60).min() - window(ecg, lead, p - 4, 2).mean() < -0.05
    assert window(ecg, "aVR", p, 60).max() - window(ecg, "aVR", p - 4, 2).mean() > 0.03


def spikes_in(ecg: synthetic.SyntheticEcg) -> list[tuple[float, float]]:
    """(amplitude, width ms) of every spike in every lead, measured on the signal."""
    out = []
    for s in ecg.truth["pacing_spike_samples"]:
        seg = ecg.signals_mv[:, max(s - 5, 0):s + 6]
        ref = np.median(ecg.signals_mv[:, max(s - 8, 0):max(s - 3, 1)], axis=1)
        dev = np.abs(seg - ref[:, None])
        for lead in range(12):
            out.append((dev[lead].max(), (dev[lead] > 1.0).sum() * 1000 / ecg.fs))
    return out


@pytest.mark.parametrize("mode", ["ventricular", "atrial", "dual"])
def test_pacing_spikes_are_tall_narrow_and_in_every_lead(mode):
    ecg = gen(pacing=mode, heart_rate=70)
    t = ecg.truth
    assert t["rhythm"] == f"paced-{mode}" and t["pacing_spikes_ms"]
    measured = spikes_in(ecg)
    assert len(measured) == 12 * len(t["pacing_spikes_ms"])
    assert all(amp > 2.0 and 0 < width < 3.0 for amp, width in measured)
    assert t["pacing_spike_width_ms"] < 3.0


def test_ventricular_pacing_spike_then_wide_lbbb_like_qrs():
    t = gen(pacing="ventricular", heart_rate=60).truth
    assert set(t["pacing_spike_chambers"]) == {"V"} and set(t["beat_kinds"]) == {"paced"}
    assert t["qrs_ms"] >= 120 and t["qrs_axis"] < -30  # RV apex: superior axis
    for spike, q in zip(t["pacing_spikes_ms"], t["qrs_onsets_ms"], strict=True):
        assert 0 < q - spike <= 20
    assert t["p_onsets_ms"] == [] and np.allclose(t["rr_ms"], 1000)


def test_atrial_pacing_spike_then_p_then_conducted_qrs():
    t = gen(pacing="atrial", heart_rate=75, pr_ms=170).truth
    assert set(t["pacing_spike_chambers"]) == {"A"} and set(t["p_kinds"]) == {"paced"}
    assert all(t["p_conducted"]) and set(t["beat_kinds"]) == {"normal"}
    assert np.allclose(t["pr_ms_per_beat"], 170) and t["qrs_ms"] < 110
    for spike, p in zip(t["pacing_spikes_ms"], t["p_onsets_ms"], strict=True):
        assert 0 < p - spike <= 20


def test_dual_chamber_pacing_has_both_spikes_at_the_av_delay():
    t = gen(pacing="dual", heart_rate=70, pr_ms=180).truth
    chambers, times = t["pacing_spike_chambers"], t["pacing_spikes_ms"]
    assert chambers == ["A", "V"] * (len(chambers) // 2)
    assert np.allclose(np.diff(times)[::2], 180) and t["av_delay_ms"] == 180
    assert set(t["beat_kinds"]) == {"paced"} and not any(t["p_conducted"])
    for v, q in zip(times[1::2], t["qrs_onsets_ms"], strict=True):
        assert 0 < q - v <= 20


def test_vvi_pacing_over_af_draws_f_waves():
    t = gen(pacing="ventricular", fibrillation_mv=0.1).truth
    assert 4 <= t["f_wave_hz"] <= 9


# --- noise, wander, Holter excerpt, bad specs -------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(rhythm="af"), dict(av_block="mobitz2")])
def test_noise_and_wander_are_added_as_asked(kw):
    clean = gen(seed=7, **CLEAN, **kw).signals_mv
    again = gen(seed=7, **CLEAN, **kw).signals_mv
    assert np.array_equal(clean, again)
    noisy = gen(seed=7, noise_mv=0.05, wander_mv=0.0, **kw).signals_mv - clean
    assert noisy.std() == pytest.approx(0.05, rel=0.05)
    wander = gen(seed=7, noise_mv=0.0, wander_mv=0.3, **kw).signals_mv - clean
    assert np.allclose(wander, wander[0])  # the same in every lead
    assert np.abs(wander).max() == pytest.approx(0.3, rel=0.02)
    spectrum = np.abs(np.fft.rfft(wander[0]))
    freqs = np.fft.rfftfreq(wander.shape[1], 1 / 500)
    assert freqs[np.argmax(spectrum)] == pytest.approx(0.25, abs=0.11)


@pytest.mark.parametrize("fs", [None, 360, 250])
def test_holter_excerpt_gives_mlii_and_v5(fs):
    ecg = gen(heart_rate=75, premature={4: "pvc"}, pacing=None)
    h = synthetic.holter_excerpt(ecg, fs=fs)
    new_fs = fs or 500
    assert h.leads == ["MLII", "V5"] and h.fs == new_fs
    assert h.signals_mv.shape == (2, int(10 * new_fs))
    if fs is None:
        assert np.array_equal(h.signals_mv[0], ecg.signals_mv[LEAD["II"]])
    assert h.truth["r_peaks"] == list(h.r_peaks)
    assert h.truth["qrs_onsets_ms"] == ecg.truth["qrs_onsets_ms"]
    assert h.truth["beat_kinds"] == ecg.truth["beat_kinds"]
    for r, r0 in zip(h.r_peaks, ecg.r_peaks, strict=True):
        assert abs(r / new_fs - r0 / 500) <= 1.5 / new_fs


def test_holter_excerpt_rescales_pacing_spikes():
    ecg = gen(pacing="ventricular")
    h = synthetic.holter_excerpt(ecg, fs=250)
    assert [s * 2 for s in h.truth["pacing_spike_samples"]] == pytest.approx(
        ecg.truth["pacing_spike_samples"], abs=1)


@pytest.mark.parametrize("kw", [
    dict(rhythm="af", av_block="mobitz1"),
    dict(av_block="mobitz2", av_ratio=1),
    dict(av_block="complete", escape_rate=90, heart_rate=70),
    dict(rhythm="flutter", conduction=5),
    dict(rhythm="flutter", premature={3: "pvc"}),
    dict(rhythm="af", premature={3: "pac"}),
    dict(premature={3: "aberrant"}),
    dict(rhythm="torsade"),
    dict(pacing="biventricular"),
])
def test_unsupported_specs_are_refused(kw):
    with pytest.raises(ValueError):
        gen(**kw)
