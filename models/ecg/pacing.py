"""Pacemaker stimulus artefacts ("spikes") on the raw signal, before any low-pass filter.

A pacing stimulus lasts 0.1-1 ms and is recorded as a deflection of one or two samples at 500 Hz,
in most leads at once. The QRS never changes that fast: its curvature spreads over several
samples. A spike is therefore a sample whose departure from the median of the 5 samples around
it (10 ms at 500 Hz) is at least ``SPIKE_MIN_MV`` in at least ``SPIKE_MIN_LEADS`` usable leads
(all usable leads when fewer), in the same sample or the next. Carts that filter their spikes
out, or that store a record without them, give no spike: a paced record then reads as a wide-QRS
rhythm, and the docs say so.
"""

from __future__ import annotations

import numpy as np

# departure from the 10-ms running median; a tall narrow R at 500 Hz reaches about 0.6 (MEDGATE)
SPIKE_MIN_MV = 0.8
SPIKE_MIN_LEADS = 3
SPIKE_REFRACTORY_MS = 20.0  # one stimulus (its ringing after resampling) counts once
BRIDGE_MS = 4.0  # a spike and its ringing after anti-alias filtering last a few samples


def spikes(signals_mv: np.ndarray, fs: float, usable: list[bool]) -> np.ndarray:
    """Sample indices of pacing spikes."""
    use = [i for i, u in enumerate(usable) if u] or list(range(signals_mv.shape[0]))
    x = np.asarray(signals_mv[use], dtype=np.float64)
    if x.shape[1] < 5:
        return np.zeros(0, dtype=int)
    size = max(int(round(0.010 * fs)) | 1, 3)
    half = size // 2
    # cheap screen first: a spike departs from the mean of its two neighbours by at least half
    # the threshold; only those samples get the running-median test
    curv = np.abs(x[:, 1:-1] - 0.5 * (x[:, :-2] + x[:, 2:]))
    need = min(SPIKE_MIN_LEADS, len(use))
    screen = np.flatnonzero((curv >= 0.5 * SPIKE_MIN_MV).sum(axis=0) >= need) + 1
    screen = screen[(screen >= half) & (screen < x.shape[1] - half - 1)]
    if not screen.size:
        return np.zeros(0, dtype=int)
    idx = screen[:, None] + np.arange(-half, half + 1)[None, :]
    win = x[:, idx]  # leads x candidates x window
    dev = np.abs(x[:, screen] - np.median(win, axis=2))
    dev_next = np.abs(x[:, screen + 1] - np.median(x[:, idx + 1], axis=2))
    # the same sample or the next (a stimulus between two samples)
    hit = (dev >= SPIKE_MIN_MV) | (dev_next >= SPIKE_MIN_MV)
    cand = screen[hit.sum(axis=0) >= need]
    out: list[int] = []
    gap = int(SPIKE_REFRACTORY_MS * fs / 1000.0)
    for c in cand:
        if not out or c - out[-1] > gap:
            out.append(int(c))
    return np.asarray(out, dtype=int)


def without_spikes(signals_mv: np.ndarray, spikes_at: np.ndarray, fs: float) -> np.ndarray:
    """The signal with each spike bridged by a straight line over +-``BRIDGE_MS``: the QRS
    detector, the filters and the quality checks must see the heart, not the stimulus (carts
    do the same before measuring)."""
    if not spikes_at.size:
        return signals_mv
    out = np.array(signals_mv, dtype=np.float64, copy=True)
    half = max(int(round(BRIDGE_MS * fs / 1000.0)), 1)
    n = out.shape[1]
    for s in spikes_at:
        a, b = max(int(s) - half, 0), min(int(s) + half + 1, n - 1)
        t = (np.arange(a, b + 1) - a) / max(b - a, 1)
        out[:, a: b + 1] = out[:, a: a + 1] + (out[:, b: b + 1] - out[:, a: a + 1]) * t
    return out
