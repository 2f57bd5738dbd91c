"""Libra at a published size (random weights: speed and memory, not text, are measured): load
time, one current-plus-prior generation of 128 new tokens, tokens per second and peak memory.

The weights are written once as a hub folder of safetensors shards (``--folder``, kept for the
next run), then loaded the way a worker does (``models.vlm.hub``: read, strict load onto the
meta-built tree, move to the device). The pair is the two NIH radiographs of ``shared/data``
(current and prior), preprocessed at 518 px. Generation is greedy with the end token forbidden
until 128 tokens, so every run makes exactly 128 steps. The peer, in the same process on the
same weights, is the same generation without the key-value cache (each step recomputes the
whole sequence), so the ratio says what the cache buys at this prompt length.

    # on a GPU worker (bf16), about 14 GB of disk for the 7b shards:
    .venv/bin/python bench/libra.py --config 7b --device cuda --dtype bf16 --folder /tmp/libra7b
    # the same path at the reference size on a laptop:
    .venv/bin/python bench/libra.py --config reference --device cpu --dtype fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from models.runtime.checkpoint import load_state_dict
from models.runtime.device import resolve_dtype
from models.vlm.generation import GenerationSettings, generate
from models.vlm.hub import load_into, save_folder, tie_lm_head
from models.vlm.libra.net import build_libra
from models.vlm.libra.preprocess import preprocess_pair
from models.vlm.libra.tree import CHECKPOINT_CONFIGS, REFERENCE_CONFIG
from models.vlm.reference import init_reference_weights
from models.vlm.splice import IMAGE_TOKEN_INDEX, expand_placeholders

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cxr"
PROMPT_TOKENS = 48  # the libra_v1 prompt with the README query is about this long


def config_for(name: str) -> tuple[dict, int]:
    if name == "reference":
        cfg = copy.deepcopy({"llm": REFERENCE_CONFIG["llm"], "vision": REFERENCE_CONFIG["vision"]})
        cfg["llm"]["vocab_size"] = 400
        return cfg, int(REFERENCE_CONFIG["image_size"])
    return copy.deepcopy(CHECKPOINT_CONFIGS[name]), 518


def write_folder(cfg: dict, folder: Path, seed: int) -> float:
    """Random weights as a hub folder; seconds taken (not part of the load)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = build_libra(cfg).to(torch.bfloat16)
    init_reference_weights(model, seed)
    tied = ("lm_head.weight",) if cfg["llm"].get("tie_word_embeddings") else ()
    save_folder(model, {**cfg["llm"], "mm_projector_type": "TAC"}, folder,
                max_shard_bytes=5 << 30, leave_out=tied)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="7b", choices=["7b", "3b", "reference"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, size = config_for(args.config)
    dtype = resolve_dtype(args.device, args.dtype)
    folder = args.folder or Path(f"/tmp/medgate-libra-{args.config}")
    written = None
    if not (folder / "config.json").is_file():
        written = write_folder(cfg, folder, seed=0)

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    notes: list[str] = []
    state = load_state_dict(folder)
    tie_lm_head(state, "", bool(cfg["llm"].get("tie_word_embeddings")), notes)
    model = load_into(lambda: build_libra(cfg), state, "Libra").to(args.device, dtype).eval()
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0

    current, prior = SHARED / "00000001_000.png", SHARED / "00027426_000.png"
    pair, _ = preprocess_pair(current, prior, size=size)
    vocab = int(cfg["llm"]["vocab_size"])
    ids = [1] + list(range(100, 100 + PROMPT_TOKENS // 2)) + [IMAGE_TOKEN_INDEX] + list(
        range(200, 200 + PROMPT_TOKENS // 2))
    eos = vocab - 1

    class Tok:  # what generate() needs of a tokenizer: ids in, text out (not measured)
        pad_token_id = 0

        @staticmethod
        def decode(ids, skip_special_tokens=True):  # noqa: ARG004
            return " ".join(map(str, ids))

    settings = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    with torch.inference_mode():
        def encode():
            feats = model.encode_images(pair.to(args.device, dtype))
            if cuda:
                torch.cuda.synchronize()
            return feats

        encode()  # warm-up (kernels, allocator)
        t1 = time.perf_counter()
        feats = encode()
        encode_s = time.perf_counter() - t1
        embeds = expand_placeholders(model.model.embed_tokens, ids, [feats])
        generate(model, embeds, GenerationSettings(max_new_tokens=4, min_new_tokens=4), Tok,
                 [eos])  # warm-up
        out = generate(model, embeds, settings, Tok, [eos])
        peer_t = time.perf_counter()
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.tokens,
                       min_new_tokens=args.tokens, do_sample=False, use_cache=False,
                       eos_token_id=eos, pad_token_id=0)
        if cuda:
            torch.cuda.synchronize()
        peer_s = time.perf_counter() - peer_t
    figures = {
        "config": args.config, "device": torch.cuda.get_device_name() if cuda else args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_written_s": round(written, 1) if written is not None else "reused",
        "load_s": round(load_s, 2), "encode_pair_s": round(encode_s, 3),
        "visual_tokens": int(feats.shape[0]), "prompt_tokens": int(embeds.shape[1]),
        "new_tokens": len(out.ids), "generate_s": round(out.seconds, 3),
        "tokens_per_s": round(len(out.ids) / out.seconds, 2),
        "peer_no_cache_s": round(peer_s, 3),
        "ratio_peer_over_cached": round(peer_s / out.seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
