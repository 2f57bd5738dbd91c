"""Writes ``promptmrg_checkpoint_keys.json``: the state-dict keys and shapes of the authors'
``BLIP_Decoder``, in ``state_dict()`` order, written out by hand from their code and not from
MedGate's (this script imports nothing of MedGate, nor torch):

- ``jhb86253817/PromptMRG`` ``models/blip.py``: ``BLIP_Decoder.__init__`` registers, in order,
  ``visual_encoder`` (``blip_resnet``), ``cls_head = Linear(2048 + 512, 18 * 4)``,
  ``vision_proj = Linear(2048, 512)``, ``text_decoder`` (``BertLMHeadModel`` from
  ``configs/bert_config.json`` with ``encoder_width = 2048``, resized to ``len(tokenizer)``)
  and ``memory = Transformer(d_model=512, num_encoder_layers=2, num_decoder_layers=2)``;
- ``models/resnet.py``: ``nn.Sequential(*list(resnet101().children())[:-2])`` as ``model``, so
  torchvision's conv1, bn1, relu, maxpool, layer1-4 are ``model.0`` ... ``model.7``; torchvision
  ResNet-101 has Bottleneck blocks [3, 4, 23, 3] (conv1, bn1, conv2, bn2, conv3, bn3,
  downsample.0 conv, downsample.1 bn on the first block of each layer);
- ``models/transformer.py`` (DETR): encoder layers (self_attn, linear1, linear2, norm1, norm2),
  no encoder norm (post-norm), decoder layers (self_attn, multihead_attn, linear1, linear2,
  norm1-3), decoder norm; dim_feedforward 2048, 8 heads;
- ``salesforce/BLIP`` ``models/med.py`` (PromptMRG's ``models/med.py`` is BLIP's):
  ``BertLMHeadModel`` = ``bert`` (``BertModel(add_pooling_layer=False)``: embeddings with a
  persistent ``position_ids`` buffer, word and position embeddings, LayerNorm, no token types;
  12 layers with attention, crossattention (key/value in-features ``encoder_width``),
  intermediate, output) and ``cls.predictions`` (own ``bias``, transform.dense,
  transform.LayerNorm, ``decoder`` whose weight is tied to the word embeddings and whose bias
  *is* ``predictions.bias``, so both names are keys);
- ``configs/bert_config.json`` (BLIP's bert-base config): hidden 768, 12 layers, 12 heads,
  intermediate 3072, 512 positions, vocabulary 30522;
- ``main_test.py``: ``add_special_tokens({'bos_token': '[DEC]'})`` and
  ``add_tokens(['[BLA]', '[POS]', '[NEG]', '[UNC]'])``: 30522 + 5 = 30527 rows.

Run: ``python tests/cxr/data/make_promptmrg_keys.py`` (rewrites the JSON beside it).
"""

import json
from pathlib import Path

VOCAB, HIDDEN, LAYERS, INNER, POSITIONS = 30522 + 5, 768, 12, 3072, 512
VISION, D, FFN = 2048, 512, 2048


def bn(prefix, c):
    return {f"{prefix}.weight": [c], f"{prefix}.bias": [c], f"{prefix}.running_mean": [c],
            f"{prefix}.running_var": [c], f"{prefix}.num_batches_tracked": []}


def linear(prefix, out, inp, bias=True):
    keys = {f"{prefix}.weight": [out, inp]}
    if bias:
        keys[f"{prefix}.bias"] = [out]
    return keys


def ln(prefix, c):
    return {f"{prefix}.weight": [c], f"{prefix}.bias": [c]}


def mha(prefix, d):
    return {f"{prefix}.in_proj_weight": [3 * d, d], f"{prefix}.in_proj_bias": [3 * d],
            **linear(f"{prefix}.out_proj", d, d)}


def resnet101(prefix):
    keys = {f"{prefix}.0.weight": [64, 3, 7, 7], **bn(f"{prefix}.1", 64)}
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip([3, 4, 23, 3], [64, 128, 256, 512], strict=True)):
        for b in range(blocks):
            p = f"{prefix}.{4 + stage}.{b}"
            keys[f"{p}.conv1.weight"] = [planes, inplanes, 1, 1]
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = [planes, planes, 3, 3]
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.conv3.weight"] = [planes * 4, planes, 1, 1]
            keys.update(bn(f"{p}.bn3", planes * 4))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = [planes * 4, inplanes, 1, 1]
                keys.update(bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    return keys


def bert_attention(prefix, kv_width):
    return {**linear(f"{prefix}.self.query", HIDDEN, HIDDEN),
            **linear(f"{prefix}.self.key", HIDDEN, kv_width),
            **linear(f"{prefix}.self.value", HIDDEN, kv_width),
            **linear(f"{prefix}.output.dense", HIDDEN, HIDDEN),
            **ln(f"{prefix}.output.LayerNorm", HIDDEN)}


def text_decoder(prefix):
    e = f"{prefix}.bert.embeddings"
    keys = {f"{e}.position_ids": [1, POSITIONS], f"{e}.word_embeddings.weight": [VOCAB, HIDDEN],
            f"{e}.position_embeddings.weight": [POSITIONS, HIDDEN], **ln(f"{e}.LayerNorm", HIDDEN)}
    for i in range(LAYERS):
        p = f"{prefix}.bert.encoder.layer.{i}"
        keys.update(bert_attention(f"{p}.attention", HIDDEN))
        keys.update(bert_attention(f"{p}.crossattention", VISION))
        keys.update(linear(f"{p}.intermediate.dense", INNER, HIDDEN))
        keys.update(linear(f"{p}.output.dense", HIDDEN, INNER))
        keys.update(ln(f"{p}.output.LayerNorm", HIDDEN))
    c = f"{prefix}.cls.predictions"
    keys[f"{c}.bias"] = [VOCAB]
    keys.update(linear(f"{c}.transform.dense", HIDDEN, HIDDEN))
    keys.update(ln(f"{c}.transform.LayerNorm", HIDDEN))
    keys.update(linear(f"{c}.decoder", VOCAB, HIDDEN))
    return keys


def memory(prefix):
    keys = {}
    for i in range(2):
        p = f"{prefix}.encoder.layers.{i}"
        keys.update({**mha(f"{p}.self_attn", D), **linear(f"{p}.linear1", FFN, D),
                     **linear(f"{p}.linear2", D, FFN), **ln(f"{p}.norm1", D),
                     **ln(f"{p}.norm2", D)})
    for i in range(2):
        p = f"{prefix}.decoder.layers.{i}"
        keys.update({**mha(f"{p}.self_attn", D), **mha(f"{p}.multihead_attn", D),
                     **linear(f"{p}.linear1", FFN, D), **linear(f"{p}.linear2", D, FFN),
                     **ln(f"{p}.norm1", D), **ln(f"{p}.norm2", D), **ln(f"{p}.norm3", D)})
    keys.update(ln(f"{prefix}.decoder.norm", D))
    return keys


def blip_decoder():
    return {**resnet101("visual_encoder.model"), **linear("cls_head", 18 * 4, VISION + D),
            **linear("vision_proj", D, VISION), **text_decoder("text_decoder"),
            **memory("memory")}


if __name__ == "__main__":
    keys = blip_decoder()
    out = Path(__file__).with_name("promptmrg_checkpoint_keys.json")
    out.write_text(json.dumps({"source": "jhb86253817/PromptMRG models/blip.py, models/resnet.py,"
                               " models/transformer.py, main_test.py; salesforce/BLIP "
                               "models/med.py, configs/bert_config.json; written out by "
                               "make_promptmrg_keys.py", "count": len(keys), "keys": keys},
                              indent=1) + "\n", encoding="utf-8")
    print(len(keys), "keys")
