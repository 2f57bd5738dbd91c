"""PromptMRG at the published size (random weights: the speed, not the text, is measured) on
this machine: diagnosis (ResNet-101 trunk, memory, 18 x 4 head) and report decoding, 150 new
tokens after the 19-token prefix.

MedGate's decoder keeps each layer's keys and values (and projects the image features for the
cross-attention once); the peer, run in the same process on the same weights, is the plain
decoder loop that recomputes the whole sequence at every step, as a model without a cache
would. Both decode greedily with end-of-sequence forbidden, so both make exactly 150 steps.

    .venv/bin/python bench/promptmrg.py [--tokens 150] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.cxr.promptmrg.generate import GenerationSettings, generate
from models.cxr.promptmrg.net import PromptMRG, init_reference_weights
from models.cxr.promptmrg.tree import CHECKPOINT_CONFIG

PREFIX = 19  # [DEC] and the 18 state tokens


def _best(fn, repeat: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs), runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = PromptMRG(CHECKPOINT_CONFIG).eval()
    init_reference_weights(model)
    dec = model.text_decoder
    vocab = CHECKPOINT_CONFIG["text"]["vocab_size"]
    eos = vocab - 1  # any token id: it is forbidden until the last step
    image = torch.randn(1, 3, 224, 224)
    memory = torch.randn(1, 21, 512)
    prefix = [int(t) for t in torch.randint(1000, 2000, (PREFIX,))]
    settings = GenerationSettings(num_beams=1, min_length=PREFIX + args.tokens,
                                  max_new_tokens=args.tokens)

    with torch.inference_mode():
        patches, _ = model.diagnose(image, memory)
        diagnose_s, _ = _best(lambda: model.diagnose(image, memory), args.repeat)

        def cached() -> None:
            out = generate(dec, prefix, patches, settings, eos)
            assert out.steps == args.tokens, out.steps

        def recomputed() -> None:  # the peer: no cache, the whole sequence every step
            cross = dec.cross_kv(patches)
            seqs = torch.tensor([prefix])
            for _ in range(args.tokens):
                logits, _ = dec.step(seqs, None, cross)
                logits[:, eos] = -float("inf")
                seqs = torch.cat([seqs, logits.argmax(-1, keepdim=True)], dim=1)

        cached_s, cached_runs = _best(cached, args.repeat)
        full_s, full_runs = _best(recomputed, args.repeat)
        beam_settings = GenerationSettings(num_beams=3, min_length=PREFIX + args.tokens,
                                           max_new_tokens=args.tokens)
        beam_s, _ = _best(lambda: generate(dec, prefix, patches, beam_settings, eos),
                          args.repeat)

    params = sum(p.numel() for p in model.parameters())
    print(f"PromptMRG, published size ({params:,} parameters), random weights, fp32, "
          f"{args.threads} threads, best of {args.repeat}")
    print(f"diagnosis (trunk, memory, head), one 224 x 224 image: {diagnose_s:.3f} s")
    print(f"{args.tokens} tokens greedy, MedGate (cached):        {cached_s:.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r in cached_runs)})")
    print(f"{args.tokens} tokens greedy, peer (recomputed):       {full_s:.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r in full_runs)})")
    print(f"{args.tokens} tokens, 3 beams, MedGate (cached):      {beam_s:.2f} s")
    print(f"ratio peer/MedGate time, greedy: {full_s / cached_s:.2f} "
          f"(median of runs {statistics.median(full_runs) / statistics.median(cached_runs):.2f})")


if __name__ == "__main__":
    main()
