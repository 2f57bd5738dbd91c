"""R-peak detection on the 50 CPSC 2019 records of ../shared/data (real, noisy, arrhythmic).

Scoring follows the official CPSC 2019 rule (the challenge's ``score_2019.py``): reference R
peaks count only from 0.5 s to 9.5 s of each 10-s record; a detection within 75 ms of a reference
peak is a true positive; a detection farther than 75 ms from every reference peak is a false
positive only inside [0.5 s + 75 ms, 9.5 s - 75 ms] (the record's edges are not scored). Beats are
matched one to one (``match_beats``); the challenge's own per-record score (1 / 0.7 / 0.3 / 0)
is not used: we report aggregate sensitivity and positive predictivity over all records.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.ecg import rpeaks
from tests.conftest import shared_file

FS = 500.0
TOLERANCE_S = 0.075  # the CPSC 2019 scoring tolerance
EDGE_S = 0.5  # the challenge ignores the first and last 0.5 s


def _records():
    from scipy.io import loadmat

    folder = shared_file("ecg/cpsc2019/data")
    out = []
    for path in sorted(folder.glob("data_*.mat")):
        key = path.stem.split("_")[1]
        ref = loadmat(str(folder.parent / "ref" / f"R_{key}.mat"))["R_peak"].ravel()
        out.append((key, loadmat(str(path))["ecg"][:, 0].astype(float), ref.astype(int)))
    return out


def cpsc_score(reference: np.ndarray, detected: np.ndarray, n: int) -> tuple[int, int, int]:
    """(TP, FN, FP) of one record under the CPSC 2019 rule (module docstring)."""
    tol = int(round(TOLERANCE_S * FS))
    lo, hi = EDGE_S * FS, n - EDGE_S * FS
    ref = reference[(reference >= lo) & (reference <= hi)]
    # A detection just outside the scored span may still match a reference inside it.
    near = detected[(detected >= lo - tol) & (detected <= hi + tol)]
    core = detected[(detected >= lo + tol) & (detected <= hi - tol)]
    tp, fn, _ = rpeaks.match_beats(ref, near, tol)
    fp = rpeaks.match_beats(ref, core, tol)[2]
    return tp, fn, fp


@pytest.fixture(scope="module")
def totals() -> tuple[int, int, int]:
    records = _records()
    assert len(records) == 50
    tp = fn = fp = 0
    for key, ecg, ref in records:
        found = rpeaks.detect(ecg[None], FS, ["II"])
        t, n, p = cpsc_score(ref, found.peaks, ecg.size)
        tp, fn, fp = tp + t, fn + n, fp + p
        if n or p:
            print(f"record {key}: TP {t}, FN {n}, FP {p}")
    print(f"CPSC 2019, 50 records: TP {tp}, FN {fn}, FP {fp}, Se {tp / (tp + fn):.2%}, "
          f"PPV {tp / (tp + fp):.2%}")
    return tp, fn, fp


def test_cpsc2019_sensitivity_and_positive_predictivity(totals):
    # The target. Measured: Se 99.15 %, PPV 99.01 % (TP 701, FN 6, FP 7) with the
    # rhythm placement of small detections and of electrode pops' steps; before it 98.9 % and
    # 98.6 % (TP 699, FN 8, FP 10), with wide beats kept where the rhythm needs them; 98.4 %
    # and 98.2 % with the T-wave test and the recentring of matched detections; 97.3 % and
    # 96.0 % with the template stage alone; 88.0 % and 87.9 % before the detector was made
    # robust. What is left: two stretches of motion artefact of 16 and 3 times the QRS
    # (00126, 00949), a beat at the record's edge, a small alternating beat and one small
    # beat among T waves of its size.
    tp, fn, fp = totals
    assert tp / (tp + fn) >= 0.99 and tp / (tp + fp) >= 0.99


def test_scoring_ignores_edges():
    ref = np.array([100, 1000, 2000, 4900])
    det = np.array([120, 1010, 1500, 2030, 4800, 4980])
    # 100 and 4900 are outside 0.5-9.5 s; 120, 4800 and 4980 are unscored edge detections.
    assert cpsc_score(ref, det, 5000) == (2, 0, 1)
