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


def _score(x: np.ndarray, fs: float, lead: str, hp: np.ndarray, band: np.ndarray,
           slow: np.ndarray) -> LeadQuality:
    n = x.size
    win = max(int(fs), 1)
    issues: list[str] = []
    if n < win:
        return LeadQuality(lead, 0.0, flat=True, issues=["shorter than 1 s"])
    # Flat line: peak-to-peak per 1-s window.
    k = n // win
    p2p = np.ptp(x[: k * win].reshape(k, win), axis=1)
    flat_frac = float(np.mean(p2p < FLAT_P2P_MV))
    if flat_frac > FLAT_FRACTION:
        return LeadQuality(lead, 0.0, flat=True, issues=["flat line"])
    # Saturation: runs at the record's extreme values (amplifier or ADC clipping).
    sat = _clipped_fraction(x, int(SATURATION_RUN_S * fs))
    # High-frequency noise: residual above 40 Hz against the 0.5-40 Hz amplitude.
    amplitude = float(np.percentile(band, 99.5) - np.percentile(band, 0.5))
    hf_rms = float(np.sqrt(np.mean(hp**2)))
    hf_ratio = hf_rms / max(amplitude, 1e-6)
    # Baseline wander: the slow component's excursion per 2-s window.
    w2 = 2 * win
    k2 = max(n // w2, 1)
    wander = float(np.median(np.ptp(slow[: k2 * w2].reshape(k2, -1), axis=1)))

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


def _clipped_fraction(x: np.ndarray, run: int) -> float:
    run = max(run, 2)
    hi, lo = x.max(), x.min()
    if hi - lo <= 0:
        return 1.0
    tol = 1e-6 * max(abs(hi), abs(lo), 1.0)
    total = 0
    for level in (hi, lo):
        at = np.abs(x - level) <= tol
        if at.sum() < run:
            continue
        # lengths of consecutive runs at the extreme value
        edges = np.diff(np.concatenate(([0], at.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        total += int(lengths[lengths >= run].sum())
    return total / x.size


def assess(signals_mv: np.ndarray, fs: float, leads: list[str]) -> list[LeadQuality]:
    """Quality of every lead (filters run once over all leads)."""
    x = np.atleast_2d(np.asarray(signals_mv, dtype=np.float64))
    hp = highpass(x, fs, 40.0) if fs > 100 else np.zeros_like(x)
    band = lowpass(highpass(x, fs, 0.5), fs, 40.0)
    slow = lowpass(x, fs, 0.7, order=2)
    return [_score(x[i], fs, name, hp[i], band[i], slow[i]) for i, name in enumerate(leads)]
