"""MERL input preparation as named steps (after ``finetune/finetune_dataset.py`` of the release).

1. ``standard_12_leads``: the 12 standard leads in standard order (I, II, III, aVR, aVL, aVF,
   V1-V6); MERL has no meaning for fewer leads.
2. ``resample_500hz``: 500 Hz (``models.ecg.signal`` already reads at 500 Hz).
3. ``pad_or_truncate``: the first 10 s (5000 samples); shorter records are zero-padded at the end,
   as the authors did for CPSC2018.
4. ``minmax_0_1``: one min-max over the whole record, ``(x - min) / (max - min + 1e-8)``.
5. ``swap_avl_avf``: rows 4 and 5 swapped, to the MIMIC-IV-ECG order MERL was pre-trained on
   (I, II, III, aVR, aVF, aVL, V1-V6).
"""

from __future__ import annotations

import numpy as np

from models.ecg.errors import EcgInputError
from models.ecg.leads import STANDARD_LEADS
from models.ecg.signal import EcgRecord, resample

SEQ_LEN = 5000
FS = 500.0
MINMAX_EPS = 1e-8
STEPS = ("standard_12_leads", "resample_500hz", "pad_or_truncate", "minmax_0_1", "swap_avl_avf")


def standard_12_leads(record: EcgRecord) -> np.ndarray:
    missing = [lead for lead in STANDARD_LEADS if lead not in record.leads]
    if missing:
        raise EcgInputError(f"MERL needs the 12 standard leads; the record has "
                            f"{', '.join(record.leads)} and lacks {', '.join(missing)}")
    return np.vstack([record.lead(lead) for lead in STANDARD_LEADS])


def resample_500hz(x: np.ndarray, fs: float) -> np.ndarray:
    return x if abs(fs - FS) < 1e-6 else resample(x, fs, FS)


def pad_or_truncate(x: np.ndarray, seq_len: int = SEQ_LEN) -> np.ndarray:
    if x.shape[1] >= seq_len:
        return x[:, :seq_len]
    return np.pad(x, ((0, 0), (0, seq_len - x.shape[1])))


def minmax_0_1(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo + MINMAX_EPS)


def swap_avl_avf(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[[4, 5]] = out[[5, 4]]
    return out


def preprocess(record: EcgRecord, seq_len: int = SEQ_LEN) -> np.ndarray:
    """The MERL input (12 x ``seq_len``, float32) of one record."""
    x = standard_12_leads(record)
    x = resample_500hz(x, record.fs)
    x = pad_or_truncate(x, seq_len)
    x = minmax_0_1(x)
    return swap_avl_avf(x).astype(np.float32)
