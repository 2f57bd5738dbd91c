"""The background loop beside the API: completes idle studies and sweeps lost jobs.

Several API processes may run it at once; completion and job recovery are conditional
UPDATEs, so each study completes once and each job is taken back once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.config import Settings
from app.db.session import session_factory
from app.pipeline import grouping, jobs

log = logging.getLogger("medgate.loop")


def tick() -> dict[str, list]:
    factory = session_factory()
    completed = grouping.complete_idle(factory)
    swept = jobs.sweep(factory)
    return {"completed": completed, **swept}


def start_loop(settings: Settings) -> Callable[[], None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(settings.sweep_interval_seconds):
            try:
                tick()
            except Exception:  # noqa: BLE001 - keep looping; the next tick retries
                log.exception("grouping/sweep tick failed")

    thread = threading.Thread(target=run, name="medgate-loop", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)

    return halt
