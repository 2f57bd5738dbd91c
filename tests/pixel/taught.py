"""A reference-size MedPLIB taught to answer one question about one region with ``<SEG>``, saved
as a hub folder in the released checkpoint's layout (LLaVA ``config.json``: the Llama keys at the
top, ``mm_*``, ``moe``; plus ``vision_config`` and ``sam_config`` for the toy sizes), so the
checkpoint path, the ``<SEG>`` hidden state, SAM-Med2D and the mask file run on output that
means something to the test. It proves the plumbing, never anything clinical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.base import ModelSpec, build
from models.pixel import preprocess as pp
from models.vlm.hub import save_folder
from models.vlm.images import read_display_image
from models.vlm.splice import IMAGE_TOKEN_INDEX, expand_all
from tests.vlm.memorise import memorise

ANSWER = "It is the lesion. <SEG>"


def teach(image_path: Path, question: str, point: tuple[float, float], folder: Path) -> Path:
    engine = build(ModelSpec("medplib", "reference", "reference"))
    engine.load()
    model, tok, cfg = engine.model, engine.tokenizer, engine.model_config
    image = read_display_image(image_path)
    region = pp.point_mask(*point, (image.height, image.width))
    size, patch = int(cfg["vision"]["image_size"]), int(cfg["vision"]["patch_size"])
    points = pp.sample_region_points(region, 512, torch.Generator().manual_seed(0), size=size,
                                     patch=patch)
    ids = pp.tokenize_with_region(pp.build_prompt(question, region=True), tok)
    clip = pp.clip_branch(image.rgb, size=size)[None]

    def embeds() -> torch.Tensor:
        visual, raw = model.encode_images(clip)
        return expand_all(model.get_input_embeddings(), ids, {
            IMAGE_TOKEN_INDEX: [visual[0]],
            pp.REGION_TOKEN_INDEX: [model.region_feature(raw[0], points)[None]]})

    answer = tok(ANSWER, add_special_tokens=False).input_ids + engine.eos_ids
    torch.manual_seed(0)
    memorise(model, model, embeds, answer)
    llm = {k: v for k, v in cfg["llm"].items()}
    llm.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    config = {**llm, "architectures": ["MedPLIBForCausalLM"], "model_type": "llava",
              "mm_vision_select_layer": cfg["mm_vision_select_layer"],
              "mm_vision_select_feature": cfg["mm_vision_select_feature"],
              "mm_projector_type": cfg["mm_projector_type"], "moe": cfg["moe"],
              "out_dim": cfg["out_dim"], "vision_config": cfg["vision"],
              "sam_config": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in cfg["sam"].items()}}
    return save_folder(model, json.loads(json.dumps(config)), folder, tokenizer=tok)


def mask_of_png(path: Path) -> np.ndarray:
    from PIL import Image

    return (np.asarray(Image.open(path)) > 0).astype(np.uint8)
