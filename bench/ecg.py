"""ECG benchmarks: measurement-engine and MERL-reference throughput, and R-peak detection against
a peer run in the same process.

- R peaks: MIT-BIH record 100 (30 min, MLII + V5, resampled to 500 Hz), MedGate's detector
  against NeuroKit2's default detector (``ecg_clean`` + ``ecg_peaks``), or wfdb's XQRS when
  NeuroKit2 is not installed, on the same MLII samples. Prints sensitivity and positive
  predictivity (150 ms window, beat annotations only) and the MedGate/peer speed ratio.
- ecg-measure: the whole engine (read DICOM, measure, interpret) on pydicom's 10-s 12-lead ECG.
- ecg-measure against NeuroKit2: real 10-s 12-lead records (pydicom's DICOM ECG and the 10-s
  windows of PTB record s0010_re at its 12 standard leads, resampled to 500 Hz by our reader):
  ``measure.analyse`` + ``interpret.interpret`` per record (and read + analyse + interpret for
  the DICOM file) against NeuroKit2's ``ecg_process`` (clean, peaks, delineation, rate) on each
  of the 12 leads of the same records, in the same run; records/s for both and the ratio.
  ``--profile`` adds a cProfile of the engine on those records, by function.
- MERL reference: the ECG tower alone, and the whole engine (read, preprocess, score).

Run from the repository root:  .venv/bin/python bench/ecg.py [--repeat N] [--profile]
[--only SECTION]
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


ENGINE_VERSION = "1.1.0"


def measure_section(repeat: int) -> None:
    from pydicom.data import get_testdata_file

    from models.base import ModelSpec, StudyInput, build

    path = Path(get_testdata_file("waveform_ecg.dcm"))
    engine = build(ModelSpec("ecg-measure", ENGINE_VERSION))
    study = StudyInput("ecg", [path])
    t, res = timed(lambda: engine.run(study), repeat)
    print(f"ecg-measure engine, 10-s 12-lead DICOM (read + measure + interpret): {t * 1000:.0f} "
          f"ms per ECG = {1 / t:.1f} ECGs/s ({len(res.measurements)} measurements, "
          f"{len(res.findings)} findings)")
    # two worker processes, as a worker with concurrency 2 runs them on a two-core machine
    from concurrent.futures import ProcessPoolExecutor

    per_worker = 20
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_engine_runs, [str(path)] * 2, [2] * 2))  # warm-up: imports, caches
        start = time.perf_counter()
        list(pool.map(_engine_runs, [str(path)] * 2, [per_worker] * 2))
        wall = time.perf_counter() - start
    print(f"  two processes (worker concurrency 2): {2 * per_worker / wall:.1f} ECGs/s together")


def _engine_runs(path: str, n: int) -> int:
    from models.base import ModelSpec, StudyInput, build

    engine = build(ModelSpec("ecg-measure", ENGINE_VERSION))
    study = StudyInput("ecg", [Path(path)])
    for _ in range(n):
        engine.run(study)
    return n


def twelve_lead_records() -> list[Any]:
    """Real 10-s 12-lead records at 500 Hz: pydicom's DICOM ECG and PTB s0010_re windows."""
    from pydicom.data import get_testdata_file

    from models.ecg.leads import STANDARD_LEADS
    from models.ecg.signal import EcgRecord, read_ecg, select_leads

    records = [read_ecg(get_testdata_file("waveform_ecg.dcm"))]
    hea = DATA / "ecg" / "wfdb" / "s0010_re.hea"
    if hea.exists():
        ptb = select_leads(read_ecg(hea), list(STANDARD_LEADS))
        n = int(10 * ptb.fs)
        for k in range(ptb.n_samples // n):
            records.append(EcgRecord(signals_mv=ptb.signals_mv[:, k * n:(k + 1) * n].copy(),
                                     fs=ptb.fs, leads=list(ptb.leads),
                                     source=f"{ptb.source}[{10 * k}-{10 * (k + 1)} s]",
                                     original_fs=ptb.original_fs, patient=dict(ptb.patient)))
    else:
        print(f"  ({hea} not present: the DICOM record only)")
    return records


def _nk_process(records: list[Any]) -> Callable[[], None] | None:
    try:
        import neurokit2 as nk
    except ImportError:
        return None

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for rec in records:
                for lead in rec.signals_mv:
                    nk.ecg_process(lead, sampling_rate=int(rec.fs))

    return run


def engine_vs_neurokit_section(repeat: int, profile: bool) -> None:
    from pydicom.data import get_testdata_file

    from models.ecg.interpret import interpret
    from models.ecg.measure import analyse
    from models.ecg.signal import read_ecg

    records = twelve_lead_records()
    n = len(records)
    dcm = get_testdata_file("waveform_ecg.dcm")

    def medgate() -> None:
        for rec in records:
            interpret(analyse(rec))

    t_mg, _ = timed(medgate, repeat)
    t_read, _ = timed(lambda: interpret(analyse(read_ecg(dcm))), repeat)
    print(f"ecg-measure vs NeuroKit2, {n} real 10-s 12-lead records at {records[0].fs:g} Hz "
          f"({', '.join(Path(r.source).name for r in records)})")
    print(f"  MedGate analyse + interpret     : {t_mg / n * 1000:7.1f} ms per record = "
          f"{n / t_mg:6.2f} records/s")
    print(f"  MedGate read + analyse + interp.: {t_read * 1000:7.1f} ms (the DICOM file) = "
          f"{1 / t_read:6.2f} records/s")
    nk_run = _nk_process(records)
    if nk_run is None:
        print("  NeuroKit2 not installed (pip install -e '.[dev]'): no peer timing")
    else:
        import neurokit2 as nk

        t_nk, _ = timed(nk_run, repeat)
        print(f"  NeuroKit2 {nk.__version__} ecg_process x 12 leads: {t_nk / n * 1000:7.1f} ms per "
              f"record = {n / t_nk:6.2f} records/s")
        print(f"  speed ratio MedGate/NeuroKit2 (higher is faster): {t_nk / t_mg:.2f}")
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(max(repeat, 1)):
            medgate()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
        stats.print_stats(25)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats("models/ecg", 30)
        print(out.getvalue())


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
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the ecg-measure engine on the 12-lead records")
    parser.add_argument("--only", choices=["rpeaks", "measure", "neurokit", "merl"],
                        help="run one section")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}")
    sections = {"rpeaks": lambda: rpeak_section(args.repeat),
                "measure": lambda: measure_section(args.repeat),
                "neurokit": lambda: engine_vs_neurokit_section(args.repeat, args.profile),
                "merl": lambda: merl_section(args.repeat)}
    for name, run in sections.items():
        if args.only in (None, name):
            run()


if __name__ == "__main__":
    main()
