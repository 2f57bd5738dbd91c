"""Engine runtime benchmarks, each against a peer run in the same process.

- Per study: the engine kept by the worker's cache (``models.runtime.cache``), against building
  and loading it for every study as MedGate did before; MERL reference and ecg-measure on
  pydicom's 10-s 12-lead ECG.
- Loading the published-size MERL tree (ViT-tiny, 115 M parameters, random weights): a sharded
  safetensors folder read memory-mapped through ``models.runtime.checkpoint`` into a tree built
  on the meta device, against ``torch.load`` of the same tensors from one ``.pth`` file into a
  tree built and initialised in memory (the usual way, and MedGate's first).

Run from the repository root:  .venv/bin/python bench/engines.py [--repeat N]
Torch uses two threads, the size of the reference machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_study(family: str, variant: str, repeat: int) -> tuple[float, float]:
    from pydicom.data import get_testdata_file

    from models.base import ModelSpec, StudyInput, build, load_engine
    from models.runtime.cache import EngineCache

    spec = ModelSpec(family, "reference" if variant == "reference" else "1.0.0", variant)
    study = StudyInput("ecg", [Path(get_testdata_file("waveform_ecg.dcm"))])
    cache = EngineCache()
    cache.get(spec).run(study)  # warm-up: imports, first load
    kept, rebuilt = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        cache.get(spec).run(study)
        kept.append(time.perf_counter() - t)
        t = time.perf_counter()
        load_engine(build(spec)).run(study)
        rebuilt.append(time.perf_counter() - t)
    return statistics.median(kept), statistics.median(rebuilt)


def checkpoint_load(repeat: int) -> tuple[float, float, int]:
    import torch

    from models.ecg.merl import CHECKPOINT_CONFIG
    from models.ecg.merl_net import MerlModel
    from models.runtime.checkpoint import load_state_dict, save_sharded
    from models.runtime.strict import strict_load

    config = {**CHECKPOINT_CONFIG, "ecg_model": "vit_tiny"}
    state = MerlModel(config).state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "merl"
        save_sharded(state, folder, max_shard_bytes=200 << 20)
        pth = Path(tmp) / "merl.pth"
        torch.save(state, pth)
        shards = len(list(folder.glob("*.safetensors")))
        del state

        def runtime() -> None:
            with torch.device("meta"):
                model = MerlModel(config)
            strict_load(model, load_state_dict(folder), what="merl")

        def plain() -> None:
            model = MerlModel(config)
            model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True),
                                  strict=True)

        times: dict[str, list[float]] = {"runtime": [], "plain": []}
        for fn in (runtime, plain):
            fn()  # warm the page cache for both
        for _ in range(repeat):
            for fn, name in ((runtime, "runtime"), (plain, "plain")):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        return statistics.median(times["runtime"]), statistics.median(times["plain"]), shards


def main() -> None:
    import torch

    torch.set_num_threads(2)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("| what | MedGate | peer | ratio peer/MedGate |")
    print("|---|---|---|---|")
    for family, variant in (("merl", "reference"), ("ecg-measure", "builtin")):
        kept, rebuilt = per_study(family, variant, args.repeat)
        print(f"| {family} per study: kept engine vs built every study | {kept * 1000:.1f} ms"
              f" | {rebuilt * 1000:.1f} ms | **{rebuilt / kept:.2f}** |")
    fast, slow, shards = checkpoint_load(args.repeat)
    print(f"| MERL ViT-tiny load: {shards} safetensors shards on meta vs .pth into an "
          f"initialised tree | {fast:.2f} s | {slow:.2f} s | **{slow / fast:.2f}** |")


if __name__ == "__main__":
    main()
