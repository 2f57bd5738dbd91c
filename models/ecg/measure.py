"""ECG measurements: rate and rhythm statistics, intervals, axes, amplitudes, ST levels, ectopy.

``analyse(record)`` runs quality assessment, R-peak detection, per-beat classification and
median-beat delineation and returns an ``EcgAnalysis``: plain numbers (``values``, ``per_lead``)
for the interpretation rules and ``models.base.Measurement`` objects for the result. Every
measurement says where it was taken (``Where``: lead, beat indices, time span) so a viewer can
show it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.base import Measurement, Where
from models.ecg import atrial, pacing
from models.ecg import criteria as C
from models.ecg import rpeaks as rp
from models.ecg.delineate import PRE_S, MedianBeat, beat_windows, delineate, median_beat
from models.ecg.filters import diagnostic
from models.ecg.quality import LeadQuality, assess
from models.ecg.signal import EcgRecord

# LOINC codes of the classic ECG measurements (QTc: one code, whatever the formula).
LOINC = {
    "heart_rate": "LOINC:8867-4", "pr_interval": "LOINC:8625-6", "qrs_duration": "LOINC:8633-0",
    "qt_interval": "LOINC:8634-8", "qtc_bazett": "LOINC:8636-3",
    "qtc_fridericia": "LOINC:8636-3", "p_axis": "LOINC:8626-4", "qrs_axis": "LOINC:8632-2",
    "t_axis": "LOINC:8638-9",
}
MAX_MEDIAN_BEATS = 300  # enough for a stable median; long Holter records are not re-read whole
CORR_DOMINANT = 0.9  # a beat joins the median when its QRS correlates this well with the first one
ST_AT_MS = 60.0  # ST deviation is measured at J + 60 ms


@dataclass
class Beat:
    """One detected beat: R sample, preceding RR, classification and QRS width."""

    index: int
    r: int
    rr_prev_ms: float | None
    premature: bool = False
    kind: str = "N"  # N dominant/normal, V ventricular ectopic, A supraventricular ectopic
    correlation: float = 1.0
    qrs_ms: float | None = None
    qrs_bounds: tuple[int, int] | None = None  # QRS onset and end, samples from R (ectopics)
    has_p: bool | None = None
    p_event: int | None = None  # the atrial event (P peak, sample) that precedes this QRS
    pr_ms: float | None = None  # its PR (P onset to QRS onset, from the median P's shape)
    premature_p: bool = False  # that P came earlier than the atrial rhythm predicts
    aberrant: bool = False  # supraventricular (a premature P before it) with a wide QRS
    compensatory: bool | None = None  # coupling + next RR ~ twice the dominant RR
    paced: str | None = None  # "ventricular" or "atrial" when a pacing spike leads it
    fiducials: dict[str, int] = field(default_factory=dict)  # absolute sample indices


@dataclass
class EcgAnalysis:
    record: EcgRecord
    quality: list[LeadQuality]
    peaks: rp.RPeaks
    beats: list[Beat]
    median: MedianBeat | None
    values: dict[str, float] = field(default_factory=dict)
    per_lead: dict[str, dict[str, float]] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    p_lead: str | None = None  # the lead where the median P wave is largest
    atrial: atrial.AtrialActivity | None = None
    spikes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    flutter: tuple[float, float, float] | None = None  # cycle ms, its and the RR's correlation
    pauses: list[dict[str, Any]] = field(default_factory=list)  # dropped beats (AV block)

    def measurement_id(self, name: str, lead: str | None = None) -> str | None:
        want = f"m:{name}:{lead}" if lead else f"m:{name}"
        return want if any(m.id == want for m in self.measurements) else None

    def raw(self) -> dict[str, Any]:
        """A JSON-friendly summary for ``EngineResult.raw``."""
        fid = self.median.fid if self.median else None
        return {
            "leads": list(self.record.leads),
            "duration_s": round(self.record.duration_s, 3),
            "fs": self.record.fs,
            "original_fs": self.record.original_fs,
            "derived_leads": list(self.record.derived_leads),
            "notes": list(self.record.notes),
            "r_peaks_s": [round(int(p) / self.record.fs, 4) for p in self.peaks.peaks],
            "reference_lead": self.peaks.reference_lead,
            "beat_kinds": "".join(b.kind for b in self.beats),
            "atrial_events_s": ([round(int(e) / self.record.fs, 4) for e in self.atrial.events]
                                if self.atrial else []),
            "pacing_spikes_s": [round(int(e) / self.record.fs, 4) for e in self.spikes],
            "beat_fiducials_s": [
                {k: round(v / self.record.fs, 4) for k, v in b.fiducials.items()}
                for b in self.beats if b.fiducials],
            "median_beats": list(self.median.beats) if self.median else [],
            "median_fiducials_ms": (
                {k: round(self.median.ms(v - self.median.r), 1)
                 for k, v in vars(fid).items() if v is not None} if fid else {}),
            "values": {k: round(v, 4) for k, v in self.values.items()},
        }


def analyse(record: EcgRecord) -> EcgAnalysis:
    """Measure one ECG record (any lead set; 12-lead measurements need the 12 leads)."""
    fs = record.fs
    # pacing stimuli first, on the raw signal, then bridged over so nothing else sees them
    spikes = pacing.spikes(record.signals_mv, fs, [True] * len(record.leads))
    signals = pacing.without_spikes(record.signals_mv, spikes, fs)
    diag = diagnostic(signals, fs)
    quality = assess(signals, fs, record.leads, band=diag)
    usable = [q.adequate for q in quality]
    warnings = [f"lead {q.lead}: {', '.join(q.issues)}" for q in quality if not q.adequate]
    peaks = rp.detect(signals, fs, record.leads, usable)
    a = EcgAnalysis(record, quality, peaks, [], None, warnings=warnings, spikes=spikes)
    for q in quality:
        a.measurements.append(Measurement("signal_quality", q.score, "1",
                                          where=Where(lead=q.lead,
                                                      instance_uid=record.instance_uid)))
    if peaks.peaks.size < 3:
        a.warnings.append(f"only {peaks.peaks.size} QRS complexes detected: no rhythm or interval "
                          "measurement is possible")
        return a
    a.beats = _classify_beats(diag, peaks.peaks, fs, usable)
    dominant = [b.index for b in a.beats if b.kind == "N"][:MAX_MEDIAN_BEATS]
    rr_dom = _rr_of(a.beats, normal_only=True)
    rr_ms = float(np.mean(rr_dom)) if rr_dom.size else float(np.mean(peaks.rr_ms))
    a.median = median_beat(diag, peaks.peaks, fs, record.leads, dominant, usable, rr_ms)
    if a.median is None:
        a.warnings.append("no complete beat to build a median beat from")
    _rhythm_values(a)
    if a.median is not None:
        _p_consistency(a, diag)
        _median_values(a)
        _atrial_activity(a, diag, usable, rr_ms)
        _refine_ectopy(a, rr_ms)
        _rhythm_values(a)  # again: the irregularity leaves out the ectopic beats now known
    if a.median is not None:
        _av_values(a)
        _delineate_beats(a, diag, usable, rr_ms)
    _to_measurements(a)
    return a


def _delineate_beats(a: EcgAnalysis, diag: np.ndarray, usable: list[bool], rr_ms: float) -> None:
    """P, QRS and T fiducials of every beat, for display and beat-level review, in one pass:
    the median beat's QRS and T boundaries placed at each beat's R peak, the beat's own P wave
    (its atrial event, with the median P's onset and offset around it) and, for a beat unlike
    the dominant one, its own QRS boundaries (its T wave is not delineated)."""
    m = a.median
    assert m is not None
    fid = m.fid
    rel = {name: int(val) - m.r for name, val in vars(fid).items()
           if val is not None and name not in ("r", "p_on", "p_peak", "p_off")}
    p_rel = ({"p_on": fid.p_on - fid.p_peak, "p_off": fid.p_off - fid.p_peak}
             if None not in (fid.p_on, fid.p_peak, fid.p_off) else {})
    n = a.record.n_samples
    for b in a.beats:
        f = {"r": b.r}
        if b.kind in ("V", "Q") and b.qrs_bounds is not None:
            f["qrs_on"], f["qrs_off"] = b.r + b.qrs_bounds[0], b.r + b.qrs_bounds[1]
        else:
            f.update({name: b.r + off for name, off in rel.items()})
        if b.p_event is not None and b.kind != "V":
            f["p_peak"] = b.p_event
            f.update({name: b.p_event + off for name, off in p_rel.items()})
        b.fiducials = {k: v for k, v in f.items() if 0 <= v < n}


# ------------------------------------------------------------------------------------------------
# Beats


def _classify_beats(diag: np.ndarray, peaks: np.ndarray, fs: float,
                    usable: list[bool]) -> list[Beat]:
    use = [i for i, u in enumerate(usable) if u] or list(range(diag.shape[0]))
    beats = [Beat(i, int(r), (float(r - peaks[i - 1]) * 1000.0 / fs) if i else None)
             for i, r in enumerate(peaks)]
    windows, keep = beat_windows(diag, peaks, fs)
    if not keep:
        return beats
    # QRS shape: +-60 ms around R in every usable lead, compared with the median shape
    r0 = int(PRE_S * fs)
    w = int(0.06 * fs)
    # per lead, then the median over the leads: one noisy or wandering lead does not make a beat
    # look ectopic, and a change of shape must show in most leads
    shapes = windows[:, use, r0 - w: r0 + w]
    shapes = shapes - shapes.mean(axis=2, keepdims=True)
    template = np.median(shapes, axis=0)
    num = np.einsum("bls,ls->bl", shapes, template)
    den = np.linalg.norm(shapes, axis=2) * (np.linalg.norm(template, axis=1)[None, :] + 1e-12)
    # weight leads by the template's QRS energy so that a flat lead's noise does not vote
    weight = np.linalg.norm(template, axis=1)
    per_lead = num / (den + 1e-12)
    corr = np.asarray([_weighted_median(row, weight) for row in per_lead])
    rr = np.array([b.rr_prev_ms if b.rr_prev_ms else np.nan for b in beats])
    for k, i in enumerate(keep):
        beats[i].correlation = float(corr[k])
    for beat in beats:
        i = beat.index
        neigh = [x for x in np.r_[rr[max(i - 4, 0): i], rr[i + 1: i + 5]] if np.isfinite(x)]
        if beat.rr_prev_ms and neigh:
            local = float(np.median(neigh))
            beat.premature = beat.rr_prev_ms < C.PREMATURE_RR_FRACTION.value * local
    # QRS width of the beats that may be ectopic (premature or unlike the others); delineating
    # every beat of a long record would cost time for nothing
    pos = {i: k for k, i in enumerate(keep)}
    for beat in beats:
        if (beat.premature or beat.correlation < CORR_DOMINANT) and beat.index in pos:
            fid, _ = delineate(windows[pos[beat.index]], fs, r0, usable, with_p=False,
                               with_t=False)
            beat.qrs_ms = (fid.qrs_off - fid.qrs_on) * 1000.0 / fs
            beat.qrs_bounds = (fid.qrs_on - r0, fid.qrs_off - r0)
        if beat.premature:
            # provisional: atrial or ventricular is decided once P waves are known
            beat.kind = "V" if _ventricular_shape(beat) else "A"
        elif beat.correlation < CORR_DOMINANT:
            beat.kind = "Q"  # unclassified: not premature, shape unlike the dominant beat
    return beats


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][int(np.searchsorted(cw, 0.5 * cw[-1]))])


def _ventricular_shape(beat: Beat, dominant_qrs_ms: float | None = None) -> bool:
    """A QRS unlike the dominant one: of a clearly different shape, or wide (>= 120 ms and,
    once the dominant QRS is known, 20 ms wider than it: a beat conducted another way, even when
    its first 60 ms look alike). Before the dominant width is known, a wide beat must also
    differ in shape."""
    wide = beat.qrs_ms is not None and beat.qrs_ms >= C.PVC_QRS_MIN.value
    if dominant_qrs_ms is None:
        wide = wide and beat.correlation < CORR_DOMINANT
    else:
        wide = wide and beat.qrs_ms >= dominant_qrs_ms + C.PVC_QRS_WIDER_BY.value
    return beat.correlation < C.PVC_MAX_CORRELATION.value or wide


def _rr_of(beats: list[Beat], normal_only: bool) -> np.ndarray:
    """RR intervals (ms); with ``normal_only``, only those between two dominant beats."""
    out = []
    for prev, cur in zip(beats, beats[1:], strict=False):
        if cur.rr_prev_ms is None:
            continue
        if normal_only and (prev.kind != "N" or cur.kind != "N"):
            continue
        out.append(cur.rr_prev_ms)
    return np.asarray(out, dtype=float)


def _rhythm_values(a: EcgAnalysis) -> None:
    v = a.values
    rr_all = a.peaks.rr_ms
    v["beat_count"] = float(len(a.beats))
    v["heart_rate"] = 60000.0 / float(np.mean(rr_all))
    v["rr_interval"] = float(np.mean(rr_all))
    v["rr_sdnn"] = float(np.std(rr_all, ddof=1)) if rr_all.size > 1 else 0.0
    # Irregularity of the underlying rhythm: the coupling interval and the pause of an ectopic
    # beat are not the rhythm, so intervals ending on or just after a ventricular ectopic, or a
    # premature atrial complex whose premature P wave was seen, are left out. A premature beat
    # without a P wave stays in: in atrial fibrillation short intervals are the rhythm itself.
    ectopic = [b.kind == "V" or (b.kind == "A" and b.premature_p) for b in a.beats]
    rr_u = np.asarray([b.rr_prev_ms for k, b in enumerate(a.beats) if b.rr_prev_ms and k
                       and not ectopic[k] and not ectopic[k - 1]], dtype=float)
    if rr_u.size >= 3:
        rmssd = float(np.sqrt(np.mean(np.diff(rr_u) ** 2)))
        v["rr_rmssd"] = rmssd
        v["rr_irregularity"] = rmssd / float(np.mean(rr_u))
        v["underlying_rate"] = 60000.0 / float(np.mean(rr_u))
    v["pvc_count"] = float(sum(b.kind == "V" for b in a.beats))
    v["pac_count"] = float(sum(b.kind == "A" for b in a.beats))


def _p_consistency(a: EcgAnalysis, diag: np.ndarray) -> None:
    """Fraction of dominant beats with a P wave shaped like the median P (correlation >= 0.6
    in the lead where the median P is largest)."""
    m = a.median
    assert m is not None
    fid = m.fid
    if fid.p_on is None or fid.p_off is None or fid.p_off - fid.p_on < 4:
        a.values["p_wave_consistency"] = 0.0
        return
    dev = np.abs(m.signals[:, fid.p_on: fid.p_off] - m.baseline[:, None]).max(axis=1)
    use = [i for i, u in enumerate(m.usable) if u] or list(range(len(m.leads)))
    lead = max(use, key=lambda i: dev[i])
    tmpl = m.signals[lead, fid.p_on: fid.p_off] - m.baseline[lead]
    tmpl = tmpl - tmpl.mean()
    ok = 0
    for bi in m.beats:
        r = int(a.peaks.peaks[bi])
        s = diag[lead, r - m.r + fid.p_on: r - m.r + fid.p_off]
        if s.size != tmpl.size:
            continue
        s = s - s.mean()
        c = float(s @ tmpl / (np.linalg.norm(s) * np.linalg.norm(tmpl) + 1e-12))
        has = c >= 0.6
        a.beats[bi].has_p = has
        ok += has
    a.values["p_wave_consistency"] = ok / max(len(m.beats), 1)
    a.values["p_amplitude"] = float(dev[lead])
    a.p_lead = m.leads[lead]


# ------------------------------------------------------------------------------------------------
# Atrial activity, pacing spikes and the final beat labels


PR_SEARCH_MS = (40.0, 420.0)  # a P peak this long before QRS onset can have conducted it
PREMATURE_PR_MS = (80.0, 300.0)  # the PR at which a premature P wave conducts its beat
V_SPIKE_MS = (-40.0, 10.0)  # a ventricular stimulus: around QRS onset
A_SPIKE_MS = (-350.0, -60.0)  # an atrial stimulus: an AV delay before QRS onset


def _atrial_activity(a: EcgAnalysis, diag: np.ndarray, usable: list[bool], rr_ms: float) -> None:
    """Atrial events over the record, the P wave leading each beat and pacing stimuli."""
    m = a.median
    assert m is not None
    fid, fs = m.fid, m.fs
    ms = fs / 1000.0
    start = max(fid.qrs_on - int(10 * ms), 0)
    stop = fid.t_end + int(20 * ms) if fid.t_end is not None else fid.qrs_off + int(250 * ms)
    # the template must end before the next beat's P wave, or cancelling it removes that P
    lead_in = (m.r - fid.p_on) if fid.p_on is not None else (m.r - fid.qrs_on)
    stop = min(stop, m.r + int(rr_ms * ms) - lead_in - int(10 * ms), m.signals.shape[1])
    peaks = a.peaks.peaks
    if stop - start < int(60 * ms):
        return
    # beats unlike the median (ventricular ectopics) are not cancelled: their QRS-T is blanked
    unlike = {b.index for b in a.beats if b.correlation < CORR_DOMINANT}
    residual = atrial.qrst_residual(diag, peaks, m.signals, m.r, start, stop,
                                    fid.qrs_off + int(20 * ms), unlike)
    spans = [(int(peaks[i]) - m.r + start - int(40 * ms), int(peaks[i]) - m.r + stop)
             for i in sorted(unlike)]
    act = atrial.atrial_events(residual, fs, list(a.record.leads), usable, peaks,
                               a.p_lead or "II", spans)
    a.atrial = act
    onset_off = m.r - fid.qrs_on
    peak_to_on = (fid.p_peak - fid.p_on) if fid.p_peak is not None and fid.p_on is not None \
        else int(40 * ms)
    events = act.events
    pp = np.diff(events) if events.size > 1 else np.zeros(0)
    pp_med = float(np.median(pp)) if pp.size else None
    lo_ms, hi_ms = PR_SEARCH_MS
    size_of = dict(zip(events.tolist(), act.sizes.tolist(), strict=True))
    for b in a.beats:
        q = b.r - onset_off
        cand = events[(events <= q - int(lo_ms * ms)) & (events >= q - int(hi_ms * ms))]
        if cand.size:
            e = int(cand[-1])
            b.p_event = e
            b.pr_ms = (q - (e - peak_to_on)) / ms
        b.paced = _paced(a.spikes, q, ms)
    # a premature P wave: early against the atrial cycle, as large as the conducted P waves
    # (half their median size) and at a PR that can conduct
    sizes = [size_of[b.p_event] for b in a.beats if b.kind == "N" and b.p_event is not None]
    typical = float(np.median(sizes)) if sizes else act.amplitude_mv
    for b in a.beats:
        e = b.p_event
        if e is None or not pp_med or not (PREMATURE_PR_MS[0] <= (b.pr_ms or 0)
                                           <= PREMATURE_PR_MS[1]):
            continue
        prev = events[events < e]
        b.premature_p = bool(prev.size) and (
            e - int(prev[-1]) < C.PREMATURE_RR_FRACTION.value * pp_med
            and size_of[e] >= 0.5 * typical)
    a.flutter = atrial.flutter_cycle(diag, fs, list(a.record.leads), usable, peaks,
                                     float(np.mean(a.peaks.rr_ms)))


def _paced(sp: np.ndarray, q: int, ms: float) -> str | None:
    """Which chamber a stimulus drove for the beat whose QRS starts at ``q``."""
    if not sp.size:
        return None
    v_hit = bool(np.any((sp >= q + V_SPIKE_MS[0] * ms) & (sp <= q + V_SPIKE_MS[1] * ms)))
    a_hit = bool(np.any((sp >= q + A_SPIKE_MS[0] * ms) & (sp <= q + A_SPIKE_MS[1] * ms)))
    return "dual" if v_hit and a_hit else "ventricular" if v_hit else "atrial" if a_hit else None


def _refine_ectopy(a: EcgAnalysis, rr_ms: float) -> None:
    """Final labels of the ectopic candidates, from QRS shape against the dominant beat, the P
    wave before them and the pause after them.

    - ventricular (V): a QRS unlike the dominant one (``_ventricular_shape``) without a premature
      P wave before it, premature or at most on time;
    - atrial (A): premature with a QRS like the dominant one, or with a premature P wave before
      it (``aberrant`` when its QRS is then wide);
    - the pause is recorded (``compensatory``) and cited, not decisive.
    """
    dom_qrs = a.values.get("qrs_duration")
    beats = a.beats
    for k, b in enumerate(beats):
        if b.paced in ("ventricular", "dual"):
            continue
        nxt = beats[k + 1].rr_prev_ms if k + 1 < len(beats) else None
        if b.rr_prev_ms and nxt:
            b.compensatory = abs(b.rr_prev_ms + nxt - 2 * rr_ms) <= 0.1 * 2 * rr_ms
        if b.kind not in ("A", "V", "Q"):
            continue
        shape_v = _ventricular_shape(b, dom_qrs)
        if b.premature:
            if shape_v and not b.premature_p:
                b.kind = "V"
            else:
                b.kind, b.aberrant = "A", shape_v
        elif b.kind == "Q" and shape_v and b.p_event is None and b.rr_prev_ms \
                and b.rr_prev_ms <= rr_ms:
            b.kind = "V"  # a late-coupled ventricular beat: on time, wide and unlike, no P


def _av_values(a: EcgAnalysis) -> None:
    """Atrial rate, non-conducted P waves, dropped beats and the PR of each beat."""
    v, fs = a.values, a.record.fs
    ms = fs / 1000.0
    n = len(a.beats)
    if n:
        v["paced_ventricular_fraction"] = sum(b.paced in ("ventricular", "dual")
                                              for b in a.beats) / n
        v["paced_atrial_fraction"] = sum(b.paced in ("atrial", "dual") for b in a.beats) / n
    if a.flutter is not None:
        v["flutter_cycle"], v["flutter_correlation"], v["flutter_rr_correlation"] = a.flutter
    act = a.atrial
    if act is None or act.events.size < 3:
        return
    ev = act.events
    pp = np.diff(ev).astype(float) / ms
    v["atrial_event_count"] = float(ev.size)
    v["atrial_rate"] = 60000.0 / float(np.median(pp))
    v["pp_irregularity"] = float(np.std(pp) / np.mean(pp))
    # regular atrial activity: PP intervals at the atrial cycle, or at twice it where a P wave
    # fell inside a QRS (not searched) - within 15 %
    ratio = pp / float(np.median(pp))
    k = np.clip(np.round(ratio), 1, None)
    v["pp_regular_fraction"] = float(np.mean((np.abs(ratio - k) <= 0.15 * k) & (k <= 2)))
    conducted = {b.p_event for b in a.beats if b.p_event is not None}
    peaks = a.peaks.peaks
    end = a.record.n_samples
    blocked = [int(e) for e in ev if int(e) not in conducted
               and e + int(PR_SEARCH_MS[1] * ms) < end
               and not np.any((peaks > e) & (peaks <= e + int(PR_SEARCH_MS[1] * ms) + 120 * ms))]
    v["nonconducted_p_count"] = float(len(blocked))
    prs = [b.pr_ms for b in a.beats if b.pr_ms is not None and b.kind == "N"]
    if len(prs) >= 2:
        v["pr_range"] = float(max(prs) - min(prs))
        med_pr = float(np.median(prs))
        dom = [b for b in a.beats if b.kind == "N"]
        v["p_locked_fraction"] = sum(
            b.pr_ms is not None and abs(b.pr_ms - med_pr) <= C.P_LOCK_TOLERANCE_MS.value
            for b in dom) / max(len(dom), 1)
    a.pauses = _dropped_beats(a, blocked, float(np.median(pp)) * ms)
    v["dropped_beat_count"] = float(len(a.pauses))


def _dropped_beats(a: EcgAnalysis, blocked: list[int], pp: float) -> list[dict[str, Any]]:
    """Pauses of at least ``DROPPED_BEAT_PAUSE_MIN`` RR between two dominant beats holding a
    P wave that conducted nothing, on time for the atrial cycle (within 25 %), with the PR of the
    beat before and after the pause."""
    beats = a.beats
    rr = _rr_of(beats, normal_only=True)
    if rr.size < 2 or not blocked:
        return []
    med = float(np.median(rr))
    fs = a.record.fs
    out = []
    for k in range(1, len(beats)):
        prev, cur = beats[k - 1], beats[k]
        if cur.rr_prev_ms is None or cur.rr_prev_ms < C.DROPPED_BEAT_PAUSE_MIN.value * med:
            continue
        if prev.kind != "N" or cur.kind != "N" or prev.p_event is None:
            continue
        inside = [e for e in blocked if prev.r < e < cur.r]
        if not inside or abs((inside[0] - prev.p_event) - pp) > 0.25 * pp:
            continue
        out.append({"beat": k, "pause_ms": cur.rr_prev_ms, "p_event": inside[0],
                    "pr_before": prev.pr_ms, "pr_after": cur.pr_ms,
                    "pr_earlier": beats[k - 2].pr_ms if k >= 2 else None,
                    "time_s": round(inside[0] / fs, 3)})
    return out


# ------------------------------------------------------------------------------------------------
# Median beat measurements


def _median_values(a: EcgAnalysis) -> None:
    m = a.median
    assert m is not None
    fid, fs = m.fid, m.fs
    v = a.values
    rr_s = v["rr_interval"] / 1000.0
    v["qrs_duration"] = m.ms(fid.qrs_off - fid.qrs_on)
    # PR and the P axis describe an organised P wave; without one (atrial fibrillation, noise
    # averaged into the median) they would be numbers about nothing
    organised_p = v.get("p_wave_consistency", 0.0) >= C.P_WAVE_MIN_CONSISTENCY.value
    if not organised_p:
        fid.p_on = fid.p_off = fid.p_peak = None
    if fid.p_on is not None:
        v["pr_interval"] = m.ms(fid.qrs_on - fid.p_on)
    if fid.t_end is not None:
        qt = m.ms(fid.t_end - fid.qrs_on)
        v["qt_interval"] = qt
        v["qtc_bazett"] = qt / math.sqrt(rr_s)
        v["qtc_fridericia"] = qt / rr_s ** (1.0 / 3.0)
        v["qtc_framingham"] = qt + 154.0 * (1.0 - rr_s)  # FRAMINGHAM1992, in ms
    leads = m.leads
    dev = m.signals - m.baseline[:, None]
    if "I" in leads and "aVF" in leads:
        li, lf = leads.index("I"), leads.index("aVF")
        spans = {"qrs_axis": (fid.qrs_on, fid.qrs_off)}
        if fid.p_on is not None and fid.p_off is not None:
            spans["p_axis"] = (fid.p_on, fid.p_off)
        if fid.t_end is not None:
            spans["t_axis"] = (fid.qrs_off, fid.t_end)
        for name, (s0, s1) in spans.items():
            area_i, area_f = float(dev[li, s0:s1].sum()), float(dev[lf, s0:s1].sum())
            if abs(area_i) + abs(area_f) > 1e-9:
                # aVF sees the frontal vector scaled by cos(30 deg) relative to lead I
                v[name] = math.degrees(math.atan2(2.0 * area_f / math.sqrt(3.0), area_i))
    ms = fs / 1000.0
    j = fid.qrs_off
    j60 = j + int(round(ST_AT_MS * ms))
    half = max(int(2 * ms), 1)
    for k, lead in enumerate(leads):
        d = dev[k]
        q = d[fid.qrs_on: fid.qrs_off + 1]
        if q.size == 0:
            continue
        ipk = int(np.argmax(q))
        r_amp = max(float(q.max()), 0.0)
        before, after = q[:ipk], q[ipk:]
        s_amp = max(-float(after.min()), 0.0) if r_amp > 0.05 else max(-float(q.min()), 0.0)
        q_amp = max(-float(before.min()), 0.0) if before.size and r_amp > 0.05 else 0.0
        pl = {
            "r_amplitude": r_amp, "s_amplitude": s_amp, "q_amplitude": q_amp,
            "qrs_amplitude": float(q.max() - q.min()),
            "r_peak_time": m.ms(ipk),
            "terminal_s_duration": _terminal_negative_ms(q, m),
            "terminal_area": float(q[-int(40 * ms):].sum() / ms),  # mV*ms over the last 40 ms
            "st_j": float(d[max(j - half, 0): j + half + 1].mean()),
            "r_prime_amplitude": _r_prime(q),
            "r_notch": float(_notched(q, ms)),
        }
        if j60 + half < d.size and (fid.t_end is None or j60 < fid.t_end):
            pl["st_deviation"] = float(d[j60 - half: j60 + half + 1].mean())
        if fid.p_peak is not None:
            pl["p_wave"] = float(d[fid.p_peak])  # signed: the P wave's polarity in this lead
        a.per_lead[lead] = pl
    pl = a.per_lead
    if {"V1", "V5", "V6"} <= pl.keys():
        v["sokolow_lyon"] = pl["V1"]["s_amplitude"] + max(pl["V5"]["r_amplitude"],
                                                          pl["V6"]["r_amplitude"])
    if {"aVL", "V3"} <= pl.keys():
        v["cornell_voltage"] = pl["aVL"]["r_amplitude"] + pl["V3"]["s_amplitude"]


def _r_prime(q: np.ndarray) -> float:
    """Height (mV) of an R' wave: a positive peak after an S wave that dips at least 0.05 mV
    below the earlier positive peak and below zero (rsr', rsR', rSR'); 0 without one."""
    if q.size < 5:
        return 0.0
    peaks = np.flatnonzero((q[1:-1] > q[:-2]) & (q[1:-1] >= q[2:])) + 1
    best = 0.0
    for i, pk in enumerate(peaks):
        if q[pk] <= 0.0:
            continue
        for later in peaks[i + 1:]:
            dip = float(q[pk:later].min())
            if q[later] > 0.0 and dip < 0.0 and q[pk] - dip >= 0.05 and q[later] - dip >= 0.05:
                best = max(best, float(q[later]))
        # a first positive peak may be the r of rsR' only once
        if best:
            break
    return best


def _notched(q: np.ndarray, ms: float) -> bool:
    """A notched or slurred broad R: two positive peaks at least 20 ms apart with a dip of at
    least 0.05 mV between them, both above half the R amplitude (LBBB in I, aVL, V5, V6)."""
    top = float(q.max()) if q.size else 0.0
    if top < 0.2:
        return False
    peaks = [int(p) for p in np.flatnonzero((q[1:-1] > q[:-2]) & (q[1:-1] >= q[2:])) + 1
             if q[p] >= 0.5 * top]
    for a, b in zip(peaks, peaks[1:], strict=False):
        if b - a >= 20 * ms and min(q[a], q[b]) - float(q[a:b].min()) >= 0.05:
            return True
    return False


def _terminal_negative_ms(q: np.ndarray, m: MedianBeat) -> float:
    """Duration of the negative deflection that ends the QRS (a terminal S wave), in ms: the
    last run below -20 uV, when it ends within 20 ms of the QRS end."""
    thr = 0.02
    neg = np.flatnonzero(q < -thr)
    if neg.size == 0 or q.size - 1 - neg[-1] > int(0.02 * m.fs):
        return 0.0
    end = start = int(neg[-1])
    while start > 0 and q[start - 1] < -thr:
        start -= 1
    return m.ms(end - start + 1)


# ------------------------------------------------------------------------------------------------
# Measurement objects


def _to_measurements(a: EcgAnalysis) -> None:
    v, out = a.values, a.measurements
    fs = a.record.fs
    all_beats = tuple(b.index for b in a.beats)
    span = Where(beats=all_beats, start_s=round(int(a.peaks.peaks[0]) / fs, 3),
                 end_s=round(int(a.peaks.peaks[-1]) / fs, 3))
    med_beats = tuple(a.median.beats) if a.median else ()
    uid = a.record.instance_uid
    span = Where(beats=span.beats, start_s=span.start_s, end_s=span.end_s, instance_uid=uid)
    med = Where(beats=med_beats, instance_uid=uid)

    def add(name: str, unit: str, where: Where, value: float | None = None) -> None:
        val = v.get(name) if value is None else value
        if val is None or not math.isfinite(val):
            return
        out.append(Measurement(name, round(float(val), 3), unit, LOINC.get(name), where))

    add("beat_count", "{beats}", span)
    add("heart_rate", "/min", span)  # UCUM: per minute
    add("rr_interval", "ms", span)
    add("rr_sdnn", "ms", span)
    add("rr_rmssd", "ms", span)
    add("rr_irregularity", "1", span)
    for name, kind in (("pvc_count", "V"), ("pac_count", "A")):
        idx = tuple(b.index for b in a.beats if b.kind == kind)
        add(name, "{beats}", Where(beats=idx, instance_uid=uid))
    if "p_wave_consistency" in v:
        add("p_wave_consistency", "1", med)
    if "p_amplitude" in v and a.p_lead:
        add("p_amplitude", "mV", Where(lead=a.p_lead, beats=med_beats, instance_uid=uid))
    for name in ("pr_interval", "qrs_duration", "qt_interval"):
        add(name, "ms", med)
    for name in ("qtc_bazett", "qtc_fridericia", "qtc_framingham"):
        add(name, "ms", med)
    add("underlying_rate", "/min", span)
    for name, unit in (("atrial_rate", "/min"), ("pp_irregularity", "1"),
                       ("atrial_event_count", "{beats}"), ("nonconducted_p_count", "{beats}"),
                       ("pp_regular_fraction", "1"),
                       ("dropped_beat_count", "{beats}"), ("pr_range", "ms"),
                       ("p_locked_fraction", "1"), ("paced_ventricular_fraction", "1"),
                       ("paced_atrial_fraction", "1"), ("flutter_cycle", "ms"),
                       ("flutter_correlation", "1")):
        add(name, unit, span)
    for name in ("p_axis", "qrs_axis", "t_axis"):
        add(name, "deg", med)
    if "sokolow_lyon" in v:
        add("sokolow_lyon", "mV", med)
    if "cornell_voltage" in v:
        add("cornell_voltage", "mV", med)
    for lead, pl in a.per_lead.items():
        w = Where(lead=lead, beats=med_beats, instance_uid=uid)
        for name in ("r_amplitude", "s_amplitude", "q_amplitude", "qrs_amplitude", "st_j",
                     "st_deviation"):
            if name in pl:
                out.append(Measurement(name, round(pl[name], 3), "mV", None, w))
        if lead in ("V1", "V5", "V6"):
            out.append(Measurement("r_peak_time", round(pl["r_peak_time"], 1), "ms", None, w))
        if lead in ("V1", "V2"):
            out.append(Measurement("r_prime_amplitude", round(pl["r_prime_amplitude"], 3), "mV",
                                   None, w))
        if lead in ("I", "aVL", "V5", "V6"):
            out.append(Measurement("r_notch", pl["r_notch"], "1", None, w))
        if lead in ("I", "V1", "V6"):
            out.append(Measurement("terminal_s_duration", round(pl["terminal_s_duration"], 1),
                                   "ms", None, w))
            out.append(Measurement("terminal_area", round(pl["terminal_area"], 3), "mV.ms",
                                   None, w))

