"""Atrial activity over the whole record: P waves whether or not a QRS follows, flutter waves.

The rhythm rules need to know where the atria fire, not only where the ventricles do: a P wave
that conducts nothing (second-degree block), P waves that march through the QRS complexes at
their own rate (third-degree block), a premature P wave hidden in the previous T wave (a premature
atrial complex), or regular flutter waves near 300/min.

Method (``docs/ecg.md``, section 2):

- **QRST cancellation.** The median QRS-T complex of the dominant beats (from just before QRS
  onset to just after T end) is subtracted at every beat, scaled by least squares per lead, so
  ventricular activity leaves a small residue and every P wave stays, including one on a T wave.
- **P waves** are the peaks of the residual, smoothed over ``SMOOTH_MS`` and combined over the
  usable leads as a root mean square weighted by each lead's noise: at least ``P_EVENT_MIN_MV``
  and ``P_EVENT_NOISE_RATIO`` robust deviations above its median, at least
  ``P_EVENT_REFRACTORY_MS`` apart; the QRS itself is not searched (its residue cannot be told
  from a P wave).
- **Flutter waves**: the autocorrelation of the QRS-blanked diagnostic signal of the inferior leads
  and V1, band-passed 3-30 Hz (the T wave's slow content removed), at lags of 170-260 ms
  (230-350/min). Flutter is regular atrial activity without an
  isoelectric line, so the correlation at the atrial cycle is high and is not a sub-harmonic of the
  ventricular cycle alone (sinus tachycardia's P and T waves do not repeat at half the RR).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import uniform_filter1d

from models.ecg.filters import bandpass

P_EVENT_MIN_MV = 0.03  # smallest residual deflection counted as a P wave (MEDGATE)
P_EVENT_NOISE_RATIO = 4.0  # ...and this many times the residual's robust noise (MEDGATE)
P_EVENT_REFRACTORY_MS = 160.0  # two atrial activations are at least this far apart (flutter: 170+)
SMOOTH_MS = 20.0  # half a P wave: a biphasic P (+/-) is not averaged away
QRS_BLANK_MS = (60.0, 80.0)  # not searched: this long before / after each R peak
ATRIAL_LEADS = ("II", "V1", "III", "aVF", "I", "MLII", "V5", "V2")
FLUTTER_LEADS = ("II", "III", "aVF", "V1")
FLUTTER_CYCLE_MS = (170.0, 260.0)  # atrial cycle of flutter: 230-350/min (ESC 2019 SVT)
FLUTTER_BAND_HZ = (3.0, 30.0)


@dataclass
class AtrialActivity:
    """Atrial events (sample indices into the record) and how they were found."""

    events: np.ndarray
    lead: str | None
    amplitude_mv: float = 0.0  # median event size on the detection signal
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each event's size (mV)
    noise_mv: float = 0.0
    residual: np.ndarray | None = field(default=None, repr=False)


def qrst_residual(diag: np.ndarray, peaks: np.ndarray, template: np.ndarray, r: int,
                  start: int, stop: int, qrs_end: int,
                  skip: set[int] | frozenset[int] = frozenset()) -> np.ndarray:
    """``diag`` with the median QRS-T (``template[:, start:stop]``, R at ``r``) subtracted at
    every R peak but those in ``skip`` (beats unlike the template). The QRS part is scaled per
    lead and beat by least squares (its amplitude changes with respiration); the ST-T part is
    not, so a P wave riding on a T wave is not fitted away with it."""
    out = np.array(diag, dtype=np.float64, copy=True)
    n = diag.shape[1]
    seg = template[:, start:stop]
    seg = seg - seg[:, :1]  # starts on the PR level of the template: no step where it begins
    split = min(max(qrs_end - start, 1), seg.shape[1])
    q = seg[:, :split]
    norm = np.einsum("ij,ij->i", q, q) + 1e-12
    for k, p in enumerate(np.asarray(peaks, dtype=int)):
        a, b = p - r + start, p - r + stop
        if k in skip or a < 0 or b > n:
            continue
        x = out[:, a: a + split] - out[:, a: a + 1]
        gain = np.clip(np.einsum("ij,ij->i", x, q) / norm, 0.5, 1.5)
        out[:, a: a + split] -= gain[:, None] * q
        out[:, a + split: b] -= seg[:, split:] + (gain[:, None] - 1.0) * q[:, -1:]
    return out


def _atrial_lead(leads: list[str], usable: list[bool], prefer: str | None) -> int | None:
    ok = [i for i, u in enumerate(usable) if u] or list(range(len(leads)))
    if prefer in leads and leads.index(prefer) in ok:
        return leads.index(prefer)
    for name in ATRIAL_LEADS:
        if name in leads and leads.index(name) in ok:
            return leads.index(name)
    return ok[0] if ok else None


def atrial_events(residual: np.ndarray, fs: float, leads: list[str], usable: list[bool],
                  peaks: np.ndarray, prefer: str | None = None,
                  blank_spans: list[tuple[int, int]] | None = None) -> AtrialActivity:
    """P waves in the QRST-cancelled residual: peaks of the noise-weighted root mean square of
    all usable leads (a P wave too small to see in one lead adds up over several, whatever its
    polarity in each). ``blank_spans`` (sample ranges, e.g. the QRS-T of beats that were not
    cancelled) are not searched; ``prefer`` names the lead reported as the atrial lead."""
    use = [i for i, u in enumerate(usable) if u] or list(range(len(leads)))
    k = _atrial_lead(leads, usable, prefer)
    n = residual.shape[1]
    if k is None or n < int(fs):
        return AtrialActivity(np.zeros(0, dtype=int), None)
    ms = fs / 1000.0
    blank = np.zeros(n, dtype=bool)
    for p in np.asarray(peaks, dtype=int):
        blank[max(p - int(QRS_BLANK_MS[0] * ms), 0): p + int(QRS_BLANK_MS[1] * ms)] = True
    for a, b in blank_spans or ():
        blank[max(a, 0): max(b, 0)] = True
    if (~blank).sum() < int(fs / 2):
        return AtrialActivity(np.zeros(0, dtype=int), leads[k])
    # blanked stretches are bridged by a straight line before smoothing, so what is left of a
    # QRS does not leak into the P waves beside it
    x = np.array(residual[use], dtype=np.float64, copy=True)
    idx = np.arange(n)
    if blank.any():
        for row in x:
            row[blank] = np.interp(idx[blank], idx[~blank], row[~blank])
    x = uniform_filter1d(x, size=max(int(SMOOTH_MS * ms), 3), axis=1, mode="nearest")
    x = x - uniform_filter1d(x, size=max(int(400 * ms), 5), axis=1, mode="nearest")
    free = x[:, ~blank]
    noise = 1.4826 * np.median(np.abs(free - np.median(free, axis=1, keepdims=True)), axis=1)
    noise = np.maximum(noise, 1e-4)
    w = 1.0 / noise
    # amplitude-like detection signal (mV): the RMS over leads, each weighted by its SNR
    y = np.sqrt(np.einsum("l,ls->s", w ** 2, x ** 2) / np.sum(w ** 2))
    y[blank] = 0.0
    y_noise = 1.4826 * float(np.median(np.abs(y[~blank] - np.median(y[~blank]))))
    floor = float(np.median(y[~blank]))
    thr = max(P_EVENT_MIN_MV, floor + P_EVENT_NOISE_RATIO * y_noise)
    # local maxima above threshold, then a refractory period keeping the larger of close pairs
    cand = np.flatnonzero((y[1:-1] > thr) & (y[1:-1] >= y[:-2]) & (y[1:-1] > y[2:])) + 1
    refractory = int(P_EVENT_REFRACTORY_MS * ms)
    kept: list[int] = []
    for c in cand[np.argsort(-y[cand])]:
        if all(abs(c - q) >= refractory for q in kept):
            kept.append(int(c))
    events = np.asarray(sorted(kept), dtype=int)
    amp = float(np.median(y[events])) if events.size else 0.0
    return AtrialActivity(events, leads[k], amp, y[events], y_noise, residual[k])


def flutter_cycle(diag: np.ndarray, fs: float, leads: list[str], usable: list[bool],
                  peaks: np.ndarray, rr_ms: float) -> tuple[float, float, float] | None:
    """(atrial cycle in ms, autocorrelation there, autocorrelation at the mean RR) of the
    QRS-blanked inferior leads and V1, searched over the flutter cycles; None when the best lag
    is at the edge of that range or two cycles do not fit in the RR."""
    idx = [leads.index(x) for x in FLUTTER_LEADS if x in leads and usable[leads.index(x)]]
    if not idx or diag.shape[1] < 2 * fs:
        return None
    ms = fs / 1000.0
    # 3-30 Hz: the T wave's slow content goes, the sawtooth's fundamental and harmonics stay
    x = bandpass(diag[idx], fs, FLUTTER_BAND_HZ[0], FLUTTER_BAND_HZ[1])
    blank = np.zeros(x.shape[1], dtype=bool)
    for p in np.asarray(peaks, dtype=int):
        blank[max(p - int(50 * ms), 0): p + int(70 * ms)] = True
    x[:, blank] = 0.0
    x -= np.where(blank, 0.0, x.mean(axis=1, keepdims=True))
    n = x.shape[1]
    lags = np.arange(int(FLUTTER_CYCLE_MS[0] * ms), int(FLUTTER_CYCLE_MS[1] * ms) + 1)
    w = (~blank).astype(float)
    # all lags at once by FFT: x is zero where blanked, so sum x[t] x[t+l] needs no weight;
    # the energies of the overlapping, unblanked parts make the normalisation
    size = 1 << int(np.ceil(np.log2(2 * n)))
    fx = np.fft.rfft(x, size, axis=1)
    xx = np.fft.irfft(fx * np.conj(fx), size, axis=1)[:, :n].sum(axis=0)
    fw = np.fft.rfft(w, size)
    fe = np.fft.rfft(x * x, size, axis=1)
    # e_head[l] = sum_t x[t]^2 w[t+l]; e_tail[l] = sum_t x[t+l]^2 w[t]
    e_head = np.fft.irfft(np.conj(fe) * fw[None, :], size, axis=1)[:, :n].sum(axis=0)
    e_tail = np.fft.irfft(fe * np.conj(fw)[None, :], size, axis=1)[:, :n].sum(axis=0)

    def acf(lag: int) -> float:
        den = np.sqrt(max(e_head[lag], 0.0) * max(e_tail[lag], 0.0)) + 1e-12
        return float(xx[lag] / den)

    values = np.asarray([acf(int(lag)) for lag in lags])
    i = int(np.argmax(values))
    if i in (0, values.size - 1):
        return None  # the best lag is at the edge: the periodicity lies outside the flutter range
    cycle = float(lags[i] / ms)
    # at least two atrial cycles fit in the mean RR (1:1 flutter is not recognised)
    if rr_ms < 1.8 * cycle:
        return None
    rr_lag = int(round(rr_ms * ms))
    return cycle, float(values[i]), (acf(rr_lag) if rr_lag < n // 2 else float("nan"))
