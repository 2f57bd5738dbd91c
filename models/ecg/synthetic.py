"""Synthetic 12-lead ECGs with known intervals, for tests and benchmarks.

Each beat is a sum of Gaussian waves (P, the Q/R/S components of the QRS, T; optional ST shift
and fibrillatory waves). Limb leads come from one frontal-plane vector per wave (lead I at 0 deg,
II at +60 deg, then Einthoven's and Goldberger's equations), so the frontal axes are physical.
Precordial amplitudes are given per lead.

Ground truth follows the measurement convention of ``models.ecg.delineate``: a wave starts when
the noise-free wave first departs from the baseline by more than 20 uV in any lead and ends when
it last does (``MIN_WAVE_MV``). The generator computes these boundaries numerically from the
noise-free waves and reports them in ``SyntheticEcg.truth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.ecg.leads import STANDARD_LEADS

MIN_WAVE_MV = 0.02
_GRID_MS = 0.25  # resolution of the numeric ground truth


@dataclass
class Wave:
    """One Gaussian wave: centre and widths (ms from QRS onset, left/right sigma), a frontal
    vector (amplitude mV, axis degrees) and six precordial amplitudes (mV)."""

    centre: float
    sigma_left: float
    sigma_right: float
    frontal_mv: float
    frontal_axis: float
    precordial_mv: tuple[float, float, float, float, float, float]

    def lead_amplitudes(self) -> np.ndarray:
        th = np.deg2rad(self.frontal_axis)
        lead_i = self.frontal_mv * np.cos(th)
        lead_ii = self.frontal_mv * np.cos(th - np.pi / 3)
        lead_iii = lead_ii - lead_i
        limb = [lead_i, lead_ii, lead_iii, -(lead_i + lead_ii) / 2, (lead_i - lead_iii) / 2,
                (lead_ii + lead_iii) / 2]
        return np.array(limb + list(self.precordial_mv))

    def shape(self, t_ms: np.ndarray) -> np.ndarray:
        d = t_ms - self.centre
        sig = np.where(d < 0, self.sigma_left, self.sigma_right)
        return np.exp(-0.5 * (d / sig) ** 2)

    def render(self, t_ms: np.ndarray) -> np.ndarray:
        """leads x len(t_ms)"""
        return self.lead_amplitudes()[:, None] * self.shape(t_ms)[None, :]


Morphology = Literal["normal", "lbbb", "rbbb", "pvc"]


@dataclass
class SyntheticSpec:
    heart_rate: float = 70.0
    pr_ms: float = 160.0
    qrs_ms: float = 90.0
    qt_ms: float = 400.0
    duration_s: float = 10.0
    fs: float = 500.0
    noise_mv: float = 0.01
    wander_mv: float = 0.05
    p_wave: bool = True
    morphology: Morphology = "normal"
    qrs_axis: float = 60.0
    qrs_scale: float = 1.0  # scales the limb-lead (frontal) QRS
    precordial_scale: float = 1.0  # scales the precordial QRS
    rr_jitter: float = 0.0  # sd of RR as a fraction of the mean (0.2+ for AF-like)
    fibrillation_mv: float = 0.0  # amplitude of f waves (AF) when there is no P wave
    st_shift_mv: dict[str, float] = field(default_factory=dict)
    premature: dict[int, Literal["pvc", "pac"]] = field(default_factory=dict)
    seed: int = 0


@dataclass
class SyntheticEcg:
    signals_mv: np.ndarray
    fs: float
    leads: list[str]
    r_peaks: np.ndarray
    truth: dict[str, Any]
    spec: SyntheticSpec


# ------------------------------------------------------------------------------------------------
# Beat templates (times in ms from QRS onset, before calibration)


def _qrs_waves(morph: Morphology, axis: float, scale: float,
               precordial: float = 1.0) -> list[Wave]:
    waves = _qrs_shapes(morph, axis, scale)
    return [Wave(w.centre, w.sigma_left, w.sigma_right, w.frontal_mv, w.frontal_axis,
                 tuple(precordial * p for p in w.precordial_mv)) for w in waves]


def _qrs_shapes(morph: Morphology, axis: float, scale: float) -> list[Wave]:
    a = scale
    if morph == "normal":
        return [
            Wave(18, 6, 6, 0.15 * a, axis + 150, (0.0, 0.0, 0.0, 0.0, -0.06, -0.08)),
            Wave(42, 9, 9, 1.2 * a, axis, (0.2, 0.4, 0.7, 1.1, 1.3, 1.1)),
            Wave(66, 7, 7, 0.25 * a, axis + 170, (-0.9, -1.2, -0.8, -0.5, -0.2, -0.1)),
        ]
    if morph == "lbbb":
        return [
            Wave(45, 18, 18, 0.8 * a, axis, (0.1, 0.15, 0.3, 0.7, 1.0, 1.1)),
            Wave(95, 18, 18, 0.9 * a, axis, (0.0, 0.0, 0.2, 0.7, 1.1, 1.2)),
            Wave(70, 28, 28, 0.0, axis, (-1.4, -1.8, -1.4, -0.6, 0.0, 0.0)),
        ]
    if morph == "rbbb":
        return [
            Wave(14, 6, 6, 0.12 * a, axis + 150, (0.0, 0.0, 0.0, 0.0, -0.06, -0.08)),
            Wave(36, 9, 9, 1.1 * a, axis, (0.25, 0.35, 0.6, 1.0, 1.2, 1.0)),
            Wave(60, 8, 8, 0.1 * a, axis + 170, (-0.7, -0.8, -0.4, -0.1, 0.0, 0.0)),
            Wave(95, 12, 12, 0.45 * a, 180.0, (0.8, 0.6, 0.2, -0.2, -0.35, -0.4)),
        ]
    # pvc: one broad complex with a different axis
    return [Wave(70, 28, 28, 1.4 * a, axis - 150, (-1.2, -1.0, -0.4, 0.5, 1.2, 1.3))]


def _t_wave(morph: Morphology) -> Wave:
    if morph == "lbbb":
        return Wave(0, 50, 35, 0.3, -170.0, (0.35, 0.45, 0.3, -0.1, -0.3, -0.3))
    if morph == "rbbb":
        return Wave(0, 50, 35, 0.3, 45.0, (-0.2, -0.1, 0.2, 0.35, 0.3, 0.25))
    if morph == "pvc":
        return Wave(0, 50, 40, 0.4, 30.0, (0.4, 0.3, 0.1, -0.2, -0.4, -0.4))  # ectopic T
    return Wave(0, 50, 35, 0.35, 45.0, (0.1, 0.3, 0.4, 0.4, 0.35, 0.25))


def _p_wave() -> Wave:
    return Wave(0, 24, 22, 0.15, 55.0, (0.05, 0.07, 0.07, 0.07, 0.06, 0.05))


def _extent(waves: list[Wave], lo: float, hi: float) -> tuple[float, float]:
    """First and last time (ms) the sum of ``waves`` exceeds MIN_WAVE_MV in any lead."""
    t = np.arange(lo, hi, _GRID_MS)
    total = sum(w.render(t) for w in waves)
    active = np.flatnonzero(np.abs(total).max(axis=0) > MIN_WAVE_MV)
    if active.size == 0:
        return float("nan"), float("nan")
    return float(t[active[0]]), float(t[active[-1]])


def _stretch(waves: list[Wave], factor: float) -> list[Wave]:
    return [Wave(w.centre * factor, w.sigma_left * factor, w.sigma_right * factor, w.frontal_mv,
                 w.frontal_axis, w.precordial_mv) for w in waves]


def _shift(waves: list[Wave], dt: float) -> list[Wave]:
    return [Wave(w.centre + dt, w.sigma_left, w.sigma_right, w.frontal_mv, w.frontal_axis,
                 w.precordial_mv) for w in waves]


def beat_template(morph: Morphology, qrs_ms: float, qt_ms: float, pr_ms: float | None,
                  axis: float, scale: float = 1.0, precordial: float = 1.0) -> dict[str, Any]:
    """Waves of one beat calibrated so that the 20 uV boundaries give exactly ``qrs_ms``,
    ``qt_ms`` and ``pr_ms`` (QRS onset at t = 0)."""
    qrs = _qrs_waves(morph, axis, scale, precordial)
    for _ in range(4):  # stretch until the numeric QRS duration matches
        on, off = _extent(qrs, -100, 400)
        qrs = _shift(qrs, -on)
        qrs = _stretch(qrs, qrs_ms / (off - on))
    on, off = _extent(qrs, -100, 400)
    qrs = _shift(qrs, -on)
    t_wave = _t_wave(morph)
    _, t_end = _extent([t_wave], -400, 400)
    t_wave = _shift([t_wave], qt_ms - t_end)[0]
    waves = {"qrs": qrs, "t": [t_wave], "p": []}
    if pr_ms is not None:
        p = _p_wave()
        p_on, _ = _extent([p], -300, 300)
        waves["p"] = _shift([p], -pr_ms - p_on)
    return waves


def _truth_of(waves: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    q_on, q_off = _extent(waves["qrs"], -200, 400)
    t_on, t_end = _extent(waves["t"], -200, 1200)
    out.update(qrs_onset_ms=q_on, qrs_offset_ms=q_off, t_end_ms=t_end,
               qrs_ms=q_off - q_on, qt_ms=t_end - q_on)
    if waves["p"]:
        p_on, p_off = _extent(waves["p"], -600, 100)
        out.update(p_onset_ms=p_on, p_offset_ms=p_off, pr_ms=q_on - p_on)
    t = np.arange(-600, 1200, _GRID_MS)
    for name in ("p", "qrs", "t"):
        if not waves[name]:
            continue
        total = sum(w.render(t) for w in waves[name])
        area_i, area_avf = total[0].sum(), total[5].sum()
        out[f"{name}_axis"] = float(np.degrees(np.arctan2(2 * area_avf / np.sqrt(3), area_i)))
    qrs_total = sum(w.render(t) for w in waves["qrs"])
    for k, lead in enumerate(STANDARD_LEADS):
        out[f"r_amplitude:{lead}"] = float(max(qrs_total[k].max(), 0.0))
        out[f"qrs_p2p:{lead}"] = float(np.ptp(qrs_total[k]))
    return out


# ------------------------------------------------------------------------------------------------


def generate(spec: SyntheticSpec | None = None, **kwargs: Any) -> SyntheticEcg:
    """A synthetic 12-lead ECG (mV, leads in standard order) with its ground truth."""
    spec = spec or SyntheticSpec(**kwargs)
    rng = np.random.default_rng(spec.seed)
    fs = spec.fs
    n = int(spec.duration_s * fs)
    t_ms = np.arange(n) * 1000.0 / fs
    sig = np.zeros((12, n))
    dominant = beat_template(spec.morphology, spec.qrs_ms, spec.qt_ms,
                             spec.pr_ms if spec.p_wave else None, spec.qrs_axis, spec.qrs_scale,
                             spec.precordial_scale)
    truth = _truth_of(dominant)
    pvc = beat_template("pvc", 140.0, spec.qt_ms + 40, None, spec.qrs_axis, 1.0)

    rr = 60000.0 / spec.heart_rate
    onsets: list[float] = []
    kinds: list[str] = []
    t = 500.0 + (spec.pr_ms if spec.p_wave else 0.0)
    i = 0
    while t < spec.duration_s * 1000.0 - max(spec.qt_ms, 450.0) - 50:
        kind = spec.premature.get(i, "normal")
        onsets.append(t)
        kinds.append(kind)
        nxt = rr * (1.0 + spec.rr_jitter * rng.standard_normal()) if spec.rr_jitter else rr
        nxt = float(np.clip(nxt, 0.45 * rr, 1.8 * rr))
        if spec.premature.get(i + 1) in ("pvc", "pac"):
            nxt = 0.65 * rr
        if kind in ("pvc", "pac"):
            nxt = 2 * rr - (onsets[-1] - onsets[-2] if len(onsets) > 1 else rr)
        t += nxt
        i += 1

    r_peaks = []
    for onset, kind in zip(onsets, kinds, strict=True):
        waves = pvc if kind == "pvc" else dominant
        parts = waves["qrs"] + waves["t"] + (waves["p"] if kind != "pvc" else [])
        for w in parts:
            sig += _shift([w], onset)[0].render(t_ms)
        qrs_sum = sum(_shift([w], onset)[0].render(t_ms) for w in waves["qrs"])
        ref = int(np.argmax(np.abs(qrs_sum).max(axis=0)))
        r_peaks.append(ref)
        for lead, shift in spec.st_shift_mv.items():
            k = STANDARD_LEADS.index(lead)
            j = onset + truth["qrs_ms"]
            t_peak = onset + waves["t"][0].centre
            rise = 1.0 / (1.0 + np.exp(-(t_ms - j) / 2.0))
            fall = 1.0 / (1.0 + np.exp((t_ms - t_peak) / 25.0))
            sig[k] += shift * rise * fall
    if not spec.p_wave and spec.fibrillation_mv > 0:
        # f waves: a few incommensurate 5-8 Hz components with drifting phase
        f = np.zeros(n)
        for freq in rng.uniform(5.0, 8.0, size=4):
            f += np.sin(2 * np.pi * freq * t_ms / 1000.0 + rng.uniform(0, 2 * np.pi))
        f *= spec.fibrillation_mv / 2.0
        for lead, gain in (("V1", 1.0), ("II", 0.6), ("III", 0.6), ("aVF", 0.6), ("V2", 0.7)):
            sig[STANDARD_LEADS.index(lead)] += gain * f
    if spec.wander_mv:
        phase = rng.uniform(0, 2 * np.pi)
        sig += spec.wander_mv * np.sin(2 * np.pi * 0.25 * t_ms / 1000.0 + phase)
    if spec.noise_mv:
        sig += rng.normal(0.0, spec.noise_mv, size=sig.shape)
    truth["heart_rate"] = 60000.0 / float(np.mean(np.diff(onsets))) if len(onsets) > 1 else 0.0
    truth["beat_kinds"] = kinds
    truth["qrs_onsets_ms"] = onsets
    return SyntheticEcg(sig, fs, list(STANDARD_LEADS), np.asarray(r_peaks), truth, spec)
