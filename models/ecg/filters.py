"""Zero-phase filters shared by quality, R-peak detection and delineation.

Zero-phase (forward-backward) IIR filters do not shift waves in time, so fiducial points found on
the filtered signal sit where they are in the raw one. A zero-phase high-pass up to 0.67 Hz keeps
the ST segment undistorted (AHA/ACCF/HRS 2007 recommendations on ECG acquisition, Kligfield et al.).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import butter, sosfiltfilt


@lru_cache(maxsize=64)
def _sos(kind: str, cutoff: tuple[float, ...], fs: float, order: int) -> np.ndarray:
    nyq = fs / 2.0
    wn = [min(c / nyq, 0.99) for c in cutoff]
    return butter(order, wn if len(wn) > 1 else wn[0], btype=kind, output="sos")


def _apply(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    # sosfiltfilt needs a few times the filter length; very short inputs are returned as is.
    if x.shape[-1] <= 3 * (2 * sos.shape[0] + 1):
        return np.asarray(x, dtype=np.float64).copy()
    return sosfiltfilt(sos, x, axis=-1)


def bandpass(x: np.ndarray, fs: float, low: float, high: float, order: int = 2) -> np.ndarray:
    return _apply(_sos("bandpass", (low, high), fs, order), x)


def highpass(x: np.ndarray, fs: float, cutoff: float, order: int = 2) -> np.ndarray:
    return _apply(_sos("highpass", (cutoff,), fs, order), x)


def lowpass(x: np.ndarray, fs: float, cutoff: float, order: int = 4) -> np.ndarray:
    return _apply(_sos("lowpass", (cutoff,), fs, order), x)


def diagnostic(x: np.ndarray, fs: float) -> np.ndarray:
    """Baseline-free, 40 Hz band-limited signal used for delineation and amplitudes:
    0.5 Hz zero-phase high-pass (ST-safe) and 40 Hz low-pass (mains and muscle noise)."""
    return lowpass(highpass(x, fs, 0.5), fs, 40.0, order=2)


def moving_average(x: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` samples (same length as ``x``)."""
    n = max(int(n), 1)
    if n == 1:
        return np.asarray(x, dtype=np.float64)
    kernel = np.ones(n) / n
    return np.convolve(x, kernel, mode="same")
