"""R-peak (QRS) detection: a multi-lead Pan-Tompkins-style detector.

Steps, after Pan & Tompkins (IEEE TBME 1985) with the multi-lead fusion of later work:

1. per lead: 5-15 Hz band-pass, derivative, squaring;
2. fusion: the sum of the energies of the usable leads, each clipped at four times its 99th
   percentile (an artefact burst cannot dominate; a QRS small in one lead is seen in others);
3. 150 ms moving-window integration;
4. candidate peaks at least 200 ms apart (refractory period), classified by adaptive signal and
   noise levels, with T-wave rejection (a candidate within 360 ms of the previous QRS whose
   slope is under half the previous QRS slope) and search-back with half the threshold when no
   QRS has been found for 1.66 mean RR intervals;
5. each detection is moved to the largest deflection of the reference lead within +-100 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

from models.ecg.filters import bandpass, moving_average

REFRACTORY_S = 0.2
T_WAVE_WINDOW_S = 0.36
MWI_S = 0.15
SEARCHBACK_FACTOR = 1.66
REFINE_S = 0.1


@dataclass
class RPeaks:
    """Detected R peaks (sample indices) and how they were found."""

    peaks: np.ndarray
    fs: float
    reference_lead: str | None = None
    leads_used: list[str] = field(default_factory=list)

    @property
    def rr_ms(self) -> np.ndarray:
        return np.diff(self.peaks) * 1000.0 / self.fs


def _energies(x: np.ndarray, fs: float) -> np.ndarray:
    """Per-lead QRS energy (leads x samples): 5-15 Hz band, derivative, square, clipped."""
    f = bandpass(x, fs, 5.0, 15.0)
    d = np.gradient(f, axis=-1) * fs  # mV/s
    e = d * d
    # Clipping keeps an artefact burst in one lead from outweighing every beat of the others;
    # the leads are then summed in their own units, so leads with steep QRS complexes lead and
    # leads dominated by slow T waves follow.
    cap = 4.0 * np.percentile(e, 99.0, axis=-1, keepdims=True)
    return np.where(cap > 0, np.minimum(e, cap), e)


def detect(signals_mv: np.ndarray, fs: float, leads: list[str] | None = None,
           usable: list[bool] | None = None) -> RPeaks:
    """R peaks of a leads x samples ECG. ``usable`` masks leads of poor quality."""
    sig = np.atleast_2d(np.asarray(signals_mv, dtype=np.float64))
    names = list(leads) if leads is not None else [f"ch{i}" for i in range(sig.shape[0])]
    idx = [i for i in range(sig.shape[0]) if usable is None or usable[i]]
    if not idx:
        idx = list(range(sig.shape[0]))
    n = sig.shape[1]
    if n < int(fs):
        return RPeaks(np.zeros(0, dtype=int), fs, None, [names[i] for i in idx])
    energies = _energies(sig[idx], fs)
    fused = energies.sum(axis=0)
    mwi = moving_average(fused, int(MWI_S * fs))
    slope = np.sqrt(fused)
    qrs = _classify(mwi, slope, fs)
    ref = _reference_lead(sig, idx, qrs, fs)
    peaks = _refine(sig[ref], qrs, fs) if qrs.size else qrs
    return RPeaks(peaks, fs, names[ref], [names[i] for i in idx])


def _classify(mwi: np.ndarray, slope: np.ndarray, fs: float) -> np.ndarray:
    refractory = int(REFRACTORY_S * fs)
    cand, _ = find_peaks(mwi, distance=max(refractory, 1))
    if cand.size == 0:
        return cand
    learn = mwi[: int(2 * fs)]
    spk = float(learn.max()) / 3.0
    npk = float(learn.mean()) / 2.0
    thr = npk + 0.25 * (spk - npk)
    half = int(0.075 * fs)

    def peak_slope(i: int) -> float:
        return float(slope[max(i - half, 0): i + 1].max())

    qrs: list[int] = []
    qrs_slopes: list[float] = []
    rr: list[int] = []
    last_checked = 0
    for c_i, c in enumerate(cand):
        val = float(mwi[c])
        # Search back for a missed beat when the gap has grown too long.
        if qrs and rr:
            recent = rr[-8:]
            rr_avg = sum(recent) / len(recent)
            if c - qrs[-1] > SEARCHBACK_FACTOR * rr_avg:
                lo, hi = qrs[-1] + refractory, c - refractory
                pool = [k for k in cand[last_checked:c_i] if lo <= k <= hi
                        and mwi[k] > 0.5 * thr]
                if pool:
                    best = int(max(pool, key=lambda k: mwi[k]))
                    rr.append(best - qrs[-1])
                    qrs.append(best)
                    qrs_slopes.append(peak_slope(best))
                    spk = 0.25 * float(mwi[best]) + 0.75 * spk
                    thr = npk + 0.25 * (spk - npk)
        if val > thr:
            if qrs and c - qrs[-1] < T_WAVE_WINDOW_S * fs:
                if c - qrs[-1] < refractory or peak_slope(c) < 0.5 * qrs_slopes[-1]:
                    npk = 0.125 * val + 0.875 * npk
                    thr = npk + 0.25 * (spk - npk)
                    continue
            if qrs:
                rr.append(c - qrs[-1])
            qrs.append(int(c))
            qrs_slopes.append(peak_slope(c))
            spk = 0.125 * val + 0.875 * spk
            last_checked = c_i + 1
        else:
            npk = 0.125 * val + 0.875 * npk
        thr = npk + 0.25 * (spk - npk)
    return np.asarray(qrs, dtype=int)


def _reference_lead(sig: np.ndarray, idx: list[int], qrs: np.ndarray, fs: float) -> int:
    """The usable lead with the largest median QRS deflection relative to its noise."""
    if qrs.size == 0 or len(idx) == 1:
        return idx[0]
    w = int(REFINE_S * fs)
    f = bandpass(sig[idx], fs, 1.0, 40.0)
    scores = []
    for k in range(len(idx)):
        amps = [np.ptp(f[k, max(q - w, 0): q + w]) for q in qrs[:200]]
        noise = float(np.median(np.abs(np.diff(f[k])))) + 1e-9
        scores.append(float(np.median(amps)) / noise)
    return idx[int(np.argmax(scores))]


def _refine(x: np.ndarray, qrs: np.ndarray, fs: float) -> np.ndarray:
    f = bandpass(x, fs, 1.0, 40.0)
    w = int(REFINE_S * fs)
    padded = np.pad(f, w, mode="edge")
    segs = padded[qrs[:, None] + np.arange(0, 2 * w)[None, :]]  # window [q - w, q + w)
    # The dominant polarity of the reference lead decides whether R is a maximum or a minimum.
    med = np.median(segs, axis=1, keepdims=True)
    pos = float(np.median((segs - med).max(axis=1)))
    neg = float(np.median((med - segs).max(axis=1)))
    sign = 1.0 if pos >= neg else -1.0
    peaks = qrs - w + np.argmax(sign * segs, axis=1)
    peaks = np.unique(np.clip(peaks, 0, f.size - 1))
    # Two detections refined onto the same complex: keep one.
    keep = [0]
    for k in range(1, peaks.size):
        if peaks[k] - peaks[keep[-1]] >= int(REFRACTORY_S * fs):
            keep.append(k)
    return peaks[keep]


def match_beats(reference: np.ndarray, detected: np.ndarray, tolerance: int) -> tuple[int, int,
                                                                                      int]:
    """Match detections to reference beats within ``tolerance`` samples (one-to-one).

    Returns (true positives, false negatives, false positives), as in ANSI/AAMI EC57.
    """
    ref = np.sort(np.asarray(reference, dtype=int))
    det = np.sort(np.asarray(detected, dtype=int))
    used = np.zeros(det.size, dtype=bool)
    tp = 0
    j = 0
    for r in ref:
        while j < det.size and det[j] < r - tolerance:
            j += 1
        # nearest unused detection within the window
        best, best_d = -1, tolerance + 1
        k = j
        while k < det.size and det[k] <= r + tolerance:
            if not used[k] and abs(det[k] - r) < best_d:
                best, best_d = k, abs(det[k] - r)
            k += 1
        if best >= 0:
            used[best] = True
            tp += 1
    return tp, int(ref.size - tp), int(det.size - tp)
