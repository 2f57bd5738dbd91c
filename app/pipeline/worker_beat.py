"""The embedded worker's heartbeat: once Celery says the worker is ready, a thread in the
worker's main process touches a file every second; the server's /readyz reads its age, so
"worker" readiness is a fact the worker keeps stating, not a guess from a process id."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ENV = "MEDGATE_WORKER_HEARTBEAT_FILE"
INTERVAL = 1.0
STALE_AFTER = 10.0  # seconds without a beat before the worker counts as down


def start_beating(path: Path, interval: float = INTERVAL) -> threading.Event:
    stop = threading.Event()
    path.parent.mkdir(parents=True, exist_ok=True)

    def beat() -> None:
        while True:
            path.write_text(f"{os.getpid()} {time.time():.3f}\n")
            if stop.wait(interval):
                return

    threading.Thread(target=beat, name="medgate-worker-heartbeat", daemon=True).start()
    return stop


def age(path: Path) -> float | None:
    """Seconds since the last beat, or None when the worker never beat."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def on_worker_ready(**_: object) -> None:
    """Celery's ``worker_ready`` signal: beat when the supervisor asked for it."""
    target = os.environ.get(ENV)
    if target:
        start_beating(Path(target))
