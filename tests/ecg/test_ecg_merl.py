"""MERL: the module tree loads a full-size state dict strictly, the reference variant runs end to
end and is marked untrained, and a checksum mismatch is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from models.base import ContractError, ModelSpec, StudyInput, build, sha256_file
from models.ecg import merl_preprocess
from models.ecg.merl import (
    CHECKPOINT_CONFIG,
    REFERENCE_CONFIG,
    bundled_tokenizer_dir,
    load_state,
)
from models.ecg.merl_net import MerlModel
from models.ecg.signal import read_ecg

ECG = Path(get_testdata_file("waveform_ecg.dcm"))

# Parameter names and shapes of the authors' ECGCLIP (vit_tiny + MedCPT-Query-Encoder), written
# out from their utils/vit1d.py, utils/utils_builder.py and MedCPT's config.json.
RELEASED_SHAPES = {
    "ecg_encoder.to_patch_embedding.weight": (192, 12, 50),
    "ecg_encoder.pos_embedding": (1, 100, 192),
    "ecg_encoder.block0.attn.norm.weight": (192,),
    "ecg_encoder.block0.attn.fn.to_qkv.weight": (576, 192),
    "ecg_encoder.block0.attn.fn.to_qkv.bias": (576,),
    "ecg_encoder.block0.attn.fn.to_out.0.weight": (192, 192),
    "ecg_encoder.block11.ff.fn.net.0.weight": (768, 192),
    "ecg_encoder.block11.ff.fn.net.3.weight": (192, 768),
    "ecg_encoder.norm.bias": (192,),
    "proj_e.0.weight": (256, 192),
    "proj_e.1.running_var": (256,),
    "proj_e.3.weight": (256, 256),
    "proj_e.4.num_batches_tracked": (),
    "linear1.weight": (256, 192),
    "linear2.weight": (256, 192),
    "lm_model.embeddings.word_embeddings.weight": (30522, 768),
    "lm_model.encoder.layer.11.output.dense.weight": (768, 3072),
    "lm_model.pooler.dense.weight": (768, 768),
    "proj_t.0.weight": (256, 768),
    "proj_t.2.weight": (256, 256),
}
RELEASED_RESNET_SHAPES = {
    "ecg_encoder.conv1.weight": (64, 12, 7),
    "ecg_encoder.layer2.0.shortcut.0.weight": (128, 64, 1),
    "ecg_encoder.layer4.1.bn2.running_mean": (512,),
    "ecg_encoder.linear.weight": (10, 512),
    "downconv.weight": (256, 512, 1),
    "att_pool_head.positional_embedding": (1, 314, 256),
    "att_pool_head.cls_token": (1, 1, 256),
    "att_pool_head.mhsa.in_proj_weight": (768, 256),
    "att_pool_head.c_proj.weight": (256, 256),
    "linear1.weight": (256, 256),
}


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory) -> tuple[Path, str, torch.Tensor]:
    """A random state dict of the published configuration, saved as the release is (a bare
    state dict). Stored in float16 to halve the file: strictness concerns names and shapes."""
    # the module tree built from the config (on the meta device: names and shapes only) ...
    with torch.device("meta"):
        tree = MerlModel(CHECKPOINT_CONFIG).state_dict()
    for name, shape in RELEASED_SHAPES.items():
        assert tuple(tree[name].shape) == shape, name
    # ... filled with random values
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=gen, dtype=torch.float16)
                 if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype))
             for k, v in tree.items()}
    for k in state:
        if k.endswith("running_var"):  # a variance is positive
            state[k] = state[k].abs() + 0.5
    # an older transformers saved this constant buffer; the loader must accept it
    state["lm_model.embeddings.position_ids"] = torch.arange(512)[None]
    path = tmp_path_factory.mktemp("merl") / "merl_vit_tiny_ckpt.pth"
    torch.save(state, path)
    probe = state["ecg_encoder.block3.attn.fn.to_qkv.weight"].float()
    return path, sha256_file(path), probe


def test_checkpoint_loads_strict_and_is_trained(full_checkpoint):
    path, digest, probe = full_checkpoint
    spec = ModelSpec("merl", "icml2024-vit-tiny", variant="checkpoint", weights_path=str(path),
                     sha256=digest, config={"tokenizer_dir": str(bundled_tokenizer_dir()),
                                            "thresholds": {"AFIB": -1.0}})
    engine = build(spec)
    assert engine.trained is True and engine.weights_sha256 == digest
    assert any("position_ids" in n for n in engine.load_notes)
    assert torch.equal(engine.model.state_dict()["ecg_encoder.block3.attn.fn.to_qkv.weight"],
                       probe)
    # one ECG-tower forward at full size (the 110 M text tower is not run here)
    x = merl_preprocess.preprocess(read_ecg(ECG))
    emb = engine.model.ecg_embedding(torch.from_numpy(x)[None])
    assert emb.shape == (1, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(1))


def test_checkpoint_with_a_foreign_key_is_refused(tmp_path):
    small = {k: v for k, v in REFERENCE_CONFIG.items() if k not in ("seed", "thresholds")}
    state = MerlModel(small).state_dict()
    state["extra_head.weight"] = torch.zeros(2, 2)
    bad = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, bad)
    spec = ModelSpec("merl", "x", variant="checkpoint", weights_path=str(bad),
                     config={**small, "tokenizer_dir": str(bundled_tokenizer_dir())})
    with pytest.raises(ContractError, match="does not match"):
        build(spec)


def test_sha256_mismatch_is_refused(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    spec = ModelSpec("merl", "x", variant="checkpoint", weights_path=str(weights),
                     sha256="0" * 64, config={"tokenizer_dir": str(bundled_tokenizer_dir())})
    with pytest.raises(ContractError, match="sha256"):
        build(spec)


def test_checkpoint_needs_a_tokenizer(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(ContractError, match="tokenizer_dir"):
        build(ModelSpec("merl", "x", variant="checkpoint", weights_path=str(weights)))


def test_resnet_variant_matches_release_shapes():
    state = MerlModel({**CHECKPOINT_CONFIG, "ecg_model": "resnet18",
                       "text": {**CHECKPOINT_CONFIG["text"], "num_hidden_layers": 1}}).state_dict()
    for name, shape in RELEASED_RESNET_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert not any(k.startswith("proj_e") for k in state)


def test_reference_runs_end_to_end_and_is_untrained():
    engine = build(ModelSpec("merl", "reference-0", variant="reference",
                             config={"thresholds": {"NORM": -1.0}}))
    res = engine.run(StudyInput("ecg", [ECG]))
    assert res.trained is False  # random weights: the composer keeps this out of report text
    assert set(res.raw["scores"]) == set(engine.classes)
    assert all(-1.0 <= s <= 1.0 for s in res.raw["scores"].values())
    assert res.raw["preprocessing"] == list(merl_preprocess.STEPS)
    assert [f.code for f in res.findings] == ["merl:NORM"]
    assert res.findings[0].knowledge == ("ecg-normal-ecg",)
    assert any("random weights" in w for w in res.warnings)
    # same seed, same scores
    again = build(ModelSpec("merl", "reference-0", variant="reference")).run(StudyInput("ecg",
                                                                                          [ECG]))
    assert again.raw["scores"] == res.raw["scores"]


def test_preprocessing_steps():
    rec = read_ecg(ECG)
    x = merl_preprocess.preprocess(rec)
    assert x.shape == (12, 5000) and x.dtype == np.float32
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    raw = np.vstack([rec.lead(n) for n in ("aVL", "aVF")])
    scaled = (raw - rec.signals_mv.min()) / (np.ptp(rec.signals_mv) + 1e-8)
    assert np.allclose(x[5], scaled[0], atol=1e-5) and np.allclose(x[4], scaled[1], atol=1e-5)
    short = merl_preprocess.pad_or_truncate(np.ones((12, 2500)))
    assert short.shape == (12, 5000) and short[:, 2500:].sum() == 0


def test_load_state_refuses_non_state_dicts(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p)
    with pytest.raises(ContractError, match="state dict"):
        load_state(p)


def test_patch_embedding_equals_the_strided_convolution():
    from models.ecg.merl_net import ViT1d

    vit = ViT1d(width=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
    x = torch.rand(2, 12, 5000)
    with torch.no_grad():
        conv = vit.to_patch_embedding(x).transpose(1, 2)
        assert torch.allclose(vit.patches(x), conv, atol=1e-5)
