"""R-peak detection against the reference beat annotations of MIT-BIH record 100."""

from __future__ import annotations

import numpy as np

from models.ecg import rpeaks
from models.ecg.signal import read_ecg
from tests.conftest import shared_file

# Beat annotation codes of the MIT-BIH Arrhythmia Database (ANSI/AAMI EC57); rhythm changes
# "+", signal quality "~", comments and other non-beat annotations are left out.
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")
TOLERANCE_S = 0.15




def test_record_100_sensitivity_and_positive_predictivity():
    import wfdb

    hea = shared_file("ecg/wfdb/100.hea")
    rec = read_ecg(hea)  # 360 Hz -> 500 Hz, MLII and V5
    ann = wfdb.rdann(str(hea.with_suffix("")), "atr")
    ref = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True)
                    if sym in BEAT_SYMBOLS])
    ref = np.round(ref * rec.fs / ann.fs).astype(int)
    found = rpeaks.detect(rec.signals_mv, rec.fs, rec.leads)
    tp, fn, fp = rpeaks.match_beats(ref, found.peaks, int(TOLERANCE_S * rec.fs))
    se, ppv = tp / (tp + fn), tp / (tp + fp)
    print(f"record 100: {ref.size} reference beats, {found.peaks.size} detected, "
          f"Se {se:.4%}, PPV {ppv:.4%}")
    assert ref.size == 2273
    assert se >= 0.995 and ppv >= 0.995


def test_match_beats_counts_one_to_one():
    tp, fn, fp = rpeaks.match_beats(np.array([100, 200, 300]), np.array([102, 104, 390]), 10)
    assert (tp, fn, fp) == (1, 2, 2)


def test_flat_signal_has_no_beats():
    found = rpeaks.detect(np.zeros((2, 5000)), 500.0, ["I", "II"])
    assert found.peaks.size == 0
