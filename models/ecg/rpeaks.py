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
   of the reference lead within +-100 ms (the other polarity when it is 1.5x larger);
6. a second pass over the whole record (``_second_pass``): T waves kept after large ectopic
   beats are dropped (early and much smaller than both their QRS and the typical QRS), and
   gaps longer than 1.5 upper-quartile RR are searched for the missed beat (wide ectopic beats,
   small beats beside large ones) by their 1-40 Hz deflection;
7. a template stage on the reference lead (``_template_pass``): QRS shapes of the detections are
   clustered (dominant and ectopic morphologies); a detection matching no template moves to a
   strong match within 150 ms (wrong candidate), is dropped when it has neither a template's
   shape nor QRS frequency content nor a QRS's size (T waves, motion), and long RR gaps are
   searched for strong template matches of any amplitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d
from scipy.signal import fftconvolve, find_peaks

from models.ecg.filters import bandpass, moving_average

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
# Twice the median QRS deflection: an ectopic beat, not a smaller artefact or T wave.
LARGE_DEFL = 2.0
# Refinement takes the opposite polarity when that deflection is this many times larger.
POLARITY_RATIO = 1.5


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
    median5 = median3(e, max(min(a, b), min(c, d)), min(max(a, b), max(c, d)))."""
    if x.shape[-1] < 5:
        return x
    p = np.pad(x, ((0, 0), (2, 2)), mode="edge")
    n = x.shape[-1]
    a, b, c, d, e = (p[:, i: i + n] for i in range(5))
    f = np.maximum(np.minimum(a, b), np.minimum(c, d))
    g = np.minimum(np.maximum(a, b), np.maximum(c, d))
    return np.maximum(np.minimum(e, f), np.minimum(np.maximum(e, f), g))


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
    level = np.sqrt(moving_average(fused, int(MWI_S * fs)))
    wide = bandpass(x, fs, 1.0, 40.0)
    slope = np.sqrt(np.sum(np.gradient(wide, axis=-1) ** 2, axis=0)) * fs
    qrs = _classify(level, slope, fs)
    k = _reference_lead(wide, qrs, fs)
    peaks = _refine(wide[k], energy, qrs, fs) if qrs.size else qrs
    peaks = _second_pass(wide, peaks, fs)
    peaks = _template_pass(x[k], wide[k], peaks, fs)
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

    def signal_level() -> float:
        # The typical QRS, not the largest: the median of the last beats, so one large ectopic
        # beat (or an accepted artefact) does not raise the threshold over the normal beats.
        return _median(levels[-SIGNAL_BEATS:])

    def threshold() -> float:
        return npk + THRESHOLD_FRACTION * (signal_level() - npk)

    def accept(i: int) -> None:
        if qrs:
            rr.append(i - qrs[-1])
        qrs.append(int(i))
        levels.append(float(level[i]))
        qrs_slopes.append(peak_slope(i))

    last_checked = 0
    for c_i, c in enumerate(cand):
        val = float(level[c])
        rr_avg = _median(rr[-8:]) if rr else float("inf")
        # Search back for a missed beat when the gap has grown too long.
        if qrs and c - qrs[-1] > SEARCHBACK_FACTOR * rr_avg:
            lo, hi = qrs[-1] + refractory, c - refractory
            thr = threshold()
            pool = [k for k in cand[last_checked:c_i] if lo <= k <= hi and level[k] > 0.5 * thr]
            if pool:
                accept(int(max(pool, key=lambda k: level[k])))
        if val > threshold():
            if qrs:
                gap = c - qrs[-1]
                typical = max(qrs_slopes[-1], _median(qrs_slopes[-SIGNAL_BEATS:]))
                if gap < refractory or (gap < min(t_window, T_WAVE_RR_FRACTION * rr_avg)
                                        and peak_slope(c) < T_SLOPE_RATIO * typical):
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
    amp = _deflection(f, AMP_HALF_S, fs)
    a = amp[peaks]
    med = float(np.median(a))
    gap = np.diff(peaks)
    t_wave = np.zeros(peaks.size, dtype=bool)
    t_wave[1:] = ((gap < T_REJECT_S * fs) & (a[1:] < T_AMP_RATIO * a[:-1])
                  & (a[1:] < T_AMP_RATIO * med))
    peaks = peaks[~t_wave]
    if peaks.size < 3:
        return peaks
    med = float(np.median(amp[peaks]))
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
            seg = amp[lo: hi + 1]
            i = lo + int(np.argmax(seg))
            # Large against the record's QRS, or (a smaller, wide beat) clear of the gap's
            # own baseline.
            if amp[i] >= FILL_AMP_RATIO * med or (amp[i] >= FILL_MIN_RATIO * med
                                                  and amp[i] >= FILL_CLEAR * np.median(seg)):
                found.append(i)
                added = True
        if not added:
            break
    if len(found) == peaks.size:
        return peaks
    return np.unique(np.asarray(found, dtype=int))


def _template_pass(x: np.ndarray, f: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
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
       beside the beat.
    2. Shape test (T waves, motion artefacts): a detection is dropped when it matches no
       template (< KEEP_CORR), has no QRS-like frequency content (energy ratio of 10-25 Hz to
       1-5 Hz under QRS_RATIO of the record's typical detection: T waves and motion are slow)
       and is not larger than the typical QRS (a unique large ectopic beat has no template).
    """
    n = x.size
    h = int(TEMPLATE_HALF_S * fs)
    if peaks.size < 2 * CLUSTER_MIN or n <= 2 * h + 1:
        return peaks
    xx = x[None]
    b = bandpass(xx, fs, 5.0, 25.0)[0]
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
    # Cross-correlation of every template with the record (templates x samples).
    stack = np.broadcast_to(b, tt.shape[:1] + b.shape)
    num = fftconvolve(stack, tt[:, ::-1], mode="same", axes=-1)
    cs = np.cumsum(np.r_[0.0, b * b])
    idx = np.arange(n)
    norm = np.sqrt(cs[np.minimum(idx + h + 1, n)] - cs[np.maximum(idx - h, 0)]) + 1e-12
    corr = num / norm
    scale = np.array([np.median(num[j, peaks[m]]) for j, m in enumerate(members)])
    amp = num / np.where(np.abs(scale) > 0, scale, 1.0)[:, None]
    best = np.argmax(corr, axis=0)
    cm = corr[best, idx]
    am = amp[best, idx]
    # Frequency content: 10-25 Hz (QRS) energy over the QRS window against the 1-5 Hz (T wave,
    # motion) energy over +-LF_HALF_S, the span of a T wave or a motion transient.
    hf = bandpass(xx, fs, 10.0, 25.0)[0]
    lf = bandpass(xx, fs, 1.0, 5.0)[0]
    ratio = (uniform_filter1d(hf * hf, 2 * h + 1)
             / (uniform_filter1d(lf * lf, 2 * int(LF_HALF_S * fs) + 1) + 1e-12))
    ratio = ratio / (np.median(ratio[peaks]) + 1e-12)
    a_half = int(AMP_HALF_S * fs)
    fpad = np.pad(f, a_half, mode="edge")
    a_offs = np.arange(2 * a_half + 1)

    def deflection(q: np.ndarray) -> np.ndarray:
        return np.ptp(fpad[q[:, None] + a_offs[None, :]], axis=1)

    defl = deflection(peaks)
    med_defl = float(np.median(defl))
    # Local match of each detection: within +-MATCH_SLACK_S (the refined R and the template's
    # centre may differ by a few samples).
    s = int(MATCH_SLACK_S * fs)
    cmax = maximum_filter1d(cm, 2 * s + 1)
    r = int(RECENTRE_S * fs)
    score = cm * np.clip(am, 0.0, 1.0)
    refractory = int(REFRACTORY_S * fs)
    out = peaks.copy()
    for j, p in enumerate(peaks):
        if cmax[p] >= MATCH_CORR:
            continue
        lo, hi = max(p - r, 0), min(p + r + 1, n)
        q = lo + int(np.argmax(score[lo:hi]))
        if cm[q] < STRONG_CORR or am[q] < STRONG_AMP:
            continue
        prev_ok = j == 0 or q - out[j - 1] >= refractory
        next_ok = j == peaks.size - 1 or peaks[j + 1] - q >= refractory
        if prev_ok and next_ok:
            out[j] = q
    keep = (cmax[out] >= KEEP_CORR) | (ratio[out] >= QRS_RATIO) | (deflection(out) >= med_defl)
    out = np.unique(out[keep])
    # 3. Gaps: an RR interval longer than GAP_RR times the local RR (the median of the
    # intervals around it), or an edge of the record longer than one local RR, holds a missed
    # beat when a strong template match lies at least REFRACTORY_S from both neighbours.
    fill = np.where((cm >= FILL_CORR) & (am >= STRONG_AMP), score, -np.inf)
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
            q = lo + int(np.argmax(fill[lo: hi + 1]))
            if np.isfinite(fill[q]):
                added.append(q)
        if not added:
            break
        out = np.unique(np.r_[out, added])
    out = _rhythm_prune(out, cmax, deflection(out) / med_defl, ratio)
    global DEBUG
    DEBUG = dict(out=out.copy(), cmax=cmax, c0=maximum_filter1d(corr[0], 2 * s + 1),
                 defl=deflection(out) / med_defl, am=maximum_filter1d(am, 2 * s + 1),
                 ratio=ratio)
    return out


def _rhythm_prune(out: np.ndarray, cmax: np.ndarray, defl: np.ndarray,
                  ratio: np.ndarray) -> np.ndarray:
    """Drop detections that split one regular RR interval and match the templates less well
    than both their neighbours (motion transients, T waves and noise that pass the shape test).

    ``cmax``: best template correlation of every sample; ``defl``: each detection's QRS
    deflection over the record's median; ``ratio``: relative 10-25 Hz / 1-5 Hz content. A
    detection j is dropped when (1) its two intervals together are at most SPLIT_RR of the local
    RR (the median of the LOCAL_SPAN intervals either side, its own two left out), (2) its
    template correlation is MATCH_MARGIN under that of both neighbours, and (3) it is not a
    large complex with QRS frequency content (an interpolated ectopic beat, which splits a
    sinus interval, is wide, large and steep).
    """
    if out.size < 5:
        return out
    d = out
    rr = np.diff(d).astype(float)
    c = cmax[d]
    j = np.arange(1, d.size - 1)
    comb = (d[2:] - d[:-2]).astype(float)
    # Local RR around each inner detection, its own two intervals (rr[j-1], rr[j]) left out.
    k = LOCAL_SPAN
    pad = np.pad(rr, k, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 2)  # rr[j-1-k .. j+k]
    win = win[: j.size]
    local = np.median(np.delete(win, [k, k + 1], axis=1), axis=1)
    split = comb <= SPLIT_RR * local
    weaker = c[1:-1] < np.minimum(c[:-2], c[2:]) - MATCH_MARGIN
    qrs_like = (defl[1:-1] >= LARGE_DEFL) & (ratio[d[1:-1]] >= QRS_RATIO)
    drop = np.zeros(d.size, dtype=bool)
    drop[1:-1] = split & weaker & ~qrs_like
    return d[~drop]


def _local_rr(rr: np.ndarray) -> np.ndarray:
    """Median of each RR interval's neighbours (LOCAL_BEATS either side, itself left out: a
    long gap must not raise its own reference; mirrored at the ends)."""
    k = LOCAL_BEATS
    if rr.size < 2:
        return rr.copy()
    pad = np.pad(rr, k, mode="reflect" if rr.size > k else "edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 1)
    return np.median(np.delete(win, k, axis=1), axis=1)


def _deflection(f: np.ndarray, half_s: float, fs: float) -> np.ndarray:
    """Peak-to-peak deflection within +-``half_s`` of each sample, summed over the leads."""
    k = 2 * max(int(half_s * fs), 1) + 1
    return (maximum_filter1d(f, k, axis=-1) - minimum_filter1d(f, k, axis=-1)).sum(axis=0)


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
    peaks = centre - w + np.argmax(sign[:, None] * segs, axis=1)
    peaks = np.unique(np.clip(peaks, 0, n - 1))
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
