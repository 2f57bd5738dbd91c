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
MAX_BEAT_DELINEATION = 60  # beats delineated one by one (a 10-s ECG has 8-25); Holter: the first
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
    has_p: bool | None = None
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
    quality = assess(record.signals_mv, fs, record.leads)
    usable = [q.adequate for q in quality]
    warnings = [f"lead {q.lead}: {', '.join(q.issues)}" for q in quality if not q.adequate]
    peaks = rp.detect(record.signals_mv, fs, record.leads, usable)
    a = EcgAnalysis(record, quality, peaks, [], None, warnings=warnings)
    for q in quality:
        a.measurements.append(Measurement("signal_quality", q.score, "1",
                                          where=Where(lead=q.lead,
                                                      instance_uid=record.instance_uid)))
    if peaks.peaks.size < 3:
        a.warnings.append(f"only {peaks.peaks.size} QRS complexes detected: no rhythm or interval "
                          "measurement is possible")
        return a
    diag = diagnostic(record.signals_mv, fs)
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
        _delineate_beats(a, diag, usable, rr_ms)
    _to_measurements(a)
    return a


def _delineate_beats(a: EcgAnalysis, diag: np.ndarray, usable: list[bool], rr_ms: float) -> None:
    """P, QRS and T fiducials of each beat (the first ``MAX_BEAT_DELINEATION``), by the same
    method as the median beat, for display and beat-level review."""
    fs = a.record.fs
    pre = int(PRE_S * fs)
    windows, keep = beat_windows(diag, a.peaks.peaks[:MAX_BEAT_DELINEATION + 1], fs)
    for k, i in enumerate(keep[:MAX_BEAT_DELINEATION]):
        fid, _ = delineate(windows[k], fs, pre, usable, rr_ms, with_p=a.beats[i].kind != "V")
        r = a.beats[i].r
        a.beats[i].fiducials = {name: r - pre + int(val) for name, val in vars(fid).items()
                                if val is not None}


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
    shapes = windows[:, use, r0 - w: r0 + w].reshape(len(keep), -1)
    shapes = shapes - shapes.mean(axis=1, keepdims=True)
    template = np.median(shapes, axis=0)
    norms = np.linalg.norm(shapes, axis=1) * (np.linalg.norm(template) + 1e-12) + 1e-12
    corr = shapes @ template / norms
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
        wide = beat.qrs_ms is not None and beat.qrs_ms >= C.PVC_QRS_MIN.value
        different = beat.correlation < C.PVC_MAX_CORRELATION.value
        if beat.premature and (different or (wide and beat.correlation < CORR_DOMINANT)):
            beat.kind = "V"
        elif beat.premature:
            beat.kind = "A"
        elif beat.correlation < CORR_DOMINANT:
            beat.kind = "Q"  # unclassified: not premature, shape unlike the dominant beat
    return beats


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
    # Irregularity leaves out intervals next to ventricular ectopics (their coupling and pause
    # are not the rhythm); supraventricular prematurity is part of an irregular rhythm.
    rr_sv = np.asarray([b.rr_prev_ms for k, b in enumerate(a.beats) if b.rr_prev_ms
                        and b.kind != "V" and a.beats[k - 1].kind != "V"], dtype=float)
    if rr_sv.size >= 3:
        rmssd = float(np.sqrt(np.mean(np.diff(rr_sv) ** 2)))
        v["rr_rmssd"] = rmssd
        v["rr_irregularity"] = rmssd / float(np.mean(rr_sv))
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
    for name in ("qtc_bazett", "qtc_fridericia"):
        add(name, "ms", med)
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
        if lead in ("I", "V1", "V6"):
            out.append(Measurement("terminal_s_duration", round(pl["terminal_s_duration"], 1),
                                   "ms", None, w))
            out.append(Measurement("terminal_area", round(pl["terminal_area"], 3), "mV.ms",
                                   None, w))

