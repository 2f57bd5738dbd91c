"""Wave delineation: median beats, and P, QRS and T boundaries on them and on single beats.

Conventions (documented in ``docs/ecg.md``):

- Work on the diagnostic signal (0.5 Hz zero-phase high-pass, 40 Hz low-pass).
- The isoelectric level of each lead is the mean of the 10 ms just before QRS onset (PR segment);
  amplitudes, ST deviation and wave boundaries are taken relative to it.
- A wave starts where it departs from the level before it, and ends where it settles on the level
  after it, by more than ``MIN_WAVE_MV`` (20 uV, the smallest deflection measurement standards
  count as a wave) or three times the lead's noise, whichever is larger. A departure has to persist
  and a return has to last ``QUIET_MS`` (twice that for T) to count, so noise spikes and zero
  crossings do not end a wave. QRS onset and P offset are taken against the PR level; the J point,
  T end and P onset against the level the lead settles on, found where its slope has become small
  (the ST segment and the TP segment need not sit on the PR level).
- T end and P onset by the tangent method, as acquiring carts measure them: the tangent at the
  steepest descent of the T wave meets the level the lead settles on after it (the median of the
  ``TP_LEVEL_MS`` after a first crossing of the PR level); the tangent at the steepest rise of the
  P wave, extended back, meets the PR level. A lead where the tangent gives no crossing falls back
  on the amplitude rule above.
- Global boundaries take the earliest onset and the latest offset over the usable leads, as the
  standards define global intervals (AHA2007-I); for the P onset and the T end, whose tangents
  run far out in a lead of small slope, the earliest or latest that a second lead confirms
  (within ``CONFIRM_MS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import uniform_filter1d

MIN_WAVE_MV = 0.02
QUIET_MS = 10.0
J_SLOPE_MV_S = 2.0
J_SLOPE_FRACTION = 0.04
PRE_S = 0.45
POST_S = 0.75
P_MIN_MV = 0.04  # smallest median-beat P deflection treated as a P wave in a lead
CONFIRM_MS = 10.0  # a second lead's P onset or T end this close confirms the global one
P_RISE_MAX_MS = 100.0  # P onset to P peak at most (P duration up to about 120 ms, AHA2009-V)
SLOW_SLOPE_MV_S = 0.5  # P and T waves have settled when slower than this (or a fraction of
SLOW_SLOPE_FRACTION = 0.05  # the wave's own steepest slope)
T_PEAK_RR_FRACTION = 0.45
T_PEAK_SLACK_MS = 150.0
TP_LEVEL_MS = 40.0  # the level after the T wave: median of this stretch past the first tangent end


@dataclass
class Fiducials:
    """Sample indices within a beat window (``r`` is the R peak), ``None`` where not found."""

    r: int
    qrs_on: int
    qrs_off: int
    t_peak: int | None = None
    t_end: int | None = None
    p_on: int | None = None
    p_peak: int | None = None
    p_off: int | None = None


@dataclass
class MedianBeat:
    """Median beats of the dominant beats (leads x samples, R at ``r``) and their fiducials."""

    signals: np.ndarray
    fs: float
    leads: list[str]
    r: int
    fid: Fiducials
    baseline: np.ndarray  # isoelectric level per lead (mV)
    beats: list[int]  # indices (into the R-peak list) of the beats in the median
    usable: list[bool] = field(default_factory=list)

    def ms(self, samples: float) -> float:
        return samples * 1000.0 / self.fs


def beat_windows(sig: np.ndarray, r_peaks: np.ndarray, fs: float) -> tuple[np.ndarray, list[int]]:
    """beats x leads x samples windows around each R peak that fits in the record."""
    pre, post = int(PRE_S * fs), int(POST_S * fs)
    keep = [i for i, r in enumerate(r_peaks) if r - pre >= 0 and r + post <= sig.shape[1]]
    if not keep:
        return np.zeros((0, sig.shape[0], pre + post)), []
    idx = np.asarray([r_peaks[i] for i in keep])[:, None] + np.arange(-pre, post)[None, :]
    return np.transpose(sig[:, idx], (1, 0, 2)), keep


def median_beat(sig: np.ndarray, r_peaks: np.ndarray, fs: float, leads: list[str],
                dominant: list[int], usable: list[bool], rr_ms: float) -> MedianBeat | None:
    """The median of the dominant beats and its delineation; None when no beat fits."""
    windows, keep = beat_windows(sig, r_peaks, fs)
    dom = set(dominant)
    chosen = [k for k, i in enumerate(keep) if i in dom]
    if not chosen:
        return None
    used = [keep[k] for k in chosen]
    med = np.median(windows[chosen], axis=0)
    r = int(PRE_S * fs)
    fid, base = delineate(med, fs, r, usable, rr_ms, with_p=True)
    return MedianBeat(med, fs, leads, r, fid, base, used, list(usable))


# ------------------------------------------------------------------------------------------------
# Run helpers: "quiet" masks and the first/last sustained run in a direction


def _runs(mask: np.ndarray, run: int) -> np.ndarray:
    """ok[k] is True when mask[k:k+run] is all True."""
    if mask.size < run:
        return np.zeros(0, dtype=bool)
    c = np.convolve(mask.astype(np.int32), np.ones(run, dtype=np.int32), mode="valid")
    return c == run


def _last_quiet_before(quiet: np.ndarray, start: int, lo: int, run: int) -> int | None:
    """The index just after the last quiet run that ends at or before ``start`` (>= ``lo``)."""
    ok = _runs(quiet, run)
    hi = min(start - run + 1, ok.size - 1)
    if hi < lo:
        return None
    hits = np.flatnonzero(ok[lo: hi + 1])
    if hits.size == 0:
        return None
    return int(lo + hits[-1] + run)


def _first_quiet_after(quiet: np.ndarray, start: int, hi: int, run: int) -> int | None:
    """The first index >= ``start`` where a quiet run begins (run must fit before ``hi``)."""
    ok = _runs(quiet, run)
    end = min(hi - run + 1, ok.size - 1)
    if end < start:
        return None
    hits = np.flatnonzero(ok[start: end + 1])
    if hits.size == 0:
        return None
    return int(start + hits[0])


# ------------------------------------------------------------------------------------------------


def delineate(beat: np.ndarray, fs: float, r: int, usable: list[bool] | None = None,
              rr_ms: float | None = None, with_p: bool = True,
              with_t: bool = True) -> tuple[Fiducials, np.ndarray]:
    """Fiducials of one beat window (leads x samples, R at ``r``) and the per-lead baseline."""
    n_leads, n = beat.shape
    use = [i for i in range(n_leads) if usable is None or usable[i]] or list(range(n_leads))
    run = max(int(round(QUIET_MS * fs / 1000.0)), 2)
    ms = fs / 1000.0
    # A 10 ms moving average halves the residual noise of a median beat while moving the 20 uV
    # crossings of even narrow waves by under 1 ms; boundaries are searched on it.
    beat = uniform_filter1d(np.asarray(beat, dtype=np.float64), size=run, axis=1, mode="nearest")
    signed = np.gradient(beat, axis=1) * fs  # mV/s
    slope = np.abs(signed)
    combined = slope[use].sum(axis=0)

    # 1. coarse QRS onset from the combined slope, then the PR-segment baseline just before it
    lo_search = max(r - int(200 * ms), 0)
    coarse = _coarse_onset(combined, r, ms)
    iso = _isoelectric_window(combined, coarse, ms)
    base = beat[:, iso[0]:iso[1]].mean(axis=1)
    noise = _noise(beat, iso)
    thr = np.maximum(MIN_WAVE_MV, 3.0 * noise)
    onsets = []
    for i in use:
        quiet = np.abs(beat[i] - base[i]) <= thr[i]
        on = _last_quiet_before(quiet, r, max(iso[0], lo_search), run)
        onsets.append(on if on is not None else coarse)
    qrs_on = int(min(onsets))

    # 2. J point: every usable lead's slope stays low for QUIET_MS
    qrs_slope = slope[:, qrs_on: min(r + int(150 * ms), n)].max(axis=1)
    # slope noise: robust spread of the sample-to-sample change of the slope over the whole
    # window (slow waves barely change it; noise does)
    slope_noise = 1.4826 * np.median(np.abs(np.diff(signed, axis=1)), axis=1) / np.sqrt(2.0)
    slope_thr = np.maximum(np.maximum(J_SLOPE_MV_S, J_SLOPE_FRACTION * qrs_slope),
                           3.0 * slope_noise)
    hi_search = min(r + int(250 * ms), n)
    offsets = []
    for i in use:
        off = _settle_forward(beat[i], slope[i] <= slope_thr[i], r, hi_search, thr[i], run,
                              trend=True)
        offsets.append(off if off is not None else hi_search - 1)
    qrs_off = int(max(offsets))
    fid = Fiducials(r=r, qrs_on=qrs_on, qrs_off=qrs_off)

    # 3. T wave: largest deflection after J; it ends where every lead has settled on the level
    # that follows it (the TP segment, which need not equal the PR segment level)
    t_hi = n - 2 * run - 1
    if rr_ms:
        t_hi = min(t_hi, r + int((min(rr_ms, 1500.0) - 90.0) * ms))
    t_lo = qrs_off + int(40 * ms)
    # the T peak comes before the next beat's P wave: within the longest QT a rate allows
    # (QT peak by 0.45 RR + 150 ms), so a small T wave does not lose to the next P wave
    tp_hi = min(t_hi, r + int((T_PEAK_RR_FRACTION * rr_ms + T_PEAK_SLACK_MS) * ms)) \
        if rr_ms else t_hi
    if with_t and tp_hi - t_lo > int(60 * ms):
        dev = beat[:, t_lo:tp_hi] - base[:, None]
        amp = np.abs(dev).max(axis=1)
        best = max(use, key=lambda i: amp[i])
        if amp[best] >= 2 * MIN_WAVE_MV:
            fid.t_peak = int(t_lo + np.argmax(np.abs(dev[best])))
            ends = []
            for i in use:
                if amp[i] < max(0.1, 0.2 * amp[best]):
                    continue
                pk = int(t_lo + np.argmax(np.abs(dev[i])))
                if abs(pk - fid.t_peak) > int(80 * ms):
                    # T waves are near-simultaneous in all leads (one repolarisation vector);
                    # a far-off peak is another wave (a U wave, the next P wave)
                    continue
                # start where the T wave falls fastest: its flat top must not count as settled
                steep = pk + int(np.argmax(slope[i, pk: min(pk + int(150 * ms), t_hi)]))
                # Tangent method (the tangent at the steepest descent meets the isoelectric
                # level), the convention of the acquiring carts and of the QT literature; a lead
                # whose slope gives no crossing settles by amplitude instead
                end = _tangent_end(beat[i], signed[i], steep, base[i], fs)
                if end is not None and end < t_hi:
                    # the level the lead settles on after T (start of the TP segment) is the
                    # reference, not the PR level: TP often sits above it, and a tangent run
                    # down to the PR level would overshoot the end
                    after = beat[i, end: min(end + int(TP_LEVEL_MS * ms), t_hi)]
                    if after.size >= run:
                        end = _tangent_end(beat[i], signed[i], steep, float(np.median(after)),
                                           fs) or end
                if end is None or end > t_hi:
                    t_slope = float(slope[i, t_lo:t_hi].max())
                    s_thr = max(SLOW_SLOPE_MV_S, SLOW_SLOPE_FRACTION * t_slope,
                                3.0 * slope_noise[i])
                    end = _settle_forward(beat[i], slope[i] <= s_thr, steep, t_hi + 2 * run,
                                          thr[i], 2 * run)
                if end is not None:
                    ends.append(min(end, t_hi))
            fid.t_end = _confirmed(ends, True, int(CONFIRM_MS * ms))

    # 4. P wave: between the previous T wave and the QRS
    if with_p:
        _find_p(beat, signed, fs, fid, base, thr, slope_noise, use, rr_ms, run)
    return fid, base


def _confirmed(points: list[int], latest: bool, within: int) -> int | None:
    """The latest (or earliest) boundary that a second lead confirms, within ``within``
    samples. A slow wave in one lead stretches its tangent far out (a T or P of small slope, a
    baseline still sloping), and one lead must not move a global interval. Without any
    agreeing pair, the median."""
    if not points:
        return None
    ordered = sorted(points, reverse=latest)
    if len(ordered) < 3:
        return int(ordered[0])
    for k, p in enumerate(ordered[:-1]):
        if abs(ordered[k + 1] - p) <= within:
            return int(p)
    return int(np.median(ordered))


def _settle_forward(x: np.ndarray, quiet_slope: np.ndarray, start: int, stop: int,
                    amp_thr: float, run: int, trend: bool = False) -> int | None:
    """End of a wave in one lead: the first place after ``start`` where the slope stays quiet
    for ``run`` samples, moved back to where the signal came within ``amp_thr`` of the level it
    settles on. That level is extrapolated from the quiet stretch, which may still slope (an ST
    segment rising into the T wave)."""
    off = _first_quiet_after(quiet_slope, start, stop, run)
    if off is None:
        return None
    k = np.arange(off, min(off + run, x.size))
    if trend and k.size > 2:
        # least-squares line through the quiet stretch (closed form; polyfit is slow here)
        t = (k - off).astype(np.float64)
        tc = t - t.mean()
        slope = float(tc @ (x[k] - x[k].mean()) / (tc @ tc))
        level0 = float(x[k].mean() - slope * t.mean())
    else:
        slope, level0 = 0.0, float(np.median(x[k]))
    ks = np.arange(start, min(off + run, x.size))
    level = level0 + slope * (ks - off)
    moving = np.flatnonzero(np.abs(x[ks] - level) > amp_thr)
    return start + int(moving[-1]) + 1 if moving.size else start


def _settle_backward(x: np.ndarray, quiet_slope: np.ndarray, start: int, stop: int,
                     amp_thr: float, run: int) -> int | None:
    """Start of a wave in one lead, mirroring ``_settle_forward``: scanning back from ``start``
    (the wave's peak) to the quiet stretch before it, then forward to where the signal leaves
    the level of that stretch by more than ``amp_thr``."""
    end = _last_quiet_before(quiet_slope, start, stop, run)
    if end is None:
        return None
    # the earlier half of the quiet stretch: the wave may already be creeping up at its end
    k = np.arange(max(end - 2 * run, 0), max(end - run, 1))
    level = float(np.median(x[k]))
    ks = np.arange(k[0], start + 1)
    away = np.flatnonzero(np.abs(x[ks] - level) > amp_thr)
    return int(ks[away[0]]) if away.size else start


def _tangent_end(x: np.ndarray, signed_slope: np.ndarray, steep: int, level: float,
                 fs: float) -> int | None:
    """Where the tangent at the steepest point of the T wave's descent meets ``level``."""
    g = float(signed_slope[steep])  # mV/s
    if abs(g) < 1e-9:
        return None
    dt_s = (level - float(x[steep])) / g
    if dt_s <= 0:
        return None
    return steep + int(round(dt_s * fs))


def _tangent_start(x: np.ndarray, signed_slope: np.ndarray, steep: int, level: float,
                   fs: float) -> int | None:
    """Where the tangent at the steepest point of a wave's rise, extended back, meets ``level``."""
    g = float(signed_slope[steep])
    if abs(g) < 1e-9:
        return None
    dt_s = (float(x[steep]) - level) / g
    if dt_s <= 0:
        return None
    return steep - int(round(dt_s * fs))


def _coarse_onset(combined: np.ndarray, r: int, ms: float) -> int:
    """Walk back from the steepest point near R while the smoothed combined slope stays above
    10 % of its peak, allowing dips of up to 20 ms between QRS components."""
    k = max(int(8 * ms), 1)
    smooth = np.convolve(combined, np.ones(k) / k, mode="same")
    a, b = max(r - int(80 * ms), 0), min(r + int(80 * ms), smooth.size)
    top = a + int(np.argmax(smooth[a:b]))
    level = 0.1 * smooth[top]
    lo = max(r - int(200 * ms), 0)
    gap_max = int(20 * ms)
    coarse, gap, i = top, 0, top
    while i > lo and gap <= gap_max:
        i -= 1
        if smooth[i] > level:
            coarse, gap = i, 0
        else:
            gap += 1
    return coarse


def _isoelectric_window(combined: np.ndarray, coarse: int, ms: float) -> tuple[int, int]:
    """The PR-segment window (10 ms) used as the isoelectric level: among the windows in the
    80 ms before the coarse QRS onset, the one nearest the QRS whose mean combined slope is within
    twice the flattest one (the P wave's flat top lies further from the QRS than the PR segment)."""
    w = max(int(10 * ms), 2)
    hi = max(coarse - int(4 * ms), w)
    lo = max(coarse - int(80 * ms), 0)
    if hi - lo < w:
        return max(hi - w, 0), max(hi, 1)
    c = np.convolve(combined[lo:hi], np.ones(w) / w, mode="valid")
    ok = np.flatnonzero(c <= 2.0 * c.min() + 1e-9)
    start = lo + int(ok[-1])
    return start, start + w


def _noise(beat: np.ndarray, iso: tuple[int, int]) -> np.ndarray:
    """Per-lead noise in the isoelectric window from second differences (which cancel slow
    waves and keep white noise)."""
    a, b = iso[0] - 10, iso[1] + 10
    seg = beat[:, max(a, 0): b]
    if seg.shape[1] < 4:
        return np.zeros(beat.shape[0])
    return np.std(np.diff(seg, n=2, axis=1), axis=1) / np.sqrt(6.0)


def _find_p(beat: np.ndarray, signed: np.ndarray, fs: float, fid: Fiducials, base: np.ndarray,
            thr: np.ndarray, slope_noise: np.ndarray, use: list[int], rr_ms: float | None,
            run: int) -> None:
    ms = fs / 1000.0
    slope = np.abs(signed)
    hi = fid.qrs_on - int(20 * ms)
    lo = max(fid.qrs_on - int(420 * ms), 0)
    if rr_ms and fid.t_end is not None:
        # the previous beat's T wave ends at (T end - RR) in this window
        lo = max(lo, fid.t_end - int(rr_ms * ms) + int(20 * ms))
    if hi - lo < int(40 * ms):
        return
    dev = beat[:, lo:hi] - base[:, None]
    # a P wave is a peak inside the window: the tail of the previous T wave, still falling at
    # the window's start, is largest at its edge and is no P wave
    mag = np.abs(dev)
    inner = np.zeros_like(mag, dtype=bool)
    inner[:, 1:-1] = (mag[:, 1:-1] >= mag[:, :-2]) & (mag[:, 1:-1] > mag[:, 2:])
    mag = np.where(inner, mag, 0.0)
    amp = mag.max(axis=1)
    best = max(use, key=lambda i: amp[i])
    if amp[best] < P_MIN_MV:
        return
    fid.p_peak = int(lo + np.argmax(mag[best]))
    ons, offs = [], []
    for i in use:
        if amp[i] < max(P_MIN_MV, 0.3 * amp[best]):
            continue
        pk = int(lo + np.argmax(mag[i]))
        if abs(pk - fid.p_peak) > int(60 * ms):
            continue
        # start where the P wave rises fastest: its flat top must not count as settled
        a = max(pk - int(60 * ms), lo)
        steep = a + int(np.argmax(slope[i, a: pk + 1]))
        # tangent method, as for the T end: the tangent at the steepest rise meets the PR level
        on = _tangent_start(beat[i], signed[i], steep, base[i], fs)
        # a P wave peaks within P_RISE_MAX_MS of its onset (it lasts at most about 120 ms): a
        # tangent running further back is the slow tail of the previous T wave
        if on is None or on < max(lo - int(60 * ms), 0) or pk - on > int(P_RISE_MAX_MS * ms):
            p_slope = float(slope[i, lo:hi].max())
            s_thr = max(SLOW_SLOPE_MV_S, SLOW_SLOPE_FRACTION * p_slope, 3.0 * slope_noise[i])
            on = _settle_backward(beat[i], slope[i] <= s_thr, steep, max(lo - int(60 * ms), 0),
                                  thr[i], run)
        # the P wave ends on the PR segment, which is the baseline
        quiet = np.abs(beat[i] - base[i]) <= thr[i]
        off = _first_quiet_after(quiet, pk, fid.qrs_on + run, run)
        if on is not None:
            ons.append(on)
        if off is not None:
            offs.append(off)
    if ons:
        fid.p_on = _confirmed(ons, False, int(CONFIRM_MS * ms))
    if offs:
        fid.p_off = int(min(max(offs), fid.qrs_on))
