"""Which engine families this process knows: the built-in ones and the site's own, registered by
the modules named in MEDGATE_ENGINE_PLUGINS. Workers need them to run a pipeline, the API to
refuse a routing rule that names a family nobody can run."""

from __future__ import annotations

import importlib

from app.config import get_settings
from models.base import families


def load_plugins() -> None:
    for module in get_settings().engine_plugins:
        importlib.import_module(module)


def known_families() -> list[str]:
    load_plugins()
    return families()
