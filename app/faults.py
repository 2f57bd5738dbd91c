"""Crash points: where the crash-consistency tests cut the power.

``MEDGATE_CRASH_AT=<point>:<n>`` makes the process group die by SIGKILL the moment execution
reaches ``point`` for the n-th time within one operation (the n-th part spooled, the n-th file
renamed, a commit of at least n instances): no ``finally`` runs, no buffer is flushed, exactly
as if the machine had stopped there. Unset, as it always is in production, a crash point is one
dictionary lookup. The points are named where they are placed (``stow.spooled``,
``store.renamed``, ``store.before_commit``).
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("MEDGATE_CRASH_AT", "")
_POINT, _, _N = _AT.partition(":")


def crash_point(point: str, n: int) -> None:
    if _POINT == point and _N.isdigit() and n >= int(_N):
        os.killpg(os.getpgrp(), signal.SIGKILL)


__all__ = ["crash_point"]
