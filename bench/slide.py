"""Whole-slide pipeline on CMU-1-Small-Region.svs (Aperio H&E, 2220x2967, one level of 240-px
JPEG tiles): open, tissue detection (thumbnail at 8 µm/px + Otsu on saturation), Macenko stain
vectors, tile quality over every tissue tile (224 px at 0.5 µm/px; the flags of the whole grid,
glass included, are counted too), nuclei on N of them; seconds
per stage and peak memory per stage (``tracemalloc`` peak, which sees numpy and decoder buffers
but not Pillow's, and the process's peak-RSS rise, reset before each stage through
/proc/self/clear_refs where the kernel allows it), each from one traced run; seconds from
separate untraced runs (best of ``--repeat`` for open, tissue and the peer).

The peer, in the same process on the same file, is the naive thumbnail: read the whole base
level into one array (``slide.read_region(0, 0, 0, W, H)``), resize it, and run the same tissue
detection on the result; the ratios say what reading one tile row at a time buys. The slide is
small (20 MB of RGB at base), so the absolute numbers are small too; the ratio is what grows
with the slide (ours stays at the thumbnail plus two tile rows; the naive path is W x H x 3).

    .venv/bin/python bench/slide.py [--slide PATH] [--nuclei-tiles 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from models.pathology.nuclei import count_nuclei
from models.pathology.slide import Slide, open_slide
from models.pathology.stain import (
    assess_tiles,
    read_tile,
    slide_stain_vectors,
    tile_grid,
    tile_quality,
)
from models.pathology.tissue import detect_tissue

ROOT = Path(__file__).resolve().parents[1]
SVS = ROOT.parent / "shared" / "data" / "pathology" / "CMU-1-Small-Region.svs"


class NaiveSlide(Slide):
    """The same slide with the thumbnail made from the whole base level in memory."""

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        w, h = self.dimensions
        whole = self.read_region(0, 0, 0, w, h)
        scale = min(1.0, max_side / max(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(whole).resize(size, Image.Resampling.BOX)), scale


def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(fn):
    """(result, seconds, tracemalloc peak MiB, peak RSS rise MiB) of one call."""
    reset = _rss_reset()
    rss0, hwm0 = _rss_kib(), _hwm_kib()
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rise = _hwm_kib() - (rss0 if reset else hwm0)
    return out, dt, round(peak / 2**20, 2), round(max(rise, 0) / 1024, 1)


def best_seconds(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return round(min(runs), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=SVS)
    ap.add_argument("--nuclei-tiles", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of the fast stages")
    args = ap.parse_args()

    stages: dict[str, dict] = {}

    def stage(name, fn, repeat: int = 1, timed=None):
        out, _, tm, rss = measure(fn)  # memory from a traced run (tracemalloc slows it)
        secs = best_seconds(timed or fn, repeat)  # seconds from untraced runs
        stages[name] = {"s": secs, "tracemalloc_peak_mib": tm, "rss_peak_rise_mib": rss}
        return out

    open_slide(args.slide).close()  # warm-up: imports tiffslide / zarr, fills the page cache
    slide = stage("open", lambda: open_slide(args.slide), args.repeat,
                  timed=lambda: open_slide(args.slide).close())
    w, h = slide.dimensions
    tissue = stage("tissue", lambda: detect_tissue(slide), args.repeat)
    vectors = stage("stain_vectors", lambda: slide_stain_vectors(slide, tissue))
    refs = tile_grid(slide, tissue, max_tiles=None)

    def quality():
        return assess_tiles([read_tile(slide, r) for r in refs], vectors)

    quals, ref = stage("tile_quality", quality)
    # every whole 224-px tile of the grid, glass included, against the same slide reference
    grid = tile_grid(slide, tissue, min_tissue=0.0, max_tiles=None)
    grid_flags = Counter(f for r in grid
                         for f in tile_quality(read_tile(slide, r), vectors, ref)["flags"])
    sample = tile_grid(slide, tissue, max_tiles=args.nuclei_tiles)
    nuclei = stage("nuclei", lambda: count_nuclei(slide, tissue, vectors, sample))

    naive = NaiveSlide(**{f.name: getattr(slide, f.name) for f in dataclasses.fields(slide)})
    naive_tissue = stage("naive_tissue", lambda: detect_tissue(naive), args.repeat)
    ours, peer = stages["tissue"], stages["naive_tissue"]

    flags = Counter(f for q in quals for f in q["flags"])
    figures = {
        "slide": args.slide.name, "source": slide.source, "size": [w, h],
        "levels": len(slide.levels), "mpp": slide.mpp,
        "base_level_rgb_mib": round(w * h * 3 / 2**20, 2),
        "tissue": {"area_mm2": round(tissue.area_mm2, 4) if tissue.area_mm2 else None,
                   "fraction": round(tissue.fraction, 4), "mask": list(tissue.mask.shape),
                   "threshold": round(tissue.threshold, 4),
                   "same_mask_as_naive": bool(np.array_equal(tissue.mask, naive_tissue.mask))},
        "stain_vectors": vectors.as_dict(),
        "tiles": {"tissue_tiles": len(refs), "flags": dict(flags),
                  "grid_tiles": len(grid), "grid_flags": dict(grid_flags),
                  "reference": dataclasses.asdict(ref) if ref else None},
        "nuclei": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in nuclei.items()
                   if k not in ("per_tile", "points", "areas_um2")},
        "stages": stages,
        "peer_naive_over_ours": {
            "seconds": round(peer["s"] / ours["s"], 2),
            "tracemalloc_peak": round(peer["tracemalloc_peak_mib"]
                                      / max(ours["tracemalloc_peak_mib"], 1e-3), 2),
            "rss_peak_rise": (round(peer["rss_peak_rise_mib"] / ours["rss_peak_rise_mib"], 2)
                              if ours["rss_peak_rise_mib"] > 0 else None),
        },
        "rss_peak_resettable": _rss_reset(),
    }
    slide.close()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
