"""The shared VLM runtime: templates, splicing, generation settings and runs, the reference
tokenizer. The expected prompt strings are written out from the authors' ``get_prompt``
(Libra ``libra/conversation.py`` 0d6c56a; InternVL ``src/internvl/conversation.py`` in MedRegA
dfdb0db)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.base import ContractError
from models.vlm.generation import GenerationSettings, cut_at_stop, decode, generate
from models.vlm.reference import init_reference_weights, reference_tokenizer
from models.vlm.splice import (
    IMAGE_TOKEN_INDEX,
    expand_all,
    expand_placeholders,
    fill_context,
    tokenize_with_placeholder,
)
from models.vlm.templates import HERMES_2, LIBRA_LLAMA_3, LIBRA_V1, template

CORPUS = ["The heart size is normal. The lungs are clear.", "心脏大小正常，双肺清晰。",
          "USER: ASSISTANT: Provide a detailed description of the findings."]


@pytest.fixture(scope="module")
def tok():
    return reference_tokenizer(CORPUS, ["<unk>", "<IMG_CONTEXT>", "<|im_end|>"], bos="<s>",
                               eos="</s>", pad="<pad>", vocab_size=300)


def test_templates_render_as_the_authors_get_prompt():
    msg = "<image>\nProvide a detailed description of the findings in the radiology image."
    assert LIBRA_V1.render(msg) == (
        "The assistant specialized in comparing Chest X-ray images, identifying differences, "
        "and noting temporal changes. USER: " + msg + " ASSISTANT:")
    assert LIBRA_LLAMA_3.render("hi") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LIBRA_LLAMA_3.system
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\n"
        "<|start_header_id|>ASSISTANT<|end_header_id|>")
    assert HERMES_2.render("<image>\nWhat?") == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat?"
        "<|im_end|><|im_start|>assistant\n")
    assert template("Hermes-2") is HERMES_2
    with pytest.raises(ContractError, match="known"):
        template("vicuna")


def test_expand_placeholders_puts_each_image_where_its_placeholder_was():
    embed = nn.Embedding(10, 4)
    image = torch.full((3, 4), 7.0)
    out = expand_placeholders(embed, [1, 2, IMAGE_TOKEN_INDEX, 5], [image])
    assert out.shape == (1, 6, 4)
    assert torch.equal(out[0, 2:5], image)
    assert torch.equal(out[0, :2], embed(torch.tensor([1, 2])))
    assert torch.equal(out[0, 5], embed(torch.tensor(5)))
    with pytest.raises(ContractError, match="1 placeholders -200 for 2 feature blocks"):
        expand_placeholders(embed, [1, IMAGE_TOKEN_INDEX], [image, image])
    with pytest.raises(ContractError, match="embedding width"):
        expand_placeholders(embed, [IMAGE_TOKEN_INDEX], [torch.zeros(2, 5)])


def test_expand_all_places_image_and_region_features_at_their_own_placeholders():
    embed = nn.Embedding(10, 4)
    image, region = torch.full((3, 4), 7.0), torch.full((1, 4), -1.0)
    out = expand_all(embed, [1, IMAGE_TOKEN_INDEX, 4, -300, 5],
                     {IMAGE_TOKEN_INDEX: [image], -300: [region]})
    assert out.shape == (1, 7, 4)
    assert torch.equal(out[0, 1:4], image) and torch.equal(out[0, 5], region[0])
    assert torch.equal(out[0, 4], embed(torch.tensor(4)))
    with pytest.raises(ContractError, match="0 placeholders -300 for 1"):
        expand_all(embed, [1, IMAGE_TOKEN_INDEX], {IMAGE_TOKEN_INDEX: [image], -300: [region]})


def test_fill_context_overwrites_the_context_tokens_in_order():
    embed = nn.Embedding(10, 3)
    feats = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    out = fill_context(embed, [1, 9, 9, 2], feats, context_id=9)
    assert torch.equal(out[0, 1:3], feats)
    assert torch.equal(out[0, 3], embed(torch.tensor(2)))
    with pytest.raises(ContractError, match="3 image-context tokens for 2"):
        fill_context(embed, [9, 9, 9], feats, context_id=9)


def test_tokenize_with_placeholder_keeps_one_bos_and_encodes_chunks_alone(tok):
    prompt = LIBRA_V1.render("<image>\nThe lungs are clear.")
    ids = tokenize_with_placeholder(prompt, tok)
    before, after = prompt.split("<image>")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(tok.bos_token_id) == 1
    i = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[:i] == tok(before).input_ids
    assert ids[i + 1:] == tok(after).input_ids[1:]


def test_reference_tokenizer_round_trips_any_text_and_keeps_special_tokens_whole(tok):
    for text in ("心脏大小正常，双肺清晰。", "Zebra 42 ünïcode", "<ref>heart</ref>"):
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    ids = tok("a<IMG_CONTEXT><IMG_CONTEXT>b", add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 2
    assert tok("x").input_ids[0] == tok.bos_token_id


def test_generation_settings_are_checked_and_mapped_to_generate():
    with pytest.raises(ContractError, match="unknown setting"):
        GenerationSettings.from_config({"strategy": "greedy", "beams": 3})
    for bad, match in (({"strategy": "nucleus"}, "strategy"), ({"max_new_tokens": 0}, "max_new"),
                       ({"strategy": "beam"}, "num_beams > 1"), ({"top_p": 1.5}, "top_p"),
                       ({"temperature": 0}, "temperature"), ({"timeout_s": 0}, "timeout")):
        with pytest.raises(ContractError, match=match):
            GenerationSettings.from_config(bad)
    beam = GenerationSettings.from_config({"strategy": "beam", "num_beams": 5,
                                           "length_penalty": 2.0, "no_repeat_ngram_size": 3})
    kw = beam.hf_kwargs()
    assert kw["num_beams"] == 5 and kw["length_penalty"] == 2.0 and not kw["do_sample"]
    assert kw["no_repeat_ngram_size"] == 3 and "temperature" not in kw
    sample = GenerationSettings(strategy="sample", temperature=0.2).hf_kwargs()
    assert sample["do_sample"] and sample["temperature"] == 0.2 and sample["num_beams"] == 1
    assert cut_at_stop("findings</s> junk", ("</s>",)) == ("findings", True)


@pytest.fixture(scope="module")
def tiny_lm(tok):
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm = LlamaForCausalLM(cfg)
    init_reference_weights(lm, seed=3)
    return lm.eval()


def _embeds(lm, tok):
    ids = tok("The lungs").input_ids
    return lm.model.embed_tokens(torch.tensor(ids))[None].detach()


def test_generate_says_why_it_stopped(tiny_lm, tok):
    embeds = _embeds(tiny_lm, tok)
    greedy = GenerationSettings(max_new_tokens=6)
    out = generate(tiny_lm, embeds, greedy, tok, [tok.eos_token_id])
    assert out.stopped == "max_new_tokens" and len(out.ids) == 6
    assert generate(tiny_lm, embeds, greedy, tok, [tok.eos_token_id]).ids == out.ids
    # the first greedy token made an end token: generation ends on it, and it is not text
    ended = generate(tiny_lm, embeds, greedy, tok, [out.ids[0]])
    assert ended.stopped == "eos" and ended.ids == [out.ids[0]] and ended.text == ""
    late = generate(tiny_lm, embeds, GenerationSettings(max_new_tokens=200, timeout_s=1e-9),
                    tok, [tok.eos_token_id])
    assert late.stopped == "timeout" and len(late.ids) < 200


def test_sampling_is_reproducible_from_its_seed_and_leaves_the_global_generator(tiny_lm, tok):
    embeds = _embeds(tiny_lm, tok)
    settings = GenerationSettings(strategy="sample", temperature=1.5, max_new_tokens=8, seed=5)
    torch.manual_seed(123)
    first = generate(tiny_lm, embeds, settings, tok, [tok.eos_token_id]).ids
    after = torch.rand(1)
    torch.manual_seed(123)
    assert generate(tiny_lm, embeds, settings, tok, [tok.eos_token_id]).ids == first
    assert torch.equal(torch.rand(1), after)


def test_decode_keeps_only_the_special_tokens_that_are_the_answer(tok):
    ids = tok("<IMG_CONTEXT>left lung<|im_end|></s>", add_special_tokens=False).input_ids
    assert decode(tok, ids) == "left lung"
    kept = decode(tok, ids, keep=("<IMG_CONTEXT>",))
    assert kept == "<IMG_CONTEXT>left lung"
