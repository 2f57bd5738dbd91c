"""R peaks beside electrode pops: a one-sample jump of tens of millivolts followed by a baseline
step that recovers slowly (the pops of the CPSC 2019 records). Band-passed, the step looks like
a QRS; the rhythm says where the beat is (``rpeaks._rhythm_place``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.ecg import rpeaks, synthetic
from models.ecg.filters import bandpass

FS = 500.0


def _with_pop(x: np.ndarray, at: int, step_mv: float) -> np.ndarray:
    y = x.copy()
    y[at] += 32.0
    t = np.arange(y.size - at - 1) / FS
    y[at + 1:] += step_mv * np.exp(-t / 0.3)
    return y


def _lead_ii() -> synthetic.SyntheticEcg:
    return synthetic.generate(heart_rate=68.0, qrs_scale=0.5, seed=3)


@pytest.mark.parametrize("before_ms", [140, 300])
def test_a_pop_before_a_beat_neither_hides_it_nor_counts(before_ms):
    ecg = _lead_ii()
    ii = ecg.signals_mv[ecg.leads.index("II")]
    truth = ecg.r_peaks[(ecg.r_peaks > FS) & (ecg.r_peaks < ii.size - FS)]
    beat = int(truth[truth.size // 2])
    x = _with_pop(ii, beat - int(before_ms * FS / 1000), -3.5)
    found = rpeaks.detect(x[None], FS, ["II"]).peaks
    tp, fn, fp = rpeaks.match_beats(truth, found[(found > FS - 40) & (found < x.size - FS + 40)],
                                    int(0.075 * FS))
    assert (fn, fp) == (0, 0), (found.tolist(), truth.tolist())


@pytest.mark.parametrize("qrs_ms,scale", [(60.0, 3.0), (90.0, 1.0)])
def test_no_beat_of_a_clean_record_is_taken_for_a_pop(qrs_ms, scale):
    # A tall narrow R departs from its 10-ms running median by far less than POP_FACTOR times
    # the median QRS deflection (the 1-40 Hz peak-to-peak within AMP_HALF_S of each R, as the
    # detector measures it), so clean beats are never judged by the rhythm alone.
    ecg = synthetic.generate(heart_rate=75.0, qrs_ms=qrs_ms, qrs_scale=scale, seed=1)
    ii = ecg.signals_mv[ecg.leads.index("II")]
    departure = np.abs(ii - rpeaks._despike(ii[None])[0])
    band = bandpass(rpeaks._despike(ii[None]), FS, 1.0, 40.0)[0]
    h = int(rpeaks.AMP_HALF_S * FS)
    deflection = np.median([np.ptp(band[r - h: r + h + 1]) for r in ecg.r_peaks
                            if h <= r < ii.size - h])
    assert departure.max() < 0.2 * rpeaks.POP_FACTOR * deflection
    found = rpeaks.detect(ii[None], FS, ["II"]).peaks
    assert rpeaks.match_beats(ecg.r_peaks, found, int(0.075 * FS))[1:] == (0, 0)
