"""Rhythm, ectopy, conduction and QT rules on synthetic records of known truth (with noise and
baseline wander), and on the real records whose truth is known (MIT-BIH 100's beat labels)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from models.ecg import synthetic
from models.ecg.interpret import interpret
from models.ecg.measure import analyse
from models.ecg.signal import EcgRecord, read_ecg, standardise
from tests.conftest import shared_file

QUIET = dict(noise_mv=0.01, wander_mv=0.05)
NOISY = dict(noise_mv=0.03, wander_mv=0.3)

# name -> generator spec, the rhythm statement expected, statements that must not appear
RHYTHMS: dict[str, tuple[dict, str, set[str]]] = {
    "sinus": (dict(heart_rate=72, qt_ms=390), "ecg-sinus-rhythm", {"ecg-atrial-fibrillation"}),
    "sinus-tachycardia-frequent-pacs": (
        dict(heart_rate=125, qt_ms=300, pr_ms=140, pac_every=4), "ecg-sinus-tachycardia",
        {"ecg-atrial-fibrillation", "ecg-rhythm-undetermined",
         "ecg-premature-ventricular-complex"}),
    "sinus-tachycardia-pac-trigeminy": (
        dict(heart_rate=115, qt_ms=310, pr_ms=140, pac_every=3), "ecg-sinus-tachycardia",
        {"ecg-atrial-fibrillation", "ecg-rhythm-undetermined"}),
    "atrial-fibrillation": (dict(rhythm="af", heart_rate=90, qt_ms=360),
                            "ecg-atrial-fibrillation",
                            {"ecg-sinus-rhythm", "ecg-premature-atrial-complex"}),
    "atrial-fibrillation-slow": (dict(rhythm="af", heart_rate=65, qt_ms=380),
                                 "ecg-atrial-fibrillation", {"ecg-sinus-rhythm"}),
    "flutter-4-to-1": (dict(rhythm="flutter", conduction=4, qt_ms=360), "ecg-atrial-flutter",
                       {"ecg-sinus-rhythm", "ecg-atrial-fibrillation"}),
    "flutter-variable": (dict(rhythm="flutter", conduction="variable", qt_ms=340),
                         "ecg-atrial-flutter",
                         {"ecg-atrial-fibrillation", "ecg-premature-atrial-complex"}),
    "mobitz-1": (dict(heart_rate=80, av_block="mobitz1", av_ratio=4, qt_ms=380),
                 "ecg-second-degree-av-block-mobitz-1",
                 {"ecg-atrial-fibrillation", "ecg-second-degree-av-block-mobitz-2"}),
    "mobitz-2": (dict(heart_rate=80, av_block="mobitz2", av_ratio=4, qt_ms=380),
                 "ecg-second-degree-av-block-mobitz-2",
                 {"ecg-atrial-fibrillation", "ecg-second-degree-av-block-mobitz-1"}),
    "complete-block-narrow-escape": (
        dict(heart_rate=80, av_block="complete", escape="junctional", qt_ms=440),
        "ecg-third-degree-av-block", {"ecg-junctional-rhythm", "ecg-sinus-rhythm"}),
    "complete-block-wide-escape": (
        dict(heart_rate=80, av_block="complete", escape="ventricular", qt_ms=460),
        "ecg-third-degree-av-block", {"ecg-sinus-rhythm", "ecg-atrial-fibrillation"}),
    "junctional": (dict(rhythm="junctional", heart_rate=50, qt_ms=420), "ecg-junctional-rhythm",
                   {"ecg-atrial-fibrillation", "ecg-sinus-bradycardia"}),
    "accelerated-junctional-retrograde-p": (
        dict(rhythm="junctional", heart_rate=75, qt_ms=400, retrograde_p=True),
        "ecg-junctional-rhythm", {"ecg-sinus-rhythm"}),
    "paced-ventricular": (dict(pacing="ventricular", heart_rate=70, qt_ms=440),
                          "ecg-paced-rhythm", {"ecg-lbbb", "ecg-ivcd", "ecg-signal-quality"}),
    "paced-atrial": (dict(pacing="atrial", heart_rate=70, qt_ms=400), "ecg-paced-rhythm",
                     {"ecg-sinus-rhythm", "ecg-signal-quality"}),
    "paced-dual": (dict(pacing="dual", heart_rate=70, qt_ms=440), "ecg-paced-rhythm",
                   {"ecg-lbbb", "ecg-signal-quality"}),
}


def _run(spec: dict, seed: int, noise: dict):
    ecg = synthetic.generate(seed=seed, **{**noise, **spec})
    a = analyse(EcgRecord(ecg.signals_mv, ecg.fs, list(ecg.leads), "synthetic"))
    return ecg, a, interpret(a)


def _stated(out) -> set[str]:
    return out.codes(("present", "uncertain"))


@pytest.mark.parametrize("noise", [QUIET, NOISY], ids=["quiet", "noisy"])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(RHYTHMS))
def test_rhythm_is_stated_and_nothing_it_excludes(name, seed, noise):
    spec, expected, forbidden = RHYTHMS[name]
    _, _, out = _run(spec, seed, noise)
    assert expected in out.codes(), (name, sorted(_stated(out)))
    assert not (_stated(out) & forbidden), (name, sorted(_stated(out)))
    finding = next(f for f in out.findings if f.code.value == expected)
    assert finding.criteria and finding.evidence and finding.knowledge


def test_second_degree_block_names_the_blocked_p_waves_and_the_pr_change():
    ecg, a, out = _run(dict(heart_rate=80, av_block="mobitz1", av_ratio=4, qt_ms=380), 1, QUIET)
    blocked = [t for t, c in zip(ecg.truth["p_onsets_ms"], ecg.truth["p_conducted"],
                                 strict=True) if not c]
    last_qrs = max(ecg.truth["qrs_onsets_ms"])
    assert len(a.pauses) == len([t for t in blocked if t < last_qrs])  # a pause that ends
    for pause in a.pauses:
        assert pause["pr_before"] - pause["pr_after"] >= 20
        assert min(abs(pause["time_s"] * 1000 - t) for t in blocked) < 150
    f = next(f for f in out.findings if f.code.value == "ecg-second-degree-av-block-mobitz-1")
    assert "conducted nothing" in f.criteria and "m:dropped_beat_count" in f.evidence


def test_flutter_states_its_atrial_rate_and_conduction():
    _, a, out = _run(dict(rhythm="flutter", conduction=4, qt_ms=360), 1, QUIET)
    f = next(f for f in out.findings if f.code.value == "ecg-atrial-flutter")
    assert "4:1 AV conduction" in f.label
    assert 280 <= 60000 / a.values["flutter_cycle"] <= 320


def test_complete_block_escape_width_is_in_the_label():
    _, _, narrow = _run(dict(heart_rate=80, av_block="complete", escape="junctional"), 1, QUIET)
    _, _, wide = _run(dict(heart_rate=80, av_block="complete", escape="ventricular",
                           qt_ms=460), 1, QUIET)
    label = {f.code.value: f.label for f in narrow.findings}["ecg-third-degree-av-block"]
    assert "narrow-QRS escape" in label
    label = {f.code.value: f.label for f in wide.findings}["ecg-third-degree-av-block"]
    assert "wide-QRS (ventricular) escape" in label


@pytest.mark.parametrize("noise", [QUIET, NOISY], ids=["quiet", "noisy"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_premature_beats_are_labelled_by_their_origin(seed, noise):
    kinds = {"pvc": "V", "pac": "A", "pac-aberrant": "A"}
    ecg, a, out = _run(dict(heart_rate=75, premature={3: "pac", 6: "pvc", 9: "pac-aberrant"}),
                       seed, noise)
    got = [b.kind for b in a.beats]
    for i, kind in enumerate(ecg.truth["beat_kinds"]):
        assert got[i] == kinds.get(kind, "N"), (i, kind, "".join(got))
    assert a.beats[3].premature_p and a.beats[9].premature_p and not a.beats[6].premature_p
    assert a.beats[6].compensatory is True
    codes = out.codes()
    assert {"ecg-premature-ventricular-complex", "ecg-premature-atrial-complex",
            "ecg-sinus-rhythm"} <= codes
    pac = next(f for f in out.findings if f.code.value == "ecg-premature-atrial-complex")
    assert "aberrant conduction" in pac.criteria


def test_a_wide_beat_in_af_is_uncertain():
    _, a, out = _run(dict(rhythm="af", heart_rate=90, qt_ms=360, premature={6: "aberrant"}),
                     1, QUIET)
    assert a.beats[6].kind == "V"
    wide = next(f for f in out.findings if f.code.value == "ecg-premature-ventricular-complex")
    assert wide.state == "uncertain" and "aberrant" in wide.criteria
    assert "ecg-premature-atrial-complex" not in _stated(out)


def test_frequent_pacs_are_called_frequent():
    _, _, out = _run(dict(heart_rate=125, qt_ms=300, pr_ms=140, pac_every=4), 1, QUIET)
    pac = next(f for f in out.findings if f.code.value == "ecg-premature-atrial-complex")
    assert pac.label.startswith("Frequent premature atrial complexes")


# --- conduction --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("spec,expected", [
    (dict(heart_rate=75, qrs_ms=110, morphology="rbbb", qrs_axis=30), "ecg-incomplete-rbbb"),
    (dict(heart_rate=80, qrs_ms=130, qt_ms=420, morphology="rbbb", qrs_axis=30), "ecg-rbbb"),
    (dict(heart_rate=75, qrs_ms=150, qt_ms=440, morphology="lbbb", qrs_axis=0), "ecg-lbbb"),
    (dict(heart_rate=75, qrs_ms=135, qt_ms=440), "ecg-ivcd"),
    (dict(heart_rate=75, qrs_ms=118, qt_ms=420), "ecg-ivcd"),
], ids=["incomplete-rbbb", "rbbb", "lbbb", "ivcd-135", "ivcd-118"])
def test_conduction_statement(spec, expected, seed):
    _, a, out = _run(spec, seed, NOISY)
    conduction = out.codes() & {"ecg-incomplete-rbbb", "ecg-rbbb", "ecg-lbbb", "ecg-ivcd"}
    assert conduction == {expected}, (a.values["qrs_duration"], conduction)
    f = next(f for f in out.findings if f.code.value == expected)
    assert "m:qrs_duration" in f.evidence and "QRS" in f.criteria
    if expected in ("ecg-rbbb", "ecg-incomplete-rbbb"):
        assert "m:terminal_s_duration:I" in f.evidence and "m:terminal_s_duration:V6" in f.evidence
        assert "R'" in f.criteria or "broad R" in f.criteria


def test_narrow_qrs_states_no_conduction_delay():
    _, _, out = _run(dict(heart_rate=72, qrs_ms=90), 1, NOISY)
    assert not out.codes() & {"ecg-incomplete-rbbb", "ecg-rbbb", "ecg-lbbb", "ecg-ivcd"}


# --- QT ------------------------------------------------------------------------------------------

def test_prolonged_qt_names_its_correction():
    _, _, out = _run(dict(heart_rate=70, qt_ms=480), 1, QUIET)
    f = next(f for f in out.findings if f.code.value == "ecg-prolonged-qt")
    assert f.state == "present" and "Framingham" in f.criteria
    assert "m:qtc_framingham" in f.evidence


def test_prolonged_qt_with_wide_qrs_says_how_it_was_adjusted():
    _, a, out = _run(dict(heart_rate=70, qrs_ms=150, qt_ms=560, morphology="lbbb", qrs_axis=0),
                     1, QUIET)
    f = next(f for f in out.findings if f.code.value == "ecg-prolonged-qt")
    assert "less the QRS widening beyond 100 ms" in f.criteria
    qrs = a.values["qrs_duration"]
    adjusted = a.values["qt_interval"] - (qrs - 100) + 154 * (1 - a.values["rr_interval"] / 1000)
    assert f"{adjusted:.0f} ms" in f.criteria


def test_qt_in_af_is_never_more_than_uncertain():
    _, _, out = _run(dict(rhythm="af", heart_rate=80, qt_ms=520), 1, QUIET)
    states = [f.state for f in out.findings if f.code.value == "ecg-prolonged-qt"]
    assert states == ["uncertain"]


def test_wide_qrs_alone_does_not_prolong_the_qt():
    # QRS 150 ms with a normal JT: the unadjusted QT would cross the cut-off
    _, _, out = _run(dict(heart_rate=70, qrs_ms=150, qt_ms=470, morphology="lbbb", qrs_axis=0),
                     1, QUIET)
    assert "ecg-prolonged-qt" not in _stated(out)


# --- real records ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mitbih_100():
    wfdb = pytest.importorskip("wfdb")
    base = shared_file("ecg/wfdb/100.hea").with_suffix("")
    return read_ecg(str(base) + ".hea"), wfdb.rdann(str(base), "atr")


def test_mitbih_100_premature_atrial_beats_are_atrial(mitbih_100):
    """Record 100 has 33 premature atrial beats (A), one PVC (V) and 2239 normal beats."""
    rec, ann = mitbih_100
    a = analyse(rec)
    sym = np.asarray(ann.symbol)
    keep = np.isin(sym, list("NAV"))
    ref = np.round(ann.sample[keep] * rec.fs / ann.fs).astype(int)
    det = np.asarray([b.r for b in a.beats])
    pairs = Counter()
    for r, s in zip(ref, sym[keep], strict=True):
        k = int(np.argmin(np.abs(det - r)))
        pairs[(str(s), a.beats[k].kind if abs(det[k] - r) <= 0.15 * rec.fs else "-")] += 1
    assert pairs[("A", "V")] == 0 and pairs[("N", "V")] == 0
    assert pairs[("A", "A")] >= 0.8 * 33
    assert pairs[("V", "V")] == 1
    assert pairs[("N", "A")] <= 5


def test_mitbih_100_excerpts_are_sinus_never_af(mitbih_100):
    """10-s excerpts of a Holter recording whose beats are all sinus or PACs: a rhythm is
    stated for each, and it is never atrial fibrillation."""
    rec, _ = mitbih_100
    n = int(10 * rec.fs)
    rhythms = Counter()
    for start in range(0, rec.n_samples - n, 3 * n):
        ex = EcgRecord(rec.signals_mv[:, start: start + n], rec.fs, list(rec.leads), "excerpt")
        codes = _stated(interpret(analyse(ex)))
        assert "ecg-atrial-fibrillation" not in codes, start / rec.fs
        rhythms["sinus" if "ecg-sinus-rhythm" in codes else "other"] += 1
    assert rhythms["other"] <= 0.05 * sum(rhythms.values()), rhythms


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("spec,expected,forbidden", [
    (dict(heart_rate=72), "ecg-sinus-rhythm", {"ecg-atrial-fibrillation"}),
    (dict(heart_rate=65, noise_mv=0.04, wander_mv=0.4), "ecg-sinus-rhythm",
     {"ecg-atrial-fibrillation"}),
    (dict(heart_rate=80, premature={4: "pac", 8: "pac"}), "ecg-premature-atrial-complex",
     {"ecg-atrial-fibrillation", "ecg-premature-ventricular-complex"}),
    (dict(heart_rate=80, premature={4: "pvc"}), "ecg-premature-ventricular-complex",
     {"ecg-atrial-fibrillation", "ecg-premature-atrial-complex"}),
    (dict(rhythm="af", heart_rate=90, qt_ms=360), "ecg-atrial-fibrillation",
     {"ecg-sinus-rhythm"}),
], ids=["sinus", "noisy-sinus", "pacs", "pvc", "af"])
def test_two_lead_holter_excerpts(spec, expected, forbidden, seed):
    """MLII and V5 at 360 Hz, as Holter recorders store them, read the way a file is read."""
    h = synthetic.holter_excerpt(synthetic.generate(seed=seed, **spec), fs=360)
    rec = standardise(EcgRecord(h.signals_mv, h.fs, list(h.leads), "holter"))
    out = interpret(analyse(rec))
    assert expected in out.codes() and not (_stated(out) & forbidden), sorted(_stated(out))
