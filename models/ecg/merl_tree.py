"""MERL's module tree for ``medgate models inspect``: ViT-tiny (default) or ResNet-18 ECG
encoder, at the published sizes (``checkpoint``) or the small reference sizes (``reference``).

Light to import (no torch) so that ``models.ecg`` can register it at import time; the network is
imported only when a tree is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.runtime.tree import TreeSpec

if TYPE_CHECKING:
    from torch import nn


def build_merl_tree(variant: str, config_name: str) -> nn.Module:
    from models.ecg.merl import CHECKPOINT_CONFIG, REFERENCE_CONFIG
    from models.ecg.merl_net import MerlModel

    base = CHECKPOINT_CONFIG if variant == "checkpoint" else REFERENCE_CONFIG
    return MerlModel({**base, "ecg_model": config_name})


MERL_TREE = TreeSpec(family="merl", build=build_merl_tree, configs=("vit_tiny", "resnet18"),
                     default_config="vit_tiny")
