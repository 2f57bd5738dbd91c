"""R-peak (QRS) detection: a multi-lead Pan-Tompkins-style detector.

Steps, after Pan & Tompkins (IEEE TBME 1985) with the multi-lead fusion of later work:

1. per lead: 5-sample running median (spikes), 5-15 Hz band-pass, derivative, squaring;
2. fusion: the sum of the energies of the usable leads, each clipped at four times its typical
   QRS energy (median over 1-s windows of their maxima: an artefact burst cannot dominate; a QRS
   small in one lead is seen in others);
3. 150 ms moving-window integration, square root (amplitude, not energy, units);
4. candidate peaks at least 200 ms apart (refractory period), classified against a threshold
   between the noise level and the median level of the last 8 QRS complexes, with T-wave
   rejection (a candidate within 360 ms and 0.6 RR of the previous QRS whose 1-40 Hz slope is
   under half the typical QRS slope) and search-back with half the threshold when no QRS has
   been found for 1.66 median RR intervals;
5. each detection is moved to the steepest point of its complex, then to the largest deflection
   of the reference lead within +-100 ms (the other polarity when it is 1.5x larger); of two
   detections then closer than 200 ms the larger deflection is kept (a QRS, not its P wave);
6. a second pass over the whole record (``_second_pass``): T waves kept after large ectopic
   beats are dropped (early and much smaller than both their QRS and the typical QRS), and
   gaps longer than 1.5 upper-quartile RR are searched for the missed beat (wide ectopic beats,
   small beats beside large ones) by their 1-40 Hz deflection;
7. a template stage on the reference lead (``_template_pass``): QRS shapes of the detections are
   clustered (dominant and ectopic morphologies); a detection matching no template, or a
   clearly better and larger one, moves to a strong match within 150 ms (wrong candidate: a
   slow wave, or the beat's own P or T wave), is dropped when it has neither a template's
   shape nor QRS frequency content nor a QRS's size (T waves, motion) unless the rhythm needs
   it (``_rhythm_needed``: a wide ectopic beat filling the gap of a missed beat), and long RR
   gaps are searched for strong template matches of any amplitude; small beats hidden at one
   phase of every cycle between large ones (bigeminy) are found by their 10-25 Hz energy
   (``_phase_search``); T waves 200-450 ms after a beat, broad and small in the 5-25 Hz band,
   are dropped (``_t_wave_prune``); and detections (alone or two together) that split one
   regular RR interval while matching the templates worse than both neighbours, lacking the
   QRS frequency content both have, or under 0.4 of both their sizes, are dropped
   (``_rhythm_prune``: motion, T and P waves); last, a detection that is small, or follows an
   electrode pop (its step looks like a QRS), moves to the strong template match the rhythm
   expects at the middle of its neighbours, or is dropped when it splits one interval
   (``_rhythm_place``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import find_peaks, hilbert

from models.ecg.filters import bandpass

# Pan & Tompkins 1985: no second QRS within 200 ms; T waves sought within 360 ms; 150 ms
# integration (one wide QRS); search-back after 1.66 RR.
REFRACTORY_S = 0.2
T_WAVE_WINDOW_S = 0.36
MWI_S = 0.15
SEARCHBACK_FACTOR = 1.66
REFINE_S = 0.1  # R lies within 100 ms of the steepest point of even a wide complex
# Energy is clipped at this multiple of the typical QRS energy (the median over 1-s windows of
# their maxima: most windows hold a QRS, and an artefact that fills a few of them cannot move a
# median, where a 99th percentile of a 10-s record is taken over by a 1-s burst).
CLIP_FACTOR = 4.0
# Adaptive threshold between the noise and signal levels of the integrated amplitude (the square
# root of the integrated energy: QRS of 0.2 and 2 mV in one record stay within a factor 10
# rather than 100, so a large ectopic beat does not hide the small ones after it).
THRESHOLD_FRACTION = 0.3
# The signal level is the median level of this many last QRS complexes.
SIGNAL_BEATS = 8
# T-wave test: a candidate within T_WAVE_WINDOW_S and T_WAVE_RR_FRACTION of the median RR of the
# previous QRS is a T wave when its steepest slope (1-40 Hz) is under T_SLOPE_RATIO of the larger
# of the previous and the median QRS slope (after an ectopic beat of small slope, its own large T
# is compared with the normal beats). The RR bound keeps early premature beats of a fast rhythm.
T_WAVE_RR_FRACTION = 0.6
T_SLOPE_RATIO = 0.5
# Half-width of the window in which a candidate's slope is measured: the steep part of a QRS is
# within 40 ms of its energy centre, and a wider window would reach back into the QRS before a T.
SLOPE_HALF_S = 0.04
# Second pass (_second_pass). QRS amplitude: the peak-to-peak deflection within 50 ms (a QRS
# is 60-120 ms wide; a T wave's 200 ms half-wave gives only part of its amplitude).
AMP_HALF_S = 0.05
# In gaps the deflection is taken within 80 ms: a wide ectopic beat (up to 160 ms, slow) shows
# its full amplitude; T waves are kept out by FILL_MARGIN rather than by the window.
FILL_HALF_S = 0.08
# A T wave peaks within 0.45 s of its QRS (QT up to 0.45 s at normal rates) and is smaller than
# both its own QRS and the typical QRS by this factor when it was mistaken for a beat; a real
# premature beat this early is seldom smaller than 40 % of both.
T_REJECT_S = 0.4
T_AMP_RATIO = 0.4
# A gap of 1.5 median RR holds a missed beat (sinus arrhythmia varies RR by < 30 %); at the
# record's edges, a stretch of 1.2 RR before the first beat (no neighbour to halve the error).
GAP_FACTOR = 1.5
RR_PERCENTILE = 75.0
EDGE_FACTOR = 1.2
# The missed beat is sought at least 0.5 RR from its neighbours: beyond their T waves and
# where a missed beat of a regular or bigeminal rhythm lies.
FILL_MARGIN = 0.5
# A beat found in a gap must reach this fraction of the median QRS amplitude (baseline noise
# and P waves stay below it).
FILL_AMP_RATIO = 0.3
# ... or at least this fraction when it stands FILL_CLEAR times above the median deflection of
# the gap (a wide ectopic beat of 0.6 mV beside 2.5 mV sinus beats, on a quiet baseline).
FILL_MIN_RATIO = 0.2
FILL_CLEAR = 3.0
# Template stage (_template_pass). A QRS is +-60 ms of its R (the 5-25 Hz band of a 60-120 ms
# complex); a cluster needs members correlating >= 0.8 (the same morphology beat to beat) and
# at least two of them (one beat alone is no template).
TEMPLATE_HALF_S = 0.06
CLUSTER_CORR = 0.8
CLUSTER_MIN = 2
CLUSTER_BEATS = 200
# A detection's match is the best correlation within 20 ms (refinement to the largest
# deflection and the template's centre may differ by a few samples).
MATCH_SLACK_S = 0.02
# Under 0.7 a detection matches no template (same-morphology beats correlate >= 0.8; chance
# correlation of a +-60 ms 5-25 Hz window, about five degrees of freedom, is often 0.5-0.6).
MATCH_CORR = 0.7
# The first pass's wrong candidate (a slow wave or noise peak) lies within 150 ms of the beat
# (half the shortest RR, so the move cannot reach the next beat).
RECENTRE_S = 0.15
# The recentring windows of this many detections are matched at once (151 positions each at
# 500 Hz: a few MB; a speed setting only).
RECENTRE_BLOCK = 128
# A strong match, taken for a beat: correlation >= 0.85 and half the template's amplitude (a
# single-lead window often correlates 0.8-0.9 by chance with baseline ripple, at a fraction of
# the amplitude).
STRONG_CORR = 0.85
STRONG_AMP = 0.5
# Shape test: dropped when under 0.65 correlation AND under 0.15 of the typical detection's
# 10-25 Hz / 1-5 Hz energy ratio (T waves and motion: < 0.15; QRS of every morphology in the
# 50 CPSC records: mostly > 0.15, and those below match a template) AND smaller than the
# median QRS (a single large ectopic beat has no template).
KEEP_CORR = 0.65
# ... unless the rhythm needs it (``_rhythm_needed``: it fills a gap of GAP_FACTOR RR) and it
# is at least this fraction of the median QRS deflection (T_AMP_RATIO: a beat, not a P wave or
# the baseline).
NEEDED_DEFL = 0.4
QRS_RATIO = 0.15
# The slow (1-5 Hz) energy is taken over +-120 ms: the span of a T wave's half-wave.
LF_HALF_S = 0.12
# Gap search: a strong match of correlation >= 0.9 (fewer chance matches than STRONG_CORR
# where no detection anchors the position), in an interval longer than 1.3 local RR (sinus
# arrhythmia and AF vary beat to beat by less, against 2 RR for a missed beat in a regular
# rhythm), the local RR being the median of two intervals either side.
FILL_CORR = 0.9
GAP_RR = 1.3
LOCAL_BEATS = 2
# Rhythm test (_rhythm_prune). A detection whose two RR intervals together span at most 1.25
# local RR splits one regular interval: a premature beat is followed by a compensatory pause
# (about 2 RR) or a reset cycle (coupling of at least 0.3-0.4 RR plus about one RR); only an
# interpolated ectopic beat (large, wide, steep: LARGE_DEFL and QRS_RATIO keep it) or an
# artefact splits an interval. The local RR is the median of 4 intervals either side.
SPLIT_RR = 1.25
LOCAL_SPAN = 4
# Beats of one morphology correlate within a few hundredths of each other with their template:
# a detection 0.05 under both neighbours is not the same kind of event as they are.
MATCH_MARGIN = 0.05
# Runs of up to two detections between two anchors one local RR apart are dropped together
# (two artefact transients in one interval: removing one at a time, neither splits it alone).
RUN_MAX = 2
# Under a third of QRS_RATIO a detection has no QRS frequency content (a T wave, a motion
# transient); beside two anchors with QRS content it is weaker than them whatever its shape.
NO_QRS_RATIO = 0.05
# Twice the median QRS deflection: an ectopic beat, not a smaller artefact or T wave.
LARGE_DEFL = 2.0
# The template stage filters by FFT with the record extended by 1 s at each end: the 1-5 Hz
# band's impulse response has decayed within it.
SPECTRUM_PAD_S = 1.0
# The 1-5 Hz band is computed at 125 Hz (its gain beyond 62.5 Hz is under 2e-5): a quarter of
# the inverse transform at 500 Hz.
SLOW_RATE = 125.0
# Phase search (_phase_search). A hidden beat is sought beyond the previous beat's T wave (QT
# up to 0.45 s) and before the next beat's P wave (PR up to 0.25 s); its 10-25 Hz energy
# stands 3 times above the baseline between beats (as FILL_CLEAR for the second pass); the
# beats of one rhythm keep their place in the cycle within 10 % of the interval (a bigeminal
# coupling varies by a few per cent); and a rhythm is at least 3 such beats (two may coincide
# by chance in a 10-s record).
PHASE_AFTER_S = 0.45
PHASE_BEFORE_S = 0.25
PHASE_CLEAR = 3.0
PHASE_TOL = 0.1
PHASE_MIN = 3
# T-wave test (_t_wave_prune). A T wave peaks 200-450 ms after its QRS (beyond the refractory
# period; QT up to 0.45 s); its 5-25 Hz envelope is 2-3 times wider at half its peak than a QRS
# (1.8: the widest 1 % of the CPSC detections are QRS complexes of up to 2.6 times the
# record's typical width, but those have a QRS's envelope peak) and, being slow, under 0.6 of
# the QRS's 5-25 Hz peak and 1-40 Hz deflection (the first pass already keeps a T wave only
# when it is of QRS size: a large one is no T wave of a normal beat). The envelope is taken
# over +-250 ms windows: a T wave's whole half-wave.
TW_LO_S = REFRACTORY_S
TW_HI_S = 0.45
TW_WIDTH = 1.8
TW_AMP = 0.6
TW_ENV_HALF_S = 0.25
# The running median works on blocks of 8192 samples (its nine buffers, 0.6 MB, stay in the
# cache); a speed setting only, the result does not depend on it.
DESPIKE_BLOCK = 8192
# Refinement takes the opposite polarity when that deflection is this many times larger.
POLARITY_RATIO = 1.5
# Rhythm placement (_rhythm_place). An electrode pop departs from the 10-ms running median by
# more than 10 times the record's median QRS deflection (a QRS's steepest sample departs by
# under 1.5 times its deflection; the pops of the CPSC records by about 50 times); its step
# and recovery, band-passed, look like a QRS up to 60 ms after it. A detection whose two
# intervals add up to two local RR within 15 % sits where one beat is expected at the middle.
POP_FACTOR = 10.0
POP_AFTER_S = 0.06
PLACE_SPAN_TOL = 0.15


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


def _despike(x: np.ndarray) -> np.ndarray:
    """Running median over 5 samples (10 ms at 500 Hz): removes spikes up to 2 samples wide
    (electrode pops, pacing spikes) and keeps a QRS (60-120 ms). A min/max network, not a sort:
    median5 = median3(e, max(min(a, b), min(c, d)), min(max(a, b), max(c, d))). Lead by lead
    and block by block (DESPIKE_BLOCK), in place: the operands stay in the cache (several times
    faster than the network over the whole leads x samples array)."""
    if x.shape[-1] < 5:
        return x
    n = x.shape[-1]
    out = np.empty(x.shape)
    p = np.empty(n + 4)
    m = min(n, DESPIKE_BLOCK)
    buf = np.empty((3, m))
    for row, o in zip(x, out, strict=True):
        p[2:-2] = row
        p[:2], p[-2:] = row[0], row[-1]
        for s in range(0, n, m):
            k = min(m, n - s)
            f, g, t = buf[0, :k], buf[1, :k], buf[2, :k]
            a, b, c, d, e = (p[s + i: s + i + k] for i in range(5))
            np.maximum(np.minimum(a, b, out=f), np.minimum(c, d, out=t), out=f)
            np.minimum(np.maximum(a, b, out=g), np.maximum(c, d, out=t), out=g)
            np.minimum(np.maximum(e, f, out=t), g, out=g)
            np.maximum(np.minimum(e, f, out=t), g, out=o[s: s + k])
    return out


def _energies(x: np.ndarray, fs: float) -> np.ndarray:
    """Per-lead QRS energy (leads x samples): 5-15 Hz band, derivative, square, clipped."""
    f = bandpass(x, fs, 5.0, 15.0)
    d = np.gradient(f, axis=-1) * fs  # mV/s
    e = d * d
    # Clipping keeps an artefact burst from outweighing every beat; the leads are then summed in
    # their own units, so leads with steep QRS complexes lead and slow T waves follow.
    cap = CLIP_FACTOR * _typical_peak(e, fs)
    return np.where(cap > 0, np.minimum(e, cap), e)


def _typical_peak(e: np.ndarray, fs: float) -> np.ndarray:
    """Median over 1-s windows of each lead's window maximum (leads x 1)."""
    w = max(int(fs), 1)
    k = e.shape[-1] // w
    if k < 1:
        return e.max(axis=-1, keepdims=True)
    return np.median(e[..., : k * w].reshape(*e.shape[:-1], k, w).max(axis=-1), axis=-1,
                     keepdims=True)


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
    x = _despike(sig[idx])
    energy = _energies(x, fs).sum(axis=0)
    fused = energy
    level = np.sqrt(_moving_average(fused, int(MWI_S * fs)))
    wide = bandpass(x, fs, 1.0, 40.0)
    slope = np.sqrt(np.sum(np.gradient(wide, axis=-1) ** 2, axis=0)) * fs
    qrs = _classify(level, slope, fs)
    k = _reference_lead(wide, qrs, fs)
    peaks = _refine(wide[k], energy, qrs, fs) if qrs.size else qrs
    peaks = _second_pass(wide, peaks, fs)
    # Electrode pops on the reference lead: what the running median removed, far above a QRS.
    pops = np.abs(sig[idx[k]] - x[k])
    peaks = _template_pass(x[k], wide[k], peaks, fs, pops)
    return RPeaks(peaks, fs, names[idx[k]], [names[i] for i in idx])


def _classify(level: np.ndarray, slope: np.ndarray, fs: float) -> np.ndarray:
    refractory = int(REFRACTORY_S * fs)
    cand, _ = find_peaks(level, distance=max(refractory, 1))
    if cand.size == 0:
        return cand
    heights = level[cand]
    # Initial signal levels: the largest candidate of each of the first 1-s windows (most
    # windows hold a QRS; an artefact or a large ectopic beat in a few of them does not move
    # their median). Taken over candidates, not samples, so a peak's flank does not spill into
    # the next window. Noise level: the median sample (baseline).
    win = (cand // max(int(fs), 1)).astype(int)
    per_window = np.full(win.max() + 1, -np.inf)
    np.maximum.at(per_window, win, heights)
    seed = per_window[np.isfinite(per_window)][:SIGNAL_BEATS]
    npk = float(np.median(level))
    half = int(SLOPE_HALF_S * fs)
    t_window = T_WAVE_WINDOW_S * fs

    def peak_slope(i: int) -> float:
        return float(slope[max(i - half, 0): i + half + 1].max())

    qrs: list[int] = []
    levels: list[float] = [float(v) for v in seed]
    qrs_slopes: list[float] = []
    rr: list[int] = []
    # The medians change only when a beat is accepted: kept up to date there rather than
    # recomputed for every candidate (a 30-min recording has ~10^4 candidates).
    # The typical QRS, not the largest: the median of the last beats, so one large ectopic
    # beat (or an accepted artefact) does not raise the threshold over the normal beats.
    state = {"signal": _median(levels[-SIGNAL_BEATS:]), "rr": float("inf"), "slope": 0.0}

    def accept(i: int) -> None:
        if qrs:
            rr.append(i - qrs[-1])
            state["rr"] = _median(rr[-8:])
        qrs.append(int(i))
        levels.append(float(level[i]))
        qrs_slopes.append(peak_slope(i))
        state["signal"] = _median(levels[-SIGNAL_BEATS:])
        state["slope"] = max(qrs_slopes[-1], _median(qrs_slopes[-SIGNAL_BEATS:]))

    cand_l = cand.tolist()
    vals = heights.tolist()
    last_checked = 0
    for c_i, c in enumerate(cand_l):
        val = vals[c_i]
        rr_avg = state["rr"]
        # Search back for a missed beat when the gap has grown too long.
        if qrs and c - qrs[-1] > SEARCHBACK_FACTOR * rr_avg:
            lo, hi = qrs[-1] + refractory, c - refractory
            half_thr = 0.5 * (npk + THRESHOLD_FRACTION * (state["signal"] - npk))
            pool = [k for k, v in zip(cand_l[last_checked:c_i], vals[last_checked:c_i],
                                      strict=True) if lo <= k <= hi and v > half_thr]
            if pool:
                accept(max(pool, key=lambda k: level[k]))
        if val > npk + THRESHOLD_FRACTION * (state["signal"] - npk):
            if qrs:
                gap = c - qrs[-1]
                if gap < refractory or (gap < min(t_window, T_WAVE_RR_FRACTION * rr_avg)
                                        and peak_slope(c) < T_SLOPE_RATIO * state["slope"]):
                    npk = 0.125 * val + 0.875 * npk
                    continue
            accept(c)
            last_checked = c_i + 1
        else:
            npk = 0.125 * val + 0.875 * npk
    return np.asarray(qrs, dtype=int)


def _second_pass(f: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Re-examine the first pass with the whole record in view (a QRS is judged against the
    record's typical QRS and its neighbours, not only the beats before it).

    ``f``: the usable leads, 1-40 Hz (leads x samples). The QRS amplitude of a point is the
    peak-to-peak deflection within +-AMP_HALF_S, summed over the leads.

    1. T waves: a detection within T_REJECT_S of the previous one whose amplitude is under
       T_AMP_RATIO of both the previous and the median QRS is that beat's T wave (the
       first pass keeps it when it follows a large ectopic beat of small slope, or when the
       threshold has fallen in a quiet stretch).
    2. Search-back over the whole record: a gap longer than GAP_FACTOR median RR (or an edge
       of the record longer than EDGE_FACTOR median RR) holds a missed beat; the largest QRS
       amplitude at least FILL_MARGIN median RR from both neighbours is taken when it is at
       least FILL_AMP_RATIO of the median QRS (wide ectopic beats and small beats beside large
       ones, which the 5-15 Hz slope threshold misses). Repeated while gaps remain.
    """
    n = f.shape[-1]
    if peaks.size < 3:
        return peaks
    amp = _Deflection(f, AMP_HALF_S, fs)
    a = amp.at(peaks)
    med = float(np.median(a))
    gap = np.diff(peaks)
    t_wave = np.zeros(peaks.size, dtype=bool)
    t_wave[1:] = ((gap < T_REJECT_S * fs) & (a[1:] < T_AMP_RATIO * a[:-1])
                  & (a[1:] < T_AMP_RATIO * med))
    peaks = peaks[~t_wave]
    if peaks.size < 3:
        return peaks
    med = float(np.median(amp.at(peaks)))
    # The upper quartile of RR, not the median: in bigeminy or atrial fibrillation half the
    # intervals are short, and a median would turn every long interval into a "gap".
    rr = float(np.percentile(np.diff(peaks), RR_PERCENTILE))
    margin = int(FILL_MARGIN * rr)
    found = list(peaks)
    for _ in range(int(n / max(rr, 1.0)) + 1):
        bounds = np.r_[-rr, np.asarray(found, dtype=float), n - 1 + rr]
        bounds.sort()
        g = np.diff(bounds)
        # Edges: a virtual beat one RR beyond the record, so an edge gap counts as a long gap.
        long = g > GAP_FACTOR * rr
        long[0] = bounds[1] > EDGE_FACTOR * rr
        long[-1] = (n - 1 - bounds[-2]) > EDGE_FACTOR * rr
        added = False
        for j in np.flatnonzero(long):
            lo = int(max(bounds[j] + margin, 0))
            hi = int(min(bounds[j + 1] - margin, n - 1))
            if hi <= lo:
                continue
            seg = amp.span(lo, hi)
            k = int(np.argmax(seg))
            i, top = lo + k, seg[k]
            # Large against the record's QRS, or (a smaller, wide beat) clear of the gap's
            # own baseline.
            if top >= FILL_AMP_RATIO * med or (top >= FILL_MIN_RATIO * med
                                               and top >= FILL_CLEAR * np.median(seg)):
                found.append(i)
                added = True
        if not added:
            break
    if len(found) == peaks.size:
        return peaks
    return np.unique(np.asarray(found, dtype=int))


def _template_pass(x: np.ndarray, f: np.ndarray, peaks: np.ndarray, fs: float,
                   pops: np.ndarray | None = None) -> np.ndarray:
    """Re-examine the detections by their QRS shape (reference lead ``x``, despiked; ``f`` its
    1-40 Hz version).

    Templates: the detections' +-TEMPLATE_HALF_S windows of the 5-25 Hz band (the QRS, without
    P and T waves or baseline), normalised, grouped greedily: the window with most neighbours
    correlating >= CLUSTER_CORR founds a cluster (the dominant morphology, then ectopic ones),
    kept when it has at least CLUSTER_MIN members. Each template is slid over the record
    (normalised cross-correlation and the amplitude relative to its members').

    1. Wrong candidate: a detection that matches no template (< MATCH_CORR) moves to the best
       match within +-RECENTRE_S when that is a strong one (>= STRONG_CORR, at least
       STRONG_AMP of its template's amplitude): the first pass took a slow wave or noise peak
       beside the beat. A detection that matches a template moves there only when the strong
       match is MATCH_MARGIN better and larger than its own (it took the beat's P or T wave,
       or its Q or S wave, which share part of the QRS shape).
    2. Shape test (T waves, motion artefacts): a detection is dropped when it matches no
       template (< KEEP_CORR), has no QRS-like frequency content (energy ratio of 10-25 Hz to
       1-5 Hz under QRS_RATIO of the record's typical detection: T waves and motion are slow)
       and is not larger than the typical QRS (a unique large ectopic beat has no template).
    """
    n = x.size
    h = int(TEMPLATE_HALF_S * fs)
    if peaks.size < 2 * CLUSTER_MIN or n <= 2 * h + 1:
        return peaks
    spec = _Spectrum(x, fs)
    b = spec.band(5.0, 25.0)
    bp = spec.padded(h)
    pad = np.pad(b, h)
    offs = np.arange(2 * h + 1)
    # Templates from the first CLUSTER_BEATS detections (a 10-s record whole; a long recording's
    # morphologies are all seen in its first minutes, and the pairwise matrix stays small).
    w = pad[peaks[:CLUSTER_BEATS, None] + offs[None, :]]
    wn = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
    c = wn @ wn.T
    left = np.ones(wn.shape[0], dtype=bool)
    templates = []
    members = []
    while left.sum() >= CLUSTER_MIN:
        a = (c >= CLUSTER_CORR) & left[None, :] & left[:, None]
        cnt = a.sum(axis=1)
        i = int(np.argmax(cnt))
        if cnt[i] < CLUSTER_MIN:
            break
        m = a[i]
        t = wn[m].mean(axis=0)
        templates.append(t / (np.linalg.norm(t) + 1e-12))
        members.append(np.flatnonzero(m))
        left &= ~m
    if not templates:
        return peaks
    tt = np.asarray(templates)
    match = _Matcher(b, bp, tt, peaks, members, fs)
    # Frequency content: 10-25 Hz (QRS) energy over the QRS window against the 1-5 Hz (T wave,
    # motion) energy over +-LF_HALF_S, the span of a T wave or a motion transient. Both are
    # evaluated only where they are read (detections, candidates, the phase windows).
    hf = spec.band(10.0, 25.0)
    hfe = _WindowMean(hf * hf, h)
    lfe = spec.slow_energy(1.0, 5.0, LF_HALF_S)
    med_ratio = float(np.median(hfe(peaks) / (lfe(peaks) + 1e-12))) + 1e-12

    def ratio(q: np.ndarray) -> np.ndarray:
        return hfe(q) / (lfe(q) + 1e-12) / med_ratio

    a_half = int(AMP_HALF_S * fs)
    fpad = np.pad(f, a_half, mode="edge")
    a_offs = np.arange(2 * a_half + 1)

    def deflection(q: np.ndarray) -> np.ndarray:
        return np.ptp(fpad[q[:, None] + a_offs[None, :]], axis=1)

    defl = deflection(peaks)
    med_defl = float(np.median(defl))
    r = int(RECENTRE_S * fs)
    refractory = int(REFRACTORY_S * fs)
    out = peaks.copy()
    cmax_p = match.cmax(peaks)
    sl = int(MATCH_SLACK_S * fs)
    offs_r = np.arange(-r, r + 1)
    for s0 in range(0, peaks.size, RECENTRE_BLOCK):
        blk = peaks[s0: s0 + RECENTRE_BLOCK]
        pos = np.clip(blk[:, None] + offs_r[None, :], 0, n - 1)
        cm, am = (v.reshape(pos.shape) for v in match.at(pos.ravel()))
        i = np.argmax(cm * np.clip(am, 0.0, 1.0), axis=1)
        rows = np.arange(blk.size)
        cq, aq, qq = cm[rows, i], am[rows, i], pos[rows, i]
        c0 = cmax_p[s0: s0 + blk.size]
        # A detection that matches no template moves to a strong match; one that matches a
        # template only to a clearly better and larger one (the first pass took the beat's
        # own Q, S or T wave, or its P wave, which share part of the shape): MATCH_MARGIN
        # better and of larger amplitude than the detection's own (within MATCH_SLACK_S).
        better = (cq >= c0 + MATCH_MARGIN) & (aq > am[:, r - sl: r + sl + 1].max(axis=1))
        go = (cq >= STRONG_CORR) & (aq >= STRONG_AMP) & ((c0 < MATCH_CORR) | better)
        for t in np.flatnonzero(go).tolist():
            j, q = s0 + t, int(qq[t])
            prev_ok = j == 0 or q - out[j - 1] >= refractory
            next_ok = j == peaks.size - 1 or peaks[j + 1] - q >= refractory
            if prev_ok and next_ok:
                out[j] = q
    moved = out != peaks
    cmax_o = cmax_p.copy()
    if moved.any():
        cmax_o[moved] = match.cmax(out[moved])
    defl_o = deflection(out)
    keep = (cmax_o >= KEEP_CORR) | (ratio(out) >= QRS_RATIO) | (defl_o >= med_defl)
    keep |= _rhythm_needed(out, keep, defl_o >= NEEDED_DEFL * med_defl)
    out = np.unique(out[keep])
    # 3. Gaps: an RR interval longer than GAP_RR times the local RR (the median of the
    # intervals around it), or an edge of the record longer than one local RR, holds a missed
    # beat when a strong template match lies at least REFRACTORY_S from both neighbours.
    for _ in range(out.size + 2):
        if out.size < 2:
            break
        rr = np.diff(out).astype(float)
        local = _local_rr(rr)
        bounds = np.r_[out[0] - local[0], out, out[-1] + local[-1]]
        lim = np.r_[local[0], GAP_RR * local, local[-1]]
        added = []
        for j in np.flatnonzero(np.diff(bounds) > lim):
            lo = int(max(bounds[j] + refractory, 0))
            hi = int(min(bounds[j + 1] - refractory, n - 1))
            if hi <= lo:
                continue
            cm, am = match.at(np.arange(lo, hi + 1))
            fill = np.where((cm >= FILL_CORR) & (am >= STRONG_AMP),
                            cm * np.clip(am, 0.0, 1.0), -np.inf)
            i = int(np.argmax(fill))
            if np.isfinite(fill[i]):
                added.append(lo + i)
        if not added:
            break
        out = np.unique(np.r_[out, added])
    out = _phase_search(out, b, hfe, ratio, fs)
    # T waves first: one left in place shortens the local RR of its neighbours' test.
    out = _t_wave_prune(out, b, deflection, fs)
    out = _rhythm_prune(out, match.cmax(out), deflection(out) / med_defl, ratio(out))
    near_pop = np.zeros(out.size, dtype=bool)
    if pops is not None:
        at = np.flatnonzero(pops > POP_FACTOR * med_defl)
        if at.size:
            i = np.searchsorted(at, out, side="right") - 1
            near_pop = (i >= 0) & (out - at[np.maximum(i, 0)] <= POP_AFTER_S * fs)
    return _rhythm_place(out, match, near_pop, fs)


def _rhythm_needed(out: np.ndarray, keep: np.ndarray, large: np.ndarray) -> np.ndarray:
    """Detections the shape test would drop that the rhythm needs: without them the kept
    neighbours are more than GAP_FACTOR local RR apart (a missed beat; the local RR is the
    median of LOCAL_SPAN kept intervals either side, or the record's median RR when shorter),
    and they lie at least FILL_MARGIN local
    RR from both (beyond the neighbours' T waves, as the
    second pass's gap search) and are of QRS size (``large``: a wide ectopic beat without QRS
    frequency content, a little under the median QRS; the baseline and P waves are smaller)."""
    kept = out[keep]
    if kept.size < 3:
        return np.zeros(out.size, dtype=bool)
    gaps = np.diff(kept).astype(float)
    j = np.clip(np.searchsorted(kept, out), 1, kept.size - 1)
    # The local RR: the median of LOCAL_SPAN kept intervals either side of the gap, the gap
    # itself left out (NaN beyond the record's ends).
    k = LOCAL_SPAN
    win = np.lib.stride_tricks.sliding_window_view(np.pad(gaps, k, constant_values=np.nan),
                                                   2 * k + 1)[j - 1]
    # The shorter of it and the record's median RR: in an irregular rhythm (bigeminy, atrial
    # fibrillation) either may be raised by the long intervals around the gap.
    rr = np.fmin(_nan_row_median(np.delete(win, k, axis=1)), np.median(gaps))
    prev, nxt = kept[j - 1], kept[j]
    inner = (out > kept[0]) & (out < kept[-1])
    return (~keep & large & inner & (nxt - prev > GAP_FACTOR * rr)
            & (np.minimum(out - prev, nxt - out) >= FILL_MARGIN * rr))


def _t_wave_prune(out: np.ndarray, b: np.ndarray, deflection, fs: float) -> np.ndarray:
    """Drop T waves kept as beats: a detection within TW_LO_S..TW_HI_S of the previous one
    whose 5-25 Hz envelope (``b``'s analytic amplitude) is TW_WIDTH times wider at half its
    peak than the record's typical detection (a T wave's 200-300 ms half-wave against a 60-120
    ms QRS), whose envelope peak is under TW_AMP of both the previous detection's and the
    typical one, and whose 1-40 Hz deflection (``deflection``) is under TW_AMP of the previous
    detection's. Premature beats, even wide ones, keep a QRS's steep energy: their envelope
    peak is near the typical one; a wide one without it is kept when the rhythm needs it
    (``_rhythm_needed``)."""
    if out.size < 3:
        return out
    n = b.size
    h = int(TW_ENV_HALF_S * fs)
    s = max(int(MATCH_SLACK_S * fs), 1)
    gap = np.diff(out)
    near = (gap >= TW_LO_S * fs) & (gap <= TW_HI_S * fs)
    if not near.any():  # no detection in a T wave's place (most records): nothing to test
        return out
    # The analytic signal of a window around each detection (one batched FFT of short rows;
    # the window's edges, where the transform wraps, are TW_ENV_HALF_S from the peaks read).
    pos = np.clip(out[:, None] + np.arange(-h, h + 1)[None, :], 0, n - 1)
    env = np.abs(hilbert(b[pos], axis=1))
    c = h
    pk = c - s + np.argmax(env[:, c - s: c + s + 1], axis=1)
    rows = np.arange(out.size)
    top = env[rows, pk]
    idx = np.arange(2 * h + 1)[None, :]
    below = env <= 0.5 * top[:, None]
    left = np.where(below & (idx < pk[:, None]), idx, -1).max(axis=1)
    right = np.where(below & (idx > pk[:, None]), idx, 2 * h + 1).min(axis=1)
    width = (right - left).astype(float)
    wide = width >= TW_WIDTH * np.median(width)
    small = top < TW_AMP * np.median(top)
    defl = deflection(out)
    t = np.zeros(out.size, dtype=bool)
    t[1:] = (near & wide[1:] & small[1:]
             & (top[1:] < TW_AMP * top[:-1]) & (defl[1:] < TW_AMP * defl[:-1]))
    # A wide ectopic beat shares a T wave's broad, small envelope; the rhythm tells them apart
    # (a T wave leaves no gap of a missed beat when it is dropped).
    t &= ~_rhythm_needed(out, ~t, defl >= NEEDED_DEFL * np.median(defl))
    return out[~t]


class _WindowMean:
    """Mean of ``v`` over +-``h`` samples around given positions (``v`` mirrored at the ends,
    as scipy.ndimage's "reflect" mode), from one cumulative sum: the full-length moving
    average is never formed when only a few thousand positions are read."""

    def __init__(self, v: np.ndarray, h: int):
        self.h = h
        p = np.concatenate([v[h - 1:: -1] if h else v[:0], v, v[: -h - 1: -1] if h else v[:0]])
        self.cs = np.concatenate([[0.0], np.cumsum(p, dtype=np.float64)])

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q)
        return (self.cs[q + 2 * self.h + 1] - self.cs[q]) / (2 * self.h + 1)


class _Matcher:
    """Normalised cross-correlation of the templates with the 5-25 Hz band ``b`` and the match's
    amplitude relative to the template's members, computed only at the positions asked for
    (the detections, their +-RECENTRE_S neighbourhoods, searched gaps): a dot product of each
    +-TEMPLATE_HALF_S window with the templates, equal to the full-length FFT correlation."""

    def __init__(self, b: np.ndarray, bp: np.ndarray, tt: np.ndarray, peaks: np.ndarray,
                 members: list[np.ndarray], fs: float):
        self.h = tt.shape[1] // 2
        self.n = b.size
        # ``bp``: the band with TEMPLATE_HALF_S of its reflected extension beyond each end (as
        # a correlation by FFT of the padded record sees it); the norm counts only the record.
        self.bp = bp
        self.tt = tt.astype(np.float32).T
        # Row i: the +-h window centred on sample i (a view: rows are gathered, no index array).
        self.windows = np.lib.stride_tricks.sliding_window_view(bp, 2 * self.h + 1)
        self.cs = np.concatenate([[0.0], np.cumsum(b * b)])
        self.s = int(MATCH_SLACK_S * fs)
        self.memo = np.full(self.n, np.nan)
        num = self._num(peaks[:CLUSTER_BEATS])
        scale = np.array([np.median(num[m, j]) for j, m in enumerate(members)])
        self.scale = np.where(np.abs(scale) > 0, scale, 1.0)

    def _num(self, q: np.ndarray) -> np.ndarray:
        return (self.windows[q] @ self.tt).astype(np.float64)

    def at(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best correlation, amplitude of that template's match) at positions ``q``."""
        q = np.asarray(q, dtype=int)
        num = self._num(q)
        h, n = self.h, self.n
        norm = np.sqrt(self.cs[np.minimum(q + h + 1, n)] - self.cs[np.maximum(q - h, 0)])
        corr = num / (norm + 1e-12)[:, None]
        best = np.argmax(corr, axis=1)
        rows = np.arange(q.size)
        return corr[rows, best], num[rows, best] / self.scale[best]

    def cmax(self, q: np.ndarray) -> np.ndarray:
        """Best correlation within +-MATCH_SLACK_S of each position in ``q`` (remembered: the
        stages ask again for the same detections)."""
        q = np.asarray(q, dtype=int)
        v = self.memo[q]
        new = np.flatnonzero(np.isnan(v))
        if new.size:
            u = np.unique(q[new])
            k = 2 * self.s + 1
            pos = np.clip(u[:, None] + np.arange(-self.s, self.s + 1)[None, :], 0, self.n - 1)
            self.memo[u] = self.at(pos.ravel())[0].reshape(u.size, k).max(axis=1)
            v = self.memo[q]
        return v


class _Spectrum:
    """Zero-phase band-pass filters of one lead by one FFT (the template stage needs three
    bands: one transform instead of three forward-backward IIR passes).

    The gain of each band is that of ``filters.bandpass`` run forward and backward, |H|^2 of
    the order-2 Butterworth band-pass (bilinear transform with pre-warped edges), so away from
    the edges the result equals sosfiltfilt's to rounding. The record is extended by an odd
    reflection of SPECTRUM_PAD_S at both ends (as filtfilt pads) so the FFT's circular wrap
    does not join its two ends. The transform's length is a multiple of the decimation of the
    slow band (``slow_energy``).
    """

    def __init__(self, x: np.ndarray, fs: float):
        self.n = x.size
        self.pad = min(int(SPECTRUM_PAD_S * fs), self.n - 1)
        p = self.pad
        xp = np.concatenate([2 * x[0] - x[p:0:-1], x, 2 * x[-1] - x[-2: -p - 2: -1]])
        self.dec = max(int(fs // SLOW_RATE), 1)
        d = self.dec
        self.size = d * next_fast_len(-(-xp.size // d), real=True)
        self.fs = fs
        # Single precision: half the transform time of a long recording; the bands keep
        # seven significant digits, far below the ECG's noise.
        self.spectrum = rfft(xp.astype(np.float32), self.size)
        k = np.arange(self.spectrum.size, dtype=np.float32)
        top = np.float32(np.pi * 0.4999)  # tan stays finite at Nyquist
        self.warped = np.tan(np.minimum(k * np.float32(np.pi / self.size), top))
        self.warped[0] = 1e-12
        self.full = None

    def gain(self, low: float, high: float, bins: int | None = None) -> np.ndarray:
        w = self.warped[:bins]
        wl, wh = np.tan(np.pi * low / self.fs), np.tan(np.pi * high / self.fs)
        u = (w * w - np.float32(wl * wh)) / (np.float32(wh - wl) * w)
        # Order 2, forward and backward: |H|^2 = 1 / (1 + u^4) (u^4 overflows to inf near
        # 0 Hz, a gain of 0).
        with np.errstate(over="ignore"):
            u *= u
            u *= u
        u += np.float32(1.0)
        return np.reciprocal(u, out=u)

    def band(self, low: float, high: float) -> np.ndarray:
        """The band over the record (float64); ``padded`` then gives it with its extension."""
        self.full = irfft(self.spectrum * self.gain(low, high), self.size)
        return self.full[self.pad: self.pad + self.n].astype(np.float64)

    def padded(self, h: int) -> np.ndarray:
        """The last band with ``h`` samples of the extension beyond each end (float32)."""
        return self.full[self.pad - h: self.pad + self.n + h]

    def slow_energy(self, low: float, high: float, half_s: float):
        """Mean square of a slow band over +-``half_s`` around record positions, the band
        computed at fs / dec (SLOW_RATE: the inverse transform of the spectrum's lowest bins
        only) and its energy read from one cumulative sum."""
        d = self.dec
        m = self.size // d
        bins = m // 2 + 1
        slow = irfft(self.spectrum[:bins] * self.gain(low, high, bins), m).astype(np.float64)
        slow *= 1.0 / d
        cs = np.concatenate([[0.0], np.cumsum(slow * slow)])
        k = max(int(round(half_s * self.fs / d)), 0)
        pad = self.pad

        def mean(q: np.ndarray) -> np.ndarray:
            c = np.clip((np.asarray(q) + pad + d // 2) // d, k, m - k - 1)
            return (cs[c + k + 1] - cs[c - k]) / (2 * k + 1)

        return mean


def _phase_search(out: np.ndarray, b: np.ndarray, hfe, ratio, fs: float) -> np.ndarray:
    """Small beats hidden between large ones at a regular place of every cycle (sinus beats in
    bigeminy beside large ectopic beats, which set the threshold and the templates).

    In every RR interval, the point of largest 10-25 Hz energy (``hfe``) at least PHASE_AFTER_S
    after the beat (beyond its T wave) and PHASE_BEFORE_S before the next (beyond its P wave)
    is a candidate when it stands PHASE_CLEAR times above the interval's median HF energy and
    has QRS frequency content (``ratio`` >= QRS_RATIO). Candidates that share one shape (5-25 Hz
    window ``b`` correlating >= CLUSTER_CORR) and one phase of the cycle (within PHASE_TOL)
    in at least PHASE_MIN intervals and half the intervals searched are taken for beats.
    """
    h = int(TEMPLATE_HALF_S * fs)
    n = b.size
    a, z = int(PHASE_AFTER_S * fs), int(PHASE_BEFORE_S * fs)
    lo = out[:-1] + a
    hi = out[1:] - z
    sel = np.flatnonzero(hi - lo > 2 * h)
    if sel.size < PHASE_MIN:
        return out
    # Largest HF point of every window (windows laid end to end, one reduceat).
    lens = hi[sel] - lo[sel]
    first = np.cumsum(lens) - lens
    seg = np.repeat(np.arange(sel.size), lens)
    pos = np.arange(lens.sum()) - np.repeat(first, lens) + np.repeat(lo[sel], lens)
    v = hfe(pos)
    top = np.maximum.reduceat(v, first)
    hit = np.flatnonzero(v == top[seg])
    q = pos[hit[np.unique(seg[hit], return_index=True)[1]]]
    # Clear of the baseline between beats (the median HF energy of all the windows) and with
    # QRS frequency content.
    ok = (top >= PHASE_CLEAR * np.median(v)) & (ratio(q) >= QRS_RATIO) & (q >= h) & (q < n - h)
    i0 = sel[ok]
    cand = q[ok]
    phase = (cand - out[i0]) / (out[i0 + 1] - out[i0])
    if cand.size < PHASE_MIN:
        return out
    q = cand
    ph = phase
    w = b[q[:, None] + np.arange(-h, h + 1)[None, :]]
    w = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
    same = (w @ w.T >= CLUSTER_CORR) & (np.abs(ph[:, None] - ph[None, :]) <= PHASE_TOL)
    cnt = same.sum(axis=1)
    i = int(np.argmax(cnt))
    # Once a group of one shape and phase is established, every candidate at that phase is
    # taken: the rhythm predicts it and its HF energy confirms it (a noisy window of a beat of
    # 0.1 mV need not correlate with the group's shape).
    member = np.abs(ph - np.median(ph[same[i]])) <= PHASE_TOL
    if member.sum() < max(PHASE_MIN, 0.5 * sel.size):
        return out
    return np.unique(np.r_[out, q[member]])


def _rhythm_prune(out: np.ndarray, c: np.ndarray, defl: np.ndarray,
                  ratio: np.ndarray) -> np.ndarray:
    """Drop detections that split one regular RR interval and are weaker than both their
    neighbours (motion transients, T waves and noise that pass the shape test).

    ``c``: each detection's best template correlation; ``defl``: its QRS deflection over the
    record's median; ``ratio``: its relative 10-25 Hz / 1-5 Hz content. A run of m <= RUN_MAX
    detections between anchors a and z is dropped when (1) z - a is at most SPLIT_RR of the
    local RR (the median of the LOCAL_SPAN intervals either side, the run's own intervals left
    out, and fewer at the record's ends; their upper quartile for a run without QRS frequency
    content, under NO_QRS_RATIO, which in bigeminy lies in a long interval), (2) every detection
    of the run is weaker than both anchors: a template correlation MATCH_MARGIN under theirs,
    under NO_QRS_RATIO of QRS content where both anchors have QRS_RATIO, or a deflection under
    T_AMP_RATIO of both anchors' (a P or T wave of their shape: a premature beat is seldom
    smaller than 40 % of both neighbours), and (3) none is a large complex with QRS frequency
    content and no match to the templates (an interpolated ectopic beat, which splits a sinus
    interval, is wide, large and steep, of its own shape).
    """
    if out.size < 5:
        return out
    d = out
    rr = np.diff(d).astype(float)
    k = LOCAL_SPAN
    # Beyond the record's ends there are no intervals (NaN, left out of the median): an edge
    # padding would repeat the first or last interval, which may be the run's own.
    pad = np.pad(rr, k, constant_values=np.nan)
    # An interpolated ectopic beat has its own morphology: it matches no template (under
    # MATCH_CORR) or its own cluster's (then it is not weaker than the anchors by shape). A
    # large transient that half matches the anchors' template (between MATCH_CORR and their
    # match less MATCH_MARGIN) is a distorted copy of their shape: motion, not a beat.
    qrs_like = (defl >= LARGE_DEFL) & (ratio >= QRS_RATIO) & (c < MATCH_CORR)
    drop = np.zeros(d.size, dtype=bool)
    for m in range(1, RUN_MAX + 1):
        if d.size < m + 2:
            break
        # Runs of m detections between anchors a = d[i] and z = d[i + m + 1]; the local RR
        # leaves out the run's own m + 1 intervals (rr[i] .. rr[i + m]).
        a = np.arange(d.size - m - 1)
        z = a + m + 1
        win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + m + 1)[: a.size]
        others = np.delete(win, np.arange(k, k + m + 1), axis=1)
        span = d[z] - d[a]
        split = span <= SPLIT_RR * _nan_row_median(others)
        # A run without any QRS frequency content (slow artefacts) is tested against the
        # upper quartile of the local RR instead: in bigeminy half the intervals are short and
        # the median would take the long interval the run lies in for a gap.
        slow = np.ones(a.size, dtype=bool)
        for t in range(1, m + 1):
            slow &= ratio[a + t] < NO_QRS_RATIO
        if slow.any():
            with warnings.catch_warnings():  # a row without intervals (short records): NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                upper = np.nanpercentile(others[slow], RR_PERCENTILE, axis=1)
            split[slow] |= span[slow] <= SPLIT_RR * upper
        c_ref = np.minimum(c[a], c[z])
        r_ref = np.minimum(ratio[a], ratio[z])
        d_ref = np.minimum(defl[a], defl[z])
        ok = split.copy()
        for t in range(1, m + 1):
            i = a + t
            # Weaker than both anchors: a worse template match, or no QRS frequency content
            # at all between two beats that have it.
            weak = ((c[i] < c_ref - MATCH_MARGIN)
                    | ((ratio[i] < NO_QRS_RATIO) & (r_ref >= QRS_RATIO))
                    | (defl[i] < T_AMP_RATIO * d_ref))
            ok &= weak & ~qrs_like[i] & ~drop[i]
        for i in np.flatnonzero(ok):
            drop[i + 1: i + m + 1] = True
    return d[~drop]


def _rhythm_place(out: np.ndarray, match: _Matcher, near_pop: np.ndarray,
                  fs: float) -> np.ndarray:
    """Detections the rhythm places elsewhere: the first pass took a small wave or an electrode
    pop's step for the beat, which lies where the rhythm expects it.

    A detection whose neighbours are two local RR apart (within PLACE_SPAN_TOL; the local RR is
    the median of LOCAL_SPAN intervals either side, its own two left out) is replaced by the
    best strong template match (>= MATCH_CORR, >= STRONG_AMP of its template's amplitude)
    within PHASE_TOL local RR of the middle of its neighbours, when that match is
    MATCH_MARGIN better (correlation times amplitude) than the detection's own and the
    detection is small (under FILL_AMP_RATIO of its template's amplitude: a premature beat of
    any shape is of QRS size) or follows an electrode pop by at most POP_AFTER_S (``near_pop``:
    its shape is the pop's, whatever it matches). A detection after a pop whose neighbours are
    at most SPLIT_RR times the upper quartile of the local RR apart is dropped: it splits one
    interval.
    """
    if out.size < 5:
        return out
    rr = np.diff(out).astype(float)
    k = LOCAL_SPAN
    pad = np.pad(rr, k, constant_values=np.nan)
    # Row j - 1 for interior detection j: the intervals rr[j-1-k .. j+k], its own two dropped.
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 2)[: out.size - 2]
    others = np.delete(win, [k, k + 1], axis=1)
    enough = np.sum(~np.isnan(others), axis=1) >= 3
    loc = np.where(enough, _nan_row_median(np.where(enough[:, None], others, 0.0)), np.nan)
    j = np.arange(1, out.size - 1)
    span = (out[j + 1] - out[j - 1]).astype(float)
    c0 = match.cmax(out[j])
    a0 = match.at(out[j])[1]
    pop = near_pop[j]
    two = enough & (np.abs(span - 2 * loc) <= PLACE_SPAN_TOL * loc)
    look = np.flatnonzero(two & ((a0 < FILL_AMP_RATIO) | pop))
    res = out.copy()
    # Extra detections in a stretch of artefacts shorten the median: the split is judged on
    # the upper quartile of the local RR (as _rhythm_prune judges slow runs).
    drop = np.zeros(j.size, dtype=bool)
    if (pop & enough).any():
        sel = pop & enough
        upper = np.nanpercentile(others[sel], RR_PERCENTILE, axis=1)
        drop[sel] = span[sel] <= SPLIT_RR * upper
    slack = int(MATCH_SLACK_S * fs)
    for t in look.tolist():
        w = int(PHASE_TOL * loc[t])
        mid = (out[t] + out[t + 2]) // 2
        pos = np.arange(max(mid - w, 0), min(mid + w, match.n - 1) + 1)
        cm, am = match.at(pos)
        score = np.where((cm >= MATCH_CORR) & (am >= STRONG_AMP), cm * np.clip(am, 0.0, 1.0),
                         -np.inf)
        i = int(np.argmax(score))
        own = c0[t] * np.clip(a0[t], 0.0, 1.0)
        if np.isfinite(score[i]) and abs(int(pos[i]) - int(out[t + 1])) > slack and (
                pop[t] or score[i] >= own + MATCH_MARGIN):
            res[t + 1] = pos[i]
    keep = np.ones(out.size, dtype=bool)
    keep[j[drop]] = False
    return np.unique(res[keep])


def _local_rr(rr: np.ndarray) -> np.ndarray:
    """Median of each RR interval's neighbours (LOCAL_BEATS either side, itself left out: a
    long gap must not raise its own reference; mirrored at the ends)."""
    k = LOCAL_BEATS
    if rr.size < 2:
        return rr.copy()
    pad = np.pad(rr, k, mode="reflect" if rr.size > k else "edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 1)
    return _row_median(np.delete(win, k, axis=1))


def _nan_row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row over its finite values (NaN where a row has none)."""
    s = np.sort(a, axis=1)  # NaN sorts last
    cnt = np.isfinite(s).sum(axis=1)
    rows = np.arange(s.shape[0])
    lo, hi = np.maximum(cnt - 1, 0) // 2, np.maximum(cnt, 1) // 2
    out = 0.5 * (s[rows, lo] + s[rows, np.minimum(hi, s.shape[1] - 1)])
    return np.where(cnt > 0, out, np.nan)


def _row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row (a sort of short rows costs less than np.median's generic path)."""
    s = np.sort(a, axis=1)
    m = s.shape[1] // 2
    return s[:, m] if s.shape[1] % 2 else 0.5 * (s[:, m - 1] + s[:, m])


class _Deflection:
    """Peak-to-peak deflection within +-``half_s`` of a sample, summed over the leads of ``f``,
    computed only at the samples asked for (detections, searched gaps) rather than over the
    whole record."""

    def __init__(self, f: np.ndarray, half_s: float, fs: float):
        self.f = f
        self.half = max(int(half_s * fs), 1)
        self.n = f.shape[-1]

    def at(self, q: np.ndarray) -> np.ndarray:
        """At the positions ``q`` (the window clipped at the record's ends)."""
        h = self.half
        pos = np.clip(np.asarray(q)[:, None] + np.arange(-h, h + 1)[None, :], 0, self.n - 1)
        w = self.f[:, pos]  # leads x positions x window
        return (w.max(axis=-1) - w.min(axis=-1)).sum(axis=0)

    def span(self, lo: int, hi: int) -> np.ndarray:
        """At every sample of [lo, hi]."""
        h, k = self.half, 2 * self.half + 1
        a, b = max(lo - h, 0), min(hi + h + 1, self.n)
        seg = self.f[:, a:b]
        d = (maximum_filter1d(seg, k, axis=-1) - minimum_filter1d(seg, k, axis=-1)).sum(axis=0)
        return d[lo - a: hi - a + 1]


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    """``filters.moving_average`` (centred, zeros beyond the ends, as np.convolve "same") by
    one cumulative sum instead of an n-tap convolution."""
    n = max(int(n), 1)
    m = x.size
    cs = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(m)
    out = cs[np.minimum(i + (n - 1) // 2 + 1, m)] - cs[np.clip(i - n // 2, 0, m)]
    out *= 1.0 / n
    # The running sum's rounding (~1e-16 of the record's total) can leave -0.0 or a tiny
    # negative value where the energy is zero.
    return np.maximum(out, 0.0, out=out)


def _median(v: list[float] | list[int]) -> float:
    """Median of a short list (np.median costs more than the beat loop it sits in)."""
    s = sorted(v)
    m = len(s) // 2
    return float(s[m]) if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def _reference_lead(f: np.ndarray, qrs: np.ndarray, fs: float) -> int:
    """Row of ``f`` (1-40 Hz, usable leads) with the largest median QRS deflection relative
    to its noise."""
    if qrs.size == 0 or f.shape[0] == 1:
        return 0
    w = int(REFINE_S * fs)
    padded = np.pad(f, ((0, 0), (w, w)), mode="edge")
    q = qrs[:200]
    segs = padded[:, q[:, None] + np.arange(0, 2 * w)[None, :]]  # leads x beats x window
    amps = np.median(np.ptp(segs, axis=-1), axis=-1)
    noise = np.median(np.abs(np.diff(f, axis=-1)), axis=-1) + 1e-9
    return int(np.argmax(amps / noise))


def _refine(f: np.ndarray, energy: np.ndarray, qrs: np.ndarray, fs: float) -> np.ndarray:
    """Move each detection onto its R peak in ``f`` (the reference lead, 1-40 Hz).

    The integrated level peaks at the centre of the QRS energy, which for a wide or notched
    complex can be far from R: first go to the steepest point (the largest energy within half
    the integration window), then to the largest deflection within REFINE_S of it.
    """
    n = f.size
    h = max(int(MWI_S * fs) // 2, 1)
    pe = np.pad(energy, h, mode="edge")
    centre = qrs - h + np.argmax(pe[qrs[:, None] + np.arange(0, 2 * h + 1)[None, :]], axis=1)
    centre = np.clip(centre, 0, n - 1)
    w = int(REFINE_S * fs)
    padded = np.pad(f, w, mode="edge")
    segs = padded[centre[:, None] + np.arange(0, 2 * w + 1)[None, :]]  # [c - w, c + w]
    med = np.median(segs, axis=1, keepdims=True)
    up = (segs - med).max(axis=1)
    down = (med - segs).max(axis=1)
    # The dominant polarity of the reference lead decides whether R is a maximum or a minimum;
    # a beat whose opposite deflection is much larger (an ectopic beat of the other polarity)
    # takes that one, else its R would land on the T wave or the next complex.
    dominant = 1.0 if np.median(up) >= np.median(down) else -1.0
    main, other = (up, down) if dominant > 0 else (down, up)
    sign = np.where(other > POLARITY_RATIO * main, -dominant, dominant)
    rel = sign[:, None] * (segs - med)
    at = np.argmax(rel, axis=1)
    size = rel[np.arange(at.size), at].tolist()
    peaks = np.clip(centre - w + at, 0, n - 1)
    order = np.argsort(peaks, kind="stable")
    # Two detections refined closer than the refractory period (a complex and its P or T wave,
    # or one complex twice): keep the larger deflection, the QRS (not the first: a P wave's
    # candidate would take the place of its QRS).
    refractory = int(REFRACTORY_S * fs)
    keep: list[int] = []
    for k in order.tolist():
        if keep and peaks[k] - peaks[keep[-1]] < refractory:
            if size[k] > size[keep[-1]]:
                keep[-1] = k
            continue
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
