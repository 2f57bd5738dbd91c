"""Background services that `medgate serve` runs beside the API: the embedded Celery worker
process (only with the embedded broker) and, from the gateway on, the DICOM SCP and the
study-grouping loop. One object so start and stop stay symmetrical."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from app.config import Settings
from app.pipeline.celery_app import QUEUES

log = logging.getLogger("medgate.services")

def _loop(settings: Settings) -> Callable[[], None]:
    from app.pipeline.loop import start_loop

    return start_loop(settings)


def _scp(settings: Settings) -> Callable[[], None]:
    from app.dicom.scp import start_scp

    return start_scp(settings)


# (name, start) pairs; start returns a stop callable.
EXTRA_SERVICES: list[tuple[str, Callable[[Settings], Callable[[], None]]]] = [
    ("DICOM SCP", _scp),
    ("grouping and sweeper loop", _loop),
]


def worker_command(queues: tuple[str, ...] = QUEUES, concurrency: int = 1) -> list[str]:
    return [sys.executable, "-m", "app.cli", "worker", "-Q", ",".join(queues),
            "--concurrency", str(concurrency)]


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: subprocess.Popen | None = None
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.settings.embedded_worker and self.settings.embedded_broker:
            self.worker = subprocess.Popen(worker_command(), env=dict(os.environ),
                                           start_new_session=True)
            log.info("embedded worker started (pid %s)", self.worker.pid)
        for name, start in EXTRA_SERVICES:
            self._stops.append((name, start(self.settings)))
            log.info("%s started", name)

    def stop(self) -> None:
        with self._lock:
            for name, stop in reversed(self._stops):
                try:
                    stop()
                except Exception:  # noqa: BLE001 - stop the rest regardless
                    log.exception("stopping %s failed", name)
            self._stops.clear()
            if self.worker is not None and self.worker.poll() is None:
                # Warm shutdown of the main process: it lets its pool finish the current task.
                os.kill(self.worker.pid, signal.SIGTERM)
                try:
                    self.worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.worker.pid, signal.SIGKILL)
                    self.worker.wait()
            self.worker = None
