"""R peaks beside electrode pops: a one-sample jump of tens of millivolts followed by a baseline
step that recovers slowly (the pops of the CPSC 2019 records). Band-passed, the step looks like
a QRS; the rhythm says where the beat is (``rpeaks._rhythm_place``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.ecg import rpeaks, synthetic

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


def test_pop_size_is_relative_to_the_qrs():
    # A tall narrow R departs from its 10-ms running median by well under POP_FACTOR times its
    # deflection: no beat of a clean record is taken for a pop.
    ecg = synthetic.generate(heart_rate=75.0, qrs_ms=70.0, qrs_scale=2.0, seed=1)
    ii = ecg.signals_mv[ecg.leads.index("II")]
    departure = np.abs(ii - rpeaks._despike(ii[None])[0]).max()
    assert departure < rpeaks.POP_FACTOR * np.ptp(ii) / 4
    found = rpeaks.detect(ii[None], FS, ["II"]).peaks
    assert rpeaks.match_beats(ecg.r_peaks, found, int(0.075 * FS))[1:] == (0, 0)
