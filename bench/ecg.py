"""ECG benchmarks: measurement-engine and MERL-reference throughput, and R-peak detection against
a peer run in the same process.

- R peaks: MIT-BIH record 100 (30 min, MLII + V5, resampled to 500 Hz), MedGate's detector
  against NeuroKit2's default detector (``ecg_clean`` + ``ecg_peaks``), or wfdb's XQRS when
  NeuroKit2 is not installed, on the same MLII samples. Prints sensitivity and positive
  predictivity (150 ms window, beat annotations only) and the MedGate/peer speed ratio.
- ecg-measure: the whole engine (read DICOM, measure, interpret) on pydicom's 10-s 12-lead ECG.
- MERL reference: the ECG tower alone, and the whole engine (read, preprocess, score).

Run from the repository root:  .venv/bin/python bench/ecg.py [--repeat N]
Torch uses two threads, the size of the reference machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (after one warm-up) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def rpeak_section(repeat: int) -> None:
    from models.ecg import rpeaks
    from models.ecg.signal import read_ecg

    hea = DATA / "ecg" / "wfdb" / "100.hea"
    if not hea.exists():
        print(f"R peaks: skipped ({hea} not present)")
        return
    import wfdb

    rec = read_ecg(hea)
    ann = wfdb.rdann(str(hea.with_suffix("")), "atr")
    ref = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True)
                    if sym in BEAT_SYMBOLS])
    ref = np.round(ref * rec.fs / ann.fs).astype(int)
    tol = int(0.15 * rec.fs)
    mlii = rec.lead("II")

    def score(peaks: np.ndarray) -> str:
        tp, fn, fp = rpeaks.match_beats(ref, peaks, tol)
        return f"Se {tp / (tp + fn):.2%}  PPV {tp / (tp + fp):.2%}  (TP {tp}, FN {fn}, FP {fp})"

    t_multi, multi = timed(lambda: rpeaks.detect(rec.signals_mv, rec.fs, rec.leads), repeat)
    t_single, single = timed(lambda: rpeaks.detect(mlii[None], rec.fs, ["II"]), repeat)
    peer_name, peer = _peer(rec.fs)
    t_peer, peer_peaks = timed(lambda: peer(mlii), repeat)
    minutes = rec.duration_s / 60.0
    print(f"R-peak detection, MIT-BIH 100 ({minutes:.0f} min at {rec.fs:g} Hz, {ref.size} beats)")
    print(f"  MedGate, MLII + V5 : {t_multi:6.2f} s  {score(multi.peaks)}")
    print(f"  MedGate, MLII only : {t_single:6.2f} s  {score(single.peaks)}")
    print(f"  {peer_name:<19}: {t_peer:6.2f} s  {score(peer_peaks)}")
    print(f"  speed ratio MedGate/{peer_name.split()[0]} (MLII only, higher is faster): "
          f"{t_peer / t_single:.2f}")


def _peer(fs: float) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    try:
        import neurokit2 as nk

        def run(x: np.ndarray) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clean = nk.ecg_clean(x, sampling_rate=int(fs))
                _, info = nk.ecg_peaks(clean, sampling_rate=int(fs))
            return np.asarray(info["ECG_R_Peaks"], dtype=int)

        return f"NeuroKit2 {nk.__version__}", run
    except ImportError:
        from wfdb import processing

        def run_xqrs(x: np.ndarray) -> np.ndarray:
            xq = processing.XQRS(sig=x, fs=fs)
            xq.detect(verbose=False)
            return np.asarray(xq.qrs_inds, dtype=int)

        return "wfdb XQRS", run_xqrs


def measure_section(repeat: int) -> None:
    from pydicom.data import get_testdata_file

    from models.base import ModelSpec, StudyInput, build

    path = Path(get_testdata_file("waveform_ecg.dcm"))
    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    study = StudyInput("ecg", [path])
    t, res = timed(lambda: engine.run(study), repeat)
    print(f"ecg-measure engine, 10-s 12-lead DICOM (read + measure + interpret): {t * 1000:.0f} "
          f"ms per ECG = {1 / t:.1f} ECGs/s ({len(res.measurements)} measurements, "
          f"{len(res.findings)} findings)")


def merl_section(repeat: int) -> None:
    import torch
    from pydicom.data import get_testdata_file

    from models.base import ModelSpec, StudyInput, build, load_engine
    from models.ecg.merl_preprocess import preprocess
    from models.ecg.signal import read_ecg

    path = Path(get_testdata_file("waveform_ecg.dcm"))
    engine = load_engine(build(ModelSpec("merl", "reference", variant="reference")))
    x = torch.from_numpy(preprocess(read_ecg(path)))[None]
    engine.class_embeddings()  # computed once per engine, not per ECG
    t_enc, _ = timed(lambda: engine.model.ecg_embedding(x), repeat)
    xb = x.repeat(16, 1, 1)
    t_batch, _ = timed(lambda: engine.model.ecg_embedding(xb), repeat)
    study = StudyInput("ecg", [path])
    t_run, _ = timed(lambda: engine.run(study), repeat)
    print(f"MERL reference ({engine.config['ecg_model']}, width "
          f"{engine.config['vit']['width']}, depth {engine.config['vit']['depth']}): ECG tower "
          f"{1 / t_enc:.0f} ECGs/s (batch 1), {16 / t_batch:.0f} ECGs/s (batch 16); whole engine "
          f"{1 / t_run:.1f} ECGs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}")
    rpeak_section(args.repeat)
    measure_section(args.repeat)
    merl_section(args.repeat)


if __name__ == "__main__":
    main()
