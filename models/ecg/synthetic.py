"""Synthetic 12-lead ECGs with known intervals and rhythms, for tests and benchmarks.

Each beat is a sum of Gaussian waves (P, the Q/R/S components of the QRS, T; optional ST shift).
Limb leads come from one frontal-plane vector per wave (lead I at 0 deg, II at +60 deg, then
Einthoven's and Goldberger's equations), so the frontal axes are physical. Precordial amplitudes
are given per lead. Atrial activity that is not a discrete P wave (fibrillatory f waves, flutter
F waves) is a continuous waveform with per-lead gains, and pacing spikes are drawn per lead.

The rhythm is built as two timelines before anything is drawn, so AV relationships are exact:

- atrial events (``AtrialEvent``): every atrial activation (sinus P, PAC P, paced P, retrograde P,
  flutter F wave) with its onset and whether it conducted to the ventricles, and to which beat;
- ventricular beats (``VentricularBeat``): QRS onset, kind and the atrial event it came from.

Ground truth follows the measurement convention of ``models.ecg.delineate``: a wave starts when
the noise-free wave first departs from the baseline by more than 20 uV in any lead and ends when
it last does (``MIN_WAVE_MV``). The generator computes these boundaries numerically from the
noise-free waves and reports them in ``SyntheticEcg.truth``; P onsets and QRS onsets in the
timelines are these 20 uV boundaries, so a PR interval in the truth is P onset to QRS onset.

Spec fields beyond the original ones (all optional; the defaults give the original sinus record):

- ``rhythm``: "sinus" (default), "af", "flutter", "junctional" or "paced".
- ``atrial_rate`` (/min): flutter F-wave rate (default 300); in AV block the sinus P rate
  (default ``heart_rate``). Ignored elsewhere.
- ``conduction``: flutter AV ratio, 2, 3, 4 (F waves per QRS) or "variable" (2/3/4 at random).
- ``av_block``: None, "mobitz1", "mobitz2" or "complete" (sinus rhythm only). First-degree block
  is ``pr_ms`` > 200 and is reported as ``truth["av_block"] == "first-degree"``.
- ``av_ratio``: P waves per group in Mobitz I/II: 4 means 4:3 (three conducted, one dropped).
- ``pr_increment_ms``: Mobitz I, increase of PR from the first to the second beat of a group;
  each later increment is half the previous one (the classic Wenckebach pattern, RR shortening).
- ``escape``: complete block escape focus, "junctional" (narrow) or "ventricular" (wide).
- ``escape_rate`` (/min): complete block escape rate (default 45 junctional, 35 ventricular).
- ``retrograde_p``: junctional rhythm or junctional escape: draw a retrograde P (inverted in II,
  III, aVF) just after each QRS.
- ``pacing``: "ventricular" (VVI), "atrial" (AAI) or "dual" (DDD, AV delay = ``pr_ms``);
  setting it implies ``rhythm="paced"``; ``rhythm="paced"`` alone means ventricular pacing.
- ``pacing_spike_mv``, ``pacing_spike_ms``: spike amplitude (the smallest lead gets 60 % of it)
  and width (drawn on at least one sample).
- ``flutter_mv``: peak-to-peak F-wave amplitude in lead II.
- ``premature``: beat index -> "pvc", "pac", "pac-aberrant" (sinus), "pvc" or "aberrant" (AF).
- ``pac_every``: every n-th beat (indices n-1, 2n-1, ...) is a PAC (2: bigeminy, 3: trigeminy).
- ``coupling``: premature beats come this fraction of the basic cycle after the previous beat.

Truth keys beyond the dominant beat's intervals and amplitudes (``pr_ms``, ``qrs_ms``, ...; no
``pr_ms`` where the dominant beat is not conducted from a P): ``rhythm`` (label), ``av_block``,
``heart_rate`` = ``ventricular_rate``, ``atrial_rate`` (None without atrial activity; AF: 60 x
f-wave Hz), per ventricular beat ``beat_kinds``, ``qrs_onsets_ms``, ``qrs_ms_per_beat``,
``pr_ms_per_beat`` (None when not conducted from a P or F wave), ``beat_p_index``, ``r_peaks``
and ``rr_ms``; per atrial event ``p_onsets_ms``, ``p_kinds``, ``p_conducted``, ``p_beat_index``;
``pacing_spikes_ms``, ``pacing_spike_chambers`` ("A"/"V"), ``pacing_spike_samples``,
``pacing_spike_width_ms``; where they apply ``f_wave_hz``, ``conduction_ratios``, ``escape``,
``av_delay_ms``, ``rp_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from scipy.special import expit

from models.ecg.leads import STANDARD_LEADS

MIN_WAVE_MV = 0.02
_GRID_MS = 0.25  # resolution of the numeric ground truth
_WINDOW_SIGMAS = 8.0  # a Gaussian is drawn over +-8 sigma (exp(-32): far below any noise)


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
Rhythm = Literal["sinus", "af", "flutter", "junctional", "paced"]
PrematureKind = Literal["pvc", "pac", "pac-aberrant", "aberrant"]


@dataclass
class SyntheticSpec:
    """What to draw. The module docstring says what each rhythm field means."""

    heart_rate: float = 70.0  # sinus (atrial) rate; AF mean rate; junctional / pacing rate
    pr_ms: float = 160.0  # also flutter F-to-QRS time and the dual-chamber AV delay
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
    rr_jitter: float = 0.0  # sd of RR as a fraction of the mean (0.2+ for AF-like; AF default 0.25)
    fibrillation_mv: float = 0.0  # f-wave amplitude (AF; rhythm="af" defaults to 0.08)
    st_shift_mv: dict[str, float] = field(default_factory=dict)
    premature: dict[int, PrematureKind] = field(default_factory=dict)
    seed: int = 0
    rhythm: Rhythm = "sinus"
    atrial_rate: float | None = None
    conduction: int | Literal["variable"] = 2
    av_block: Literal["mobitz1", "mobitz2", "complete"] | None = None
    av_ratio: int = 4
    pr_increment_ms: float = 80.0
    escape: Literal["junctional", "ventricular"] = "junctional"
    escape_rate: float | None = None
    retrograde_p: bool = False
    pacing: Literal["ventricular", "atrial", "dual"] | None = None
    pacing_spike_mv: float = 5.0
    pacing_spike_ms: float = 0.5
    flutter_mv: float = 0.2
    pac_every: int = 0
    coupling: float = 0.65


@dataclass
class SyntheticEcg:
    signals_mv: np.ndarray
    fs: float
    leads: list[str]
    r_peaks: np.ndarray
    truth: dict[str, Any]
    spec: SyntheticSpec


@dataclass(eq=False)
class AtrialEvent:
    """One atrial activation: onset (ms, the 20 uV boundary of its wave), kind ("sinus", "pac",
    "paced", "retrograde", "flutter") and the ventricular beat it conducted to, if any."""

    onset_ms: float
    kind: str
    beat: VentricularBeat | None = None

    @property
    def conducted(self) -> bool:
        return self.beat is not None


@dataclass(eq=False)
class VentricularBeat:
    """One QRS: onset (ms), kind (``truth["beat_kinds"]``), template name and its atrial origin."""

    onset_ms: float
    kind: str
    template: str
    p: AtrialEvent | None = None


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


def _pac_p_waves() -> list[Wave]:
    # An ectopic atrial focus activates the atria in another order: a lower P with a leftward
    # axis, biphasic (+/-) in II and V1.
    return [Wave(0, 16, 14, 0.09, 20.0, (0.06, 0.05, 0.04, 0.04, 0.03, 0.03)),
            Wave(38, 14, 14, 0.06, 200.0, (-0.08, -0.05, -0.01, 0.0, 0.0, 0.0))]


def _retrograde_p_wave() -> Wave:
    # Junctional origin: the atria are activated from below, P axis about -80 deg (inverted
    # in II, III, aVF, upright in aVR), shorter than a sinus P.
    return Wave(0, 16, 14, 0.13, -80.0, (-0.03, -0.04, -0.03, -0.02, -0.02, -0.02))


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
# Physiology constants of the ectopic, escape and paced beats

_PVC_QRS_MS = 140.0
_ABERRANT_QRS_MS = 130.0  # right bundle branch aberrancy: the right bundle recovers last
_PACED_QRS_MS = 150.0
_PACED_AXIS = -60.0  # right-ventricular apical pacing: LBBB-like, superior (left) axis
_VENTRICULAR_ESCAPE_QRS_MS = 150.0
_PACE_LATENCY_MS = 10.0  # stimulus to the 20 uV onset of the captured P or QRS
_RETROGRADE_AFTER_QRS_MS = 20.0  # retrograde P onset after the QRS end (in the early ST)
_FLUTTER_DESCENT = 0.75  # fraction of the flutter cycle on the slow limb of the sawtooth
_AF_DEFAULT_RR_CV = 0.25
_AF_DEFAULT_F_MV = 0.08  # fine-to-medium f waves
_AF_MIN_RR_MS = 250.0  # AV-node refractoriness bounds the shortest conducted AF cycle
_START_MS = 500.0  # first P (or first QRS without P) onset, as the original generator did
# Pacing spikes are not a cardiac dipole: recorders detect them at a high sampling rate and
# draw them in every lead ("pace enhancement"), so each lead gets a fixed share of the spike.
_SPIKE_GAINS = np.array([0.8, 1.0, 0.7, -0.9, 0.6, 0.85, -1.0, -0.9, 0.7, 0.9, 1.0, 0.9])
# f waves are largest in V1 and the inferior leads (right-atrial proximity)
_AF_GAINS = np.array([0.15, 0.5, 0.6, -0.3, -0.2, 0.55, 1.0, 0.6, 0.3, 0.2, 0.15, 0.1])


def _einthoven(lead_i: float, lead_ii: float, precordial: tuple[float, ...]) -> np.ndarray:
    lead_iii = lead_ii - lead_i
    limb = [lead_i, lead_ii, lead_iii, -(lead_i + lead_ii) / 2, (lead_i - lead_iii) / 2,
            (lead_ii + lead_iii) / 2]
    return np.array(limb + list(precordial))


# Typical (counter-clockwise cavo-tricuspid) flutter: negative sawtooth in II, III, aVF, small
# in I, upright discrete F waves in V1 fading across the precordium. Unit gain in lead II.
_FLUTTER_GAINS = _einthoven(0.05, 1.0, (-0.7, -0.4, -0.2, -0.1, 0.05, 0.1))


class _Templates:
    """The beat and P-wave shapes a record needs, built once per record on first use."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        self._beats: dict[str, dict[str, Any]] = {}
        self._p: dict[str, tuple[list[Wave], float]] = {}

    def beat(self, name: str) -> dict[str, Any]:
        if name not in self._beats:
            s = self.spec
            if name == "normal":
                w = beat_template(s.morphology, s.qrs_ms, s.qt_ms, None, s.qrs_axis, s.qrs_scale,
                                  s.precordial_scale)
            elif name == "pvc":
                w = beat_template("pvc", _PVC_QRS_MS, s.qt_ms + 40, None, s.qrs_axis, 1.0)
            elif name == "aberrant":
                w = beat_template("rbbb", _ABERRANT_QRS_MS, s.qt_ms + 20, None, s.qrs_axis,
                                  s.qrs_scale, s.precordial_scale)
            elif name == "paced":
                w = beat_template("lbbb", _PACED_QRS_MS, s.qt_ms + 40, None, _PACED_AXIS, 1.0)
            elif name == "escape-ventricular":  # idioventricular: wide, its own axis
                w = beat_template("pvc", _VENTRICULAR_ESCAPE_QRS_MS, s.qt_ms + 60, None,
                                  s.qrs_axis + 60, 1.0)
            else:
                raise KeyError(name)
            w["qrs_ms"] = float(np.subtract(*_extent(w["qrs"], -100, 400)[::-1]))
            self._beats[name] = w
        return self._beats[name]

    def p(self, kind: str) -> tuple[list[Wave], float]:
        """P waves of an atrial event kind and their 20 uV onset (ms, unshifted)."""
        if kind not in self._p:
            waves = {"pac": _pac_p_waves, "retrograde": lambda: [_retrograde_p_wave()]}.get(
                kind, lambda: [_p_wave()])()  # sinus and paced (high right atrium) P alike
            self._p[kind] = (waves, _extent(waves, -300, 300)[0])
        return self._p[kind]


# ------------------------------------------------------------------------------------------------
# Timelines: atrial events and ventricular beats, with their links


def _link(p: AtrialEvent, beat: VentricularBeat) -> VentricularBeat:
    p.beat, beat.p = beat, p
    return beat


def _end_ms(spec: SyntheticSpec) -> float:
    """Latest QRS onset: the beat's T wave must fit in the record (as originally)."""
    return spec.duration_s * 1000.0 - max(spec.qt_ms, 450.0) - 50


def _premature_kind(spec: SyntheticSpec, i: int) -> str:
    if i in spec.premature:
        return spec.premature[i]
    if spec.pac_every and i % spec.pac_every == spec.pac_every - 1:
        return "pac"
    return "normal"


def _sinus_timeline(spec: SyntheticSpec, rng: np.random.Generator, atrial: list[AtrialEvent],
                    beats: list[VentricularBeat]) -> None:
    """Sinus node at ``heart_rate`` (with ``rr_jitter``), 1:1 conduction at ``pr_ms``, and
    premature beats. A PVC leaves the sinus node alone: the sinus P due during it finds the
    ventricles refractory (it is drawn, not conducted) and the next one conducts, so the pause
    is fully compensatory; a PVC ending before the next sinus beat is due is interpolated. A PAC
    discharges and resets the sinus node: the next sinus P follows one cycle after the PAC's P,
    so the pause is not compensatory."""
    rr = 60000.0 / spec.heart_rate
    pr = spec.pr_ms if spec.p_wave else 0.0
    refractory = spec.qt_ms + 40  # the PVC template's QT
    q = _START_MS + pr  # next sinus-conducted QRS onset
    prev: float | None = None
    end = _end_ms(spec)
    i = 0
    while True:
        kind = _premature_kind(spec, i)
        base = prev if prev is not None else q - rr
        onset = q if kind == "normal" else base + spec.coupling * rr
        if onset >= end:
            break
        template = {"pvc": "pvc", "pac-aberrant": "aberrant"}.get(kind, "normal")
        beat = VentricularBeat(onset, kind, template)
        if spec.p_wave and kind != "pvc":
            p = AtrialEvent(onset - pr, "sinus" if kind == "normal" else "pac")
            atrial.append(p)
            _link(p, beat)
        beats.append(beat)
        # one draw per beat, in the original order, so jittered records are unchanged
        nxt = rr * (1.0 + spec.rr_jitter * rng.standard_normal()) if spec.rr_jitter else rr
        nxt = float(np.clip(nxt, 0.45 * rr, 1.8 * rr))
        if kind == "pvc":
            if q - onset <= refractory:
                if spec.p_wave:
                    atrial.append(AtrialEvent(q - pr, "sinus"))
                q += nxt
        else:
            q = onset + nxt
        prev = onset
        i += 1


def _av_block_timeline(spec: SyntheticSpec, rng: np.random.Generator,
                       atrial: list[AtrialEvent], beats: list[VentricularBeat]) -> None:
    """Regular sinus P waves at the atrial rate; Mobitz I / II drop the last P of every group of
    ``av_ratio``; complete block conducts none and an escape focus beats on its own."""
    pp = 60000.0 / (spec.atrial_rate or spec.heart_rate)
    end = _end_ms(spec)
    if spec.av_block == "complete":
        k = 0
        while _START_MS + k * pp < end:
            atrial.append(AtrialEvent(_START_MS + k * pp, "sinus"))
            k += 1
        rv = 60000.0 / _escape_rate(spec)
        t = _START_MS - 100 + rng.uniform(0.0, 0.5) * rv  # its own phase: dissociated
        template = "normal" if spec.escape == "junctional" else "escape-ventricular"
        while t < end:
            beats.append(VentricularBeat(t, "escape", template))
            t += rv
        return
    n = spec.av_ratio
    k = 0
    while True:
        onset = _START_MS + k * pp
        m = k % n
        if m == n - 1:  # the blocked P of the group
            if onset >= end:
                break
            atrial.append(AtrialEvent(onset, "sinus"))
        else:
            pr = spec.pr_ms
            if spec.av_block == "mobitz1":  # decremental AV-node conduction, halving increments
                pr += spec.pr_increment_ms * 2.0 * (1.0 - 0.5 ** m)
            if onset + pr >= end:
                break
            p = AtrialEvent(onset, "sinus")
            atrial.append(p)
            beats.append(_link(p, VentricularBeat(onset + pr, "normal", "normal")))
        k += 1


def _escape_rate(spec: SyntheticSpec) -> float:
    # BRADY2018: junctional escape 40-60/min, ventricular escape 20-40/min
    return spec.escape_rate or (45.0 if spec.escape == "junctional" else 35.0)


def _af_timeline(spec: SyntheticSpec, rng: np.random.Generator,
                 beats: list[VentricularBeat]) -> None:
    """Irregularly irregular RR: independent draws, mean ``60000 / heart_rate``, coefficient of
    variation ``rr_jitter`` (default 0.25). Draws are stratified: each block of 8 RR intervals
    takes the 8 octiles of the distribution in random order, so even 10 s have the intended
    spread. A PVC comes at ``coupling``; an aberrant (RBBB-like) beat ends a long-short cycle
    sequence (Ashman phenomenon)."""
    rr = 60000.0 / spec.heart_rate
    cv = spec.rr_jitter or _AF_DEFAULT_RR_CV
    octiles = np.array([-1.534, -0.887, -0.489, -0.157, 0.157, 0.489, 0.887, 1.534])
    octiles /= octiles.std()
    n = int(spec.duration_s * 1000.0 / (0.45 * rr)) + 9
    z = np.concatenate([rng.permutation(octiles) for _ in range(n // 8 + 1)])[:n]
    intervals = np.clip(rr * (1.0 + cv * z), max(0.45 * rr, _AF_MIN_RR_MS), 1.8 * rr)
    kinds = [_premature_kind(spec, i) for i in range(n)]
    for i, kind in enumerate(kinds):
        if kind == "pvc" and i > 0:
            intervals[i] = spec.coupling * rr
            if i + 1 < n:  # concealed retrograde conduction into the AV node: a longer pause
                intervals[i + 1] = max(intervals[i + 1], 1.2 * rr)
        elif kind == "aberrant" and i > 1:
            intervals[i - 1], intervals[i] = 1.5 * rr, spec.coupling * rr
    t, end = _START_MS, _end_ms(spec)
    for i in range(n):
        if t >= end:
            break
        kind = kinds[i]
        template = {"pvc": "pvc", "aberrant": "aberrant"}.get(kind, "normal")
        beats.append(VentricularBeat(t, kind, template))
        if i + 1 < n:
            t += float(intervals[i + 1])


def _flutter_timeline(spec: SyntheticSpec, rng: np.random.Generator,
                      atrial: list[AtrialEvent], beats: list[VentricularBeat]) -> float:
    """F waves over the whole record; every ``conduction``-th one conducts after ``pr_ms``
    ("variable": 2, 3 or 4 at random per cycle). Returns the phase of the F waves (ms)."""
    cycle = 60000.0 / (spec.atrial_rate or 300.0)
    phase = rng.uniform(0.0, cycle)
    total = spec.duration_s * 1000.0
    onsets = np.arange(phase, total - cycle, cycle)
    events = [AtrialEvent(float(t), "flutter") for t in onsets]
    atrial.extend(events)
    end = _end_ms(spec)
    k = int(np.searchsorted(onsets, _START_MS))
    while k < len(events) and events[k].onset_ms + spec.pr_ms < end:
        beats.append(_link(events[k], VentricularBeat(events[k].onset_ms + spec.pr_ms, "normal",
                                                      "normal")))
        ratio = (int(rng.choice([2, 3, 4], p=[0.5, 0.2, 0.3])) if spec.conduction == "variable"
                 else int(spec.conduction))
        k += ratio
    return phase


def _junctional_timeline(spec: SyntheticSpec, atrial: list[AtrialEvent],
                         beats: list[VentricularBeat], templates: _Templates) -> None:
    rr = 60000.0 / spec.heart_rate
    t, end = _START_MS, _end_ms(spec)
    rp = templates.beat("normal")["qrs_ms"] + _RETROGRADE_AFTER_QRS_MS
    while t < end:
        beats.append(VentricularBeat(t, "junctional", "normal"))
        if spec.retrograde_p:  # retrograde atrial activation, not conducted to the ventricles
            atrial.append(AtrialEvent(t + rp, "retrograde"))
        t += rr


def _paced_timeline(spec: SyntheticSpec, mode: str, atrial: list[AtrialEvent],
                    beats: list[VentricularBeat], spikes: list[tuple[float, str]]) -> None:
    """Fixed-rate pacing at ``heart_rate``. VVI: ventricular spike and a paced QRS, no atrial
    activity drawn. AAI: atrial spike, P, conducted normal QRS after ``pr_ms``. DDD: atrial
    spike, P, ventricular spike ``pr_ms`` (the AV delay) after the atrial one, paced QRS; the P
    does not conduct because ventricular pacing comes first."""
    cycle = 60000.0 / spec.heart_rate
    t, end = _START_MS, _end_ms(spec)
    while True:
        if mode == "ventricular":
            q = t + _PACE_LATENCY_MS
            if q >= end:
                break
            spikes.append((t, "V"))
            beats.append(VentricularBeat(q, "paced", "paced"))
        else:
            p = AtrialEvent(t + _PACE_LATENCY_MS, "paced")
            q = (p.onset_ms + spec.pr_ms if mode == "atrial"
                 else t + spec.pr_ms + _PACE_LATENCY_MS)
            if q >= end:
                break
            spikes.append((t, "A"))
            atrial.append(p)
            if mode == "atrial":
                beats.append(_link(p, VentricularBeat(q, "normal", "normal")))
            else:
                spikes.append((t + spec.pr_ms, "V"))
                beats.append(VentricularBeat(q, "paced", "paced"))
        t += cycle


# ------------------------------------------------------------------------------------------------
# Continuous atrial activity


def _af_f_waves(t_ms: np.ndarray, fs: float, rng: np.random.Generator,
                amplitude: float) -> tuple[np.ndarray, float]:
    """Fibrillatory waves: one non-sinusoidal oscillation whose frequency wanders within 4-9 Hz
    (AF dominant frequency; cycle length 110-250 ms) and whose amplitude waxes and wanes.
    ``amplitude`` is the peak-to-peak in V1. Returns the waveform (V1 units) and its mean Hz."""
    t = t_ms / 1000.0
    ph = rng.uniform(0, 2 * np.pi, size=5)
    f_inst = rng.uniform(5.0, 7.0) + 1.2 * np.sin(2 * np.pi * 0.11 * t + ph[0]) \
        + 0.6 * np.sin(2 * np.pi * 0.31 * t + ph[1])
    f_inst = np.clip(f_inst, 4.0, 9.0)
    phase = 2 * np.pi * np.cumsum(f_inst) / fs + ph[2]
    envelope = 1.0 + 0.35 * np.sin(2 * np.pi * 0.23 * t + ph[3])
    wave = envelope * (np.sin(phase) + 0.25 * np.sin(2 * phase + ph[4])) / 1.25
    return amplitude / 2.0 * wave, float(f_inst.mean())


def _flutter_waves(t_ms: np.ndarray, fs: float, phase_ms: float, cycle_ms: float,
                   amplitude: float) -> np.ndarray:
    """Sawtooth F waves in lead II: from each F onset a slow descent over 75 % of the cycle, then
    a fast return; no isoelectric segment. Corners rounded by an 8 ms Hann window."""
    u = np.mod((t_ms - phase_ms) / cycle_ms, 1.0)
    d = _FLUTTER_DESCENT
    saw = np.where(u < d, 0.5 - u / d, -0.5 + (u - d) / (1.0 - d))
    k = max(int(round(8.0 * fs / 1000.0)), 1)
    win = np.hanning(k + 2)[1:-1]
    saw = np.convolve(np.pad(saw, k, mode="edge"), win / win.sum(), mode="same")[k:-k]
    return amplitude * saw


# ------------------------------------------------------------------------------------------------
# Drawing


def _window(waves: list[Wave], at_ms: float, fs: float, n: int) -> tuple[int, int]:
    """Sample range covering ``waves`` shifted by ``at_ms`` over +-8 sigma."""
    lo = min(w.centre - _WINDOW_SIGMAS * w.sigma_left for w in waves) + at_ms
    hi = max(w.centre + _WINDOW_SIGMAS * w.sigma_right for w in waves) + at_ms
    return max(int(np.ceil(lo * fs / 1000.0)), 0), min(int(np.floor(hi * fs / 1000.0)) + 1, n)


def _add_waves(sig: np.ndarray, t_ms: np.ndarray, fs: float, waves: list[Wave],
               at_ms: float) -> None:
    """Add ``waves`` shifted by ``at_ms``, each drawn only where it is not negligible."""
    for w in waves:
        i0, i1 = _window([w], at_ms, fs, len(t_ms))
        if i1 > i0:
            sig[:, i0:i1] += _shift([w], at_ms)[0].render(t_ms[i0:i1])


def _qrs_peak(t_ms: np.ndarray, fs: float, waves: list[Wave], at_ms: float) -> int:
    """Sample of the largest QRS deflection over all leads (the R-peak reference)."""
    i0, i1 = _window(waves, at_ms, fs, len(t_ms))
    part = sum(_shift([w], at_ms)[0].render(t_ms[i0:i1]) for w in waves)
    return i0 + int(np.argmax(np.abs(part).max(axis=0)))


def _check(spec: SyntheticSpec, paced: bool) -> None:
    rhythm = "paced" if paced else spec.rhythm
    if rhythm not in ("sinus", "af", "flutter", "junctional", "paced"):
        raise ValueError(f"unknown rhythm {spec.rhythm!r}")
    if paced and (spec.pacing or "ventricular") not in ("ventricular", "atrial", "dual"):
        raise ValueError(f"unknown pacing {spec.pacing!r}")
    if rhythm == "flutter" and spec.conduction not in (2, 3, 4, "variable"):
        raise ValueError("conduction must be 2, 3, 4 or 'variable'")
    if spec.av_block is not None:
        if spec.av_block not in ("mobitz1", "mobitz2", "complete"):
            raise ValueError(f"unknown av_block {spec.av_block!r}")
        if rhythm != "sinus" or not spec.p_wave:
            raise ValueError("av_block needs sinus rhythm with P waves")
        if spec.av_block != "complete" and spec.av_ratio < 2:
            raise ValueError("av_ratio must be at least 2 (2:1)")
        if spec.av_block == "complete" and _escape_rate(spec) >= (spec.atrial_rate
                                                                  or spec.heart_rate):
            raise ValueError("the escape rate must be below the atrial rate")
    kinds = set(spec.premature.values()) | ({"pac"} if spec.pac_every else set())
    allowed = {"pvc", "pac", "pac-aberrant"} if rhythm == "sinus" and spec.av_block is None \
        else {"pvc", "aberrant"} if rhythm == "af" else set()
    if not kinds <= allowed:
        raise ValueError(f"premature {sorted(kinds - allowed)} not supported with rhythm "
                         f"{rhythm!r}" + (f" and av_block {spec.av_block!r}" if spec.av_block
                                          else ""))


def _rate_label(focus: str, rate: float) -> str:
    if focus == "sinus":  # AHA2007-I: bradycardia below 60/min, tachycardia above 100/min
        return "sinus-bradycardia" if rate < 60 else "sinus-tachycardia" if rate > 100 else "sinus"
    # junctional escape rhythm 40-60/min, accelerated 60-100, tachycardia above
    return "junctional" if rate <= 60 else ("accelerated-junctional" if rate <= 100
                                             else "junctional-tachycardia")


def generate(spec: SyntheticSpec | None = None, **kwargs: Any) -> SyntheticEcg:
    """A synthetic 12-lead ECG (mV, leads in standard order) with its ground truth."""
    spec = spec or SyntheticSpec(**kwargs)
    paced = spec.pacing is not None or spec.rhythm == "paced"
    _check(spec, paced)
    rng = np.random.default_rng(spec.seed)  # noise, wander and the original sinus/f-wave draws
    rng_rhythm = np.random.default_rng([spec.seed, 1])  # new rhythms: the noise stays the same
    fs = spec.fs
    n = int(spec.duration_s * fs)
    t_ms = np.arange(n) * 1000.0 / fs
    sig = np.zeros((12, n))
    templates = _Templates(spec)
    atrial: list[AtrialEvent] = []
    beats: list[VentricularBeat] = []
    spikes: list[tuple[float, str]] = []
    extra: dict[str, Any] = {}
    pacing = (spec.pacing or "ventricular") if paced else None

    if paced:
        _paced_timeline(spec, pacing, atrial, beats, spikes)
        label = f"paced-{pacing}"
    elif spec.rhythm == "af":
        _af_timeline(spec, rng_rhythm, beats)
        label = "af"
    elif spec.rhythm == "flutter":
        flutter_phase = _flutter_timeline(spec, rng_rhythm, atrial, beats)
        label = "flutter"
    elif spec.rhythm == "junctional":
        _junctional_timeline(spec, atrial, beats, templates)
        label = _rate_label("junctional", spec.heart_rate)
    elif spec.av_block is not None:
        _av_block_timeline(spec, rng_rhythm, atrial, beats)
        label = {"mobitz1": "mobitz1", "mobitz2": "mobitz2"}.get(spec.av_block,
                                                                 "complete-av-block")
    else:
        _sinus_timeline(spec, rng, atrial, beats)
        if spec.p_wave:
            label = _rate_label("sinus", spec.heart_rate)
        elif spec.fibrillation_mv > 0 or spec.rr_jitter > 0:
            label = "af"  # the original AF recipe: no P, irregular RR, f waves
        else:
            label = _rate_label("junctional", spec.heart_rate)  # regular, narrow, no P
    atrial.sort(key=lambda a: a.onset_ms)
    beats.sort(key=lambda b: b.onset_ms)

    # ventricular beats, their R peaks and ST shifts
    r_peaks = []
    for beat in beats:
        waves = templates.beat(beat.template)
        _add_waves(sig, t_ms, fs, waves["qrs"] + waves["t"], beat.onset_ms)
        r_peaks.append(_qrs_peak(t_ms, fs, waves["qrs"], beat.onset_ms))
        for lead, shift in spec.st_shift_mv.items():
            k = STANDARD_LEADS.index(lead)
            j = beat.onset_ms + waves["qrs_ms"]
            t_peak = beat.onset_ms + waves["t"][0].centre
            rise = expit((t_ms - j) / 2.0)
            fall = expit(-(t_ms - t_peak) / 25.0)
            sig[k] += shift * rise * fall
    # discrete atrial waves
    for a in atrial:
        if a.kind != "flutter":
            p_waves, p_on = templates.p(a.kind)
            _add_waves(sig, t_ms, fs, p_waves, a.onset_ms - p_on)
    # continuous atrial activity
    if spec.rhythm == "flutter" and not paced:
        cycle = 60000.0 / (spec.atrial_rate or 300.0)
        saw = _flutter_waves(t_ms, fs, flutter_phase, cycle, spec.flutter_mv)
        sig += _FLUTTER_GAINS[:, None] * saw[None, :]
    elif spec.rhythm == "af" or (paced and pacing == "ventricular" and spec.fibrillation_mv > 0):
        f, f_hz = _af_f_waves(t_ms, fs, rng_rhythm, spec.fibrillation_mv or _AF_DEFAULT_F_MV)
        sig += _AF_GAINS[:, None] * f[None, :]
        extra["f_wave_hz"] = f_hz
    elif not spec.p_wave and spec.fibrillation_mv > 0 and not paced:
        # the original f waves: a few incommensurate 5-8 Hz components with drifting phase
        f = np.zeros(n)
        freqs = rng.uniform(5.0, 8.0, size=4)
        for freq in freqs:
            f += np.sin(2 * np.pi * freq * t_ms / 1000.0 + rng.uniform(0, 2 * np.pi))
        f *= spec.fibrillation_mv / 2.0
        for lead, gain in (("V1", 1.0), ("II", 0.6), ("III", 0.6), ("aVF", 0.6), ("V2", 0.7)):
            sig[STANDARD_LEADS.index(lead)] += gain * f
        extra["f_wave_hz"] = float(freqs.mean())
    # pacing spikes: one rectangular pulse of at least one sample, in every lead
    width = max(int(round(spec.pacing_spike_ms * fs / 1000.0)), 1)
    spike_samples = [int(round(t * fs / 1000.0)) for t, _ in spikes]
    for s in spike_samples:
        sig[:, s:s + width] += spec.pacing_spike_mv * _SPIKE_GAINS[:, None]
    if spec.wander_mv:
        phase = rng.uniform(0, 2 * np.pi)
        sig += spec.wander_mv * np.sin(2 * np.pi * 0.25 * t_ms / 1000.0 + phase)
    if spec.noise_mv:
        sig += rng.normal(0.0, spec.noise_mv, size=sig.shape)

    truth = _truth(spec, templates, label, pacing, atrial, beats, r_peaks, extra)
    truth["pacing_spikes_ms"] = [t for t, _ in spikes]
    truth["pacing_spike_chambers"] = [c for _, c in spikes]
    truth["pacing_spike_samples"] = spike_samples
    truth["pacing_spike_width_ms"] = width * 1000.0 / fs if spikes else None
    return SyntheticEcg(sig, fs, list(STANDARD_LEADS), np.asarray(r_peaks), truth, spec)


def _truth(spec: SyntheticSpec, templates: _Templates, label: str, pacing: str | None,
           atrial: list[AtrialEvent], beats: list[VentricularBeat], r_peaks: list[int],
           extra: dict[str, Any]) -> dict[str, Any]:
    # interval keys describe the dominant beat, with its P where the P conducts to it
    if pacing in ("ventricular", "dual"):
        dominant = dict(templates.beat("paced"))
    elif spec.av_block == "complete" and spec.escape == "ventricular":
        dominant = dict(templates.beat("escape-ventricular"))
    else:
        dominant = dict(templates.beat("normal"))
    if any(b.p is not None and b.kind == "normal" and b.p.kind != "flutter" for b in beats):
        p_waves, p_on = templates.p("sinus")
        dominant["p"] = _shift(p_waves, -spec.pr_ms - p_on)
    else:
        dominant["p"] = []
    truth: dict[str, Any] = _truth_of(dominant)
    onsets = [b.onset_ms for b in beats]
    rr = np.diff(onsets)
    index = {id(a): k for k, a in enumerate(atrial)}
    beat_index = {id(b): k for k, b in enumerate(beats)}
    rate = 60000.0 / float(np.mean(rr)) if len(onsets) > 1 else 0.0
    if len(atrial) > 1:
        atrial_rate: float | None = 60000.0 / float(np.median(np.diff([a.onset_ms
                                                                      for a in atrial])))
    elif "f_wave_hz" in extra:
        atrial_rate = 60.0 * extra["f_wave_hz"]
    else:
        atrial_rate = None
    av_block = spec.av_block
    if av_block is None and spec.p_wave and label.startswith(("sinus", "paced-atrial")) \
            and spec.pr_ms > 200:
        av_block = "first-degree"
    truth.update(
        rhythm=label,
        av_block=av_block,
        heart_rate=rate,
        ventricular_rate=rate,
        atrial_rate=atrial_rate,
        beat_kinds=[b.kind for b in beats],
        qrs_onsets_ms=onsets,
        qrs_ms_per_beat=[templates.beat(b.template)["qrs_ms"] for b in beats],
        rr_ms=[float(x) for x in rr],
        r_peaks=[int(r) for r in r_peaks],
        beat_p_index=[index[id(b.p)] if b.p is not None else None for b in beats],
        pr_ms_per_beat=[b.onset_ms - b.p.onset_ms if b.p is not None else None for b in beats],
        p_onsets_ms=[a.onset_ms for a in atrial],
        p_kinds=[a.kind for a in atrial],
        p_conducted=[a.conducted for a in atrial],
        p_beat_index=[beat_index[id(a.beat)] if a.beat is not None else None for a in atrial],
    )
    truth.update(extra)
    if spec.rhythm == "flutter" and pacing is None:
        conducted = [k for k, a in enumerate(atrial) if a.conducted]
        truth["conduction_ratios"] = [int(x) for x in np.diff(conducted)]
    if spec.av_block == "complete":
        truth["escape"] = spec.escape
    if pacing == "dual":
        truth["av_delay_ms"] = spec.pr_ms
    if spec.rhythm == "junctional" and spec.retrograde_p and not pacing:
        truth["rp_ms"] = atrial[0].onset_ms - beats[0].onset_ms if atrial else None
    return truth


# ------------------------------------------------------------------------------------------------


def holter_excerpt(ecg: SyntheticEcg, fs: float | None = None) -> SyntheticEcg:
    """The 2-lead Holter view of a synthetic record: II as "MLII" and V5 (the MIT-BIH pair),
    optionally resampled (for example to 360 or 250 Hz) with a polyphase anti-aliasing filter.
    Times in the truth stay in ms; sample indices (R peaks, pacing spikes) are rescaled."""
    from scipy.signal import resample_poly

    sig = ecg.signals_mv[[STANDARD_LEADS.index("II"), STANDARD_LEADS.index("V5")]].copy()
    new_fs = float(fs or ecg.fs)
    if new_fs != ecg.fs:
        ratio = (Fraction(new_fs).limit_denominator(10000)
                 / Fraction(float(ecg.fs)).limit_denominator(10000))
        sig = resample_poly(sig, ratio.numerator, ratio.denominator, axis=1)
    n = sig.shape[1]

    def rescale(samples: Any) -> list[int]:
        return [min(int(round(s * new_fs / ecg.fs)), n - 1) for s in samples]

    truth = dict(ecg.truth)
    truth["r_peaks"] = rescale(ecg.truth["r_peaks"])
    truth["pacing_spike_samples"] = rescale(ecg.truth["pacing_spike_samples"])
    truth["holter_leads"] = {"MLII": "II", "V5": "V5"}
    return SyntheticEcg(sig, new_fs, ["MLII", "V5"], np.asarray(truth["r_peaks"], dtype=int),
                        truth, ecg.spec)
