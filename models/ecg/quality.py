"""Per-lead signal quality: flat line, saturation, high-frequency noise and baseline wander.

Each lead gets a score in [0, 1] (1 = clean) and the list of problems found. The limits are
engineering values (not clinical criteria): they follow the usual ranges of diagnostic ECG carts
(amplitudes of a few mV, 20 uV resolution, wander below 0.5 mV) and are documented in
``docs/ecg.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.ecg.criteria import QUALITY_ADEQUATE_MIN
from models.ecg.filters import highpass, lowpass

FLAT_P2P_MV = 0.02  # a 1-s window with < 20 uV peak-to-peak carries no ECG
FLAT_FRACTION = 0.5  # flat in over half of the windows -> flat lead
SATURATION_RUN_S = 0.02  # 20 ms stuck at the extreme value -> clipped
SATURATION_FRACTION = 0.01  # over 1 % of samples clipped -> saturated
# High-frequency noise (RMS above 40 Hz) counts only when it is large both relative to the lead's
# own amplitude (a small-QRS lead such as aVL is not noisy for having a small QRS) and in absolute
# terms (a cart's noise floor is ~10-20 uV RMS).
HF_NOISE_RATIO = 0.05  # ratio to the 0.5-40 Hz peak-to-peak amplitude where penalties start
HF_NOISE_RATIO_SPAN = 0.15  # ... and this much above it, the lead is unusable
HF_NOISE_MV = 0.03  # absolute RMS where penalties start
HF_NOISE_MV_SPAN = 0.07
WANDER_MV = 0.5  # peak-to-peak of the < 0.7 Hz component per 2 s window (median)
WANDER_DECIMATE_S = 0.02  # the < 0.7 Hz component is computed on means over 20 ms


@dataclass
class LeadQuality:
    lead: str
    score: float
    flat: bool = False
    saturated_fraction: float = 0.0
    hf_noise_ratio: float = 0.0
    baseline_wander_mv: float = 0.0
    issues: list[str] = field(default_factory=list)

    @property
    def adequate(self) -> bool:
        return self.score >= QUALITY_ADEQUATE_MIN.value


def assess_lead(x: np.ndarray, fs: float, lead: str) -> LeadQuality:
    """Quality of one lead (millivolts at ``fs``)."""
    return assess(x[None, :], fs, [lead])[0]


def _clipped_fraction(x: np.ndarray, run: int) -> np.ndarray:
    """Per lead, the fraction of samples in runs of >= ``run`` samples at the lead's extreme
    values (leads x samples in, one value per lead out; a constant lead counts as clipped)."""
    run = max(run, 2)
    hi = x.max(axis=-1, keepdims=True)
    lo = x.min(axis=-1, keepdims=True)
    tol = 1e-6 * np.maximum(np.maximum(np.abs(hi), np.abs(lo)), 1.0)
    total = np.zeros(x.shape[0])
    for level in (hi, lo):
        at = np.abs(x - level) <= tol
        # lengths of consecutive runs at the extreme value, all leads at once
        pad = np.zeros((x.shape[0], 1), dtype=np.int8)
        edges = np.diff(np.concatenate((pad, at.view(np.int8), pad), axis=-1), axis=-1)
        lead_s, starts = np.nonzero(edges == 1)
        ends = np.nonzero(edges == -1)[1]  # same order: row-major, one end per start
        lengths = ends - starts
        long = lengths >= run
        np.add.at(total, lead_s[long], lengths[long])
    frac = total / x.shape[-1]
    return np.where((hi - lo)[:, 0] <= 0, 1.0, frac)


def assess(signals_mv: np.ndarray, fs: float, leads: list[str],
           band: np.ndarray | None = None) -> list[LeadQuality]:
    """Quality of every lead: filters and measures run over all leads at once. ``band`` is the
    0.5-40 Hz signal when the caller has it already (``filters.diagnostic``)."""
    x = np.atleast_2d(np.asarray(signals_mv, dtype=np.float64))
    n = x.shape[-1]
    win = max(int(fs), 1)
    if n < win:
        return [LeadQuality(name, 0.0, flat=True, issues=["shorter than 1 s"]) for name in leads]
    # Flat line: peak-to-peak per 1-s window.
    k = n // win
    flat_frac = np.mean(np.ptp(x[:, : k * win].reshape(x.shape[0], k, win), axis=-1)
                        < FLAT_P2P_MV, axis=-1)
    # Saturation: runs at the record's extreme values (amplifier or ADC clipping).
    sat = _clipped_fraction(x, int(SATURATION_RUN_S * fs))
    # High-frequency noise: residual above 40 Hz against the 0.5-40 Hz amplitude.
    hp = highpass(x, fs, 40.0) if fs > 100 else np.zeros_like(x)
    hf_rms = np.sqrt(np.mean(hp**2, axis=-1))
    if band is None:
        band = lowpass(highpass(x, fs, 0.5), fs, 40.0)
    lo_p, hi_p = np.percentile(band, [0.5, 99.5], axis=-1)
    hf_ratio = hf_rms / np.maximum(hi_p - lo_p, 1e-6)
    # Baseline wander: the slow component's excursion per 2-s window. It is under 0.7 Hz, so it
    # is computed on 20-ms means (a 10x shorter signal; within 40 uV of the full-rate value).
    wander = _wander(x, fs)
    out = []
    for i, name in enumerate(leads):
        out.append(_score(name, float(flat_frac[i]), float(sat[i]), float(hf_rms[i]),
                          float(hf_ratio[i]), float(wander[i])))
    return out


def _wander(x: np.ndarray, fs: float) -> np.ndarray:
    step = max(int(round(WANDER_DECIMATE_S * fs)), 1)
    m = x.shape[-1] // step
    coarse = x[:, : m * step].reshape(x.shape[0], m, step).mean(axis=-1)
    cfs = fs / step
    slow = lowpass(coarse, cfs, 0.7, order=2)
    w2 = max(int(2 * cfs), 1)
    k2 = max(m // w2, 1)
    if m < w2:
        return np.ptp(slow, axis=-1)
    return np.median(np.ptp(slow[:, : k2 * w2].reshape(x.shape[0], k2, w2), axis=-1), axis=-1)


def _score(lead: str, flat_frac: float, sat: float, hf_rms: float, hf_ratio: float,
           wander: float) -> LeadQuality:
    if flat_frac > FLAT_FRACTION:
        return LeadQuality(lead, 0.0, flat=True, issues=["flat line"])
    issues: list[str] = []
    score = 1.0
    if sat > SATURATION_FRACTION:
        issues.append(f"saturated ({sat:.0%} of samples clipped)")
        score *= max(0.0, 1.0 - 10.0 * sat)
    if hf_ratio > HF_NOISE_RATIO and hf_rms > HF_NOISE_MV:
        issues.append("high-frequency noise")
        rel = 1.0 - (hf_ratio - HF_NOISE_RATIO) / HF_NOISE_RATIO_SPAN
        absolute = 1.0 - (hf_rms - HF_NOISE_MV) / HF_NOISE_MV_SPAN
        score *= float(np.clip(max(rel, absolute), 0.0, 1.0))
    if wander > WANDER_MV:
        issues.append("baseline wander")
        score *= max(0.0, 1.0 - (wander - WANDER_MV) / (2 * WANDER_MV))
    if flat_frac > 0.1:
        issues.append(f"intermittently flat ({flat_frac:.0%} of the record)")
        score *= 1.0 - flat_frac
    return LeadQuality(lead, round(float(np.clip(score, 0.0, 1.0)), 3), flat=False,
                       saturated_fraction=sat, hf_noise_ratio=hf_ratio,
                       baseline_wander_mv=wander, issues=issues)
