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
import time
from collections.abc import Callable
from pathlib import Path

from app import metrics
from app.config import Settings
from app.pipeline import worker_beat
from app.pipeline.celery_app import QUEUES

log = logging.getLogger("medgate.services")


def _loop(settings: Settings) -> Callable[[], None]:
    from app.pipeline.loop import start_loop

    return start_loop(settings)


def _scp(settings: Settings) -> Callable[[], None]:
    from app.dicom.scp import start_scp

    return start_scp(settings)


def _reconcile(settings: Settings) -> Callable[[], None]:
    """Store and database agree after a crash: one pass now, one when the grace period of
    files another process may still be committing has passed."""
    from app.db.session import session_factory
    from app.dicom.reconcile import reconcile

    min_age = settings.reconcile_min_age_seconds
    reconcile(session_factory(settings.db_url), min_age=min_age)
    timer = threading.Timer(min_age + 5.0,
                            lambda: reconcile(session_factory(settings.db_url), min_age=min_age))
    timer.daemon = True
    timer.start()
    return timer.cancel


def knowledge_warm_up(settings: Settings) -> Callable[[], None]:
    """Knowledge index and embedder loaded in the background, so /readyz answers at once and
    the first search does not pay for them (it waits for them if it comes first)."""
    from app.rag.search import warm_up

    def run() -> None:
        try:
            done = warm_up(settings.kb_dir)
            log.info("knowledge index and embedder ready in %.1f s", done["seconds"])
        except Exception:  # noqa: BLE001 - /readyz names the failure
            log.exception("knowledge index warm-up failed")

    threading.Thread(target=run, name="knowledge-warm-up", daemon=True).start()
    return lambda: None


# (name, start) pairs; start returns a stop callable.
EXTRA_SERVICES: list[tuple[str, Callable[[Settings], Callable[[], None]]]] = [
    ("store reconciliation", _reconcile),
    ("knowledge warm-up", knowledge_warm_up),
    ("DICOM SCP", _scp),
    ("grouping and sweeper loop", _loop),
]


def worker_command(queues: tuple[str, ...] = QUEUES, concurrency: int = 1) -> list[str]:
    return [sys.executable, "-m", "app.cli", "worker", "-Q", ",".join(queues),
            "--concurrency", str(concurrency)]


def _die_with_parent() -> None:
    """In the worker child, before exec: Linux sends it SIGTERM when the server that started
    it dies, even by SIGKILL, so a killed server leaves no worker behind (prctl(2))."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the server died before prctl took effect
            os._exit(1)
    except OSError:  # not Linux: the supervisor's stop() still ends the worker
        pass


class ChildSupervisor:
    """Starts a child process, restarts it with backoff when it dies, and ends it with the
    server. The supervising thread is also the thread that starts every child, because Linux
    ties the parent-death signal to the starting thread's life."""

    BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
    STABLE = 60.0  # seconds of life after which a child's next death starts the backoff anew

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name, self.command, self.pass_fds = name, command, pass_fds
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"medgate-{name}-supervisor",
                                        daemon=True)
        self._started = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(timeout=30)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True,
                                     pass_fds=self.pass_fds, preexec_fn=_die_with_parent)
        log.info("%s started (pid %s)", self.name, self.proc.pid)

    def _died(self) -> None:
        """Called when the child has exited, before the restart."""

    def _run(self) -> None:
        failures = 0
        self._spawn()
        self._started.set()
        born = time.monotonic()
        while not self._stop.wait(0.5):
            code = self.proc.poll() if self.proc else 0
            if code is None:
                continue
            self._died()
            lived = time.monotonic() - born
            failures = 0 if lived > self.STABLE else failures
            wait = self.BACKOFF[min(failures, len(self.BACKOFF) - 1)]
            failures += 1
            self.restarts += 1
            log.warning("%s (pid %s) exited with %s after %.0f s; restarting in %.0f s",
                        self.name, self.proc.pid, code, lived, wait)
            if self._stop.wait(wait):
                return
            self._spawn()
            born = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # Warm shutdown: a worker finishes its current task, an HTTP process its requests.
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.proc = None


def worker_heartbeat(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "run" / "worker.heartbeat"


class WorkerSupervisor(ChildSupervisor):
    """The embedded Celery worker, whose heartbeat file /readyz reads."""

    def __init__(self, settings: Settings) -> None:
        self.heartbeat = worker_heartbeat(settings)
        super().__init__("embedded worker", worker_command(),
                         {worker_beat.ENV: str(self.heartbeat)})

    def start(self) -> None:
        self.heartbeat.unlink(missing_ok=True)
        super().start()

    def _died(self) -> None:
        self.heartbeat.unlink(missing_ok=True)  # /readyz says "worker" from now on
        metrics.WORKER_RESTARTS.inc()


def http_processes(settings: Settings, fd: int) -> list[ChildSupervisor]:
    """The extra HTTP processes of `medgate serve` (MEDGATE_HTTP_WORKERS - 1), each serving the
    API on the server's listening socket ``fd``: the kernel hands each new connection to one of
    them. Python runs one request's CPU work at a time per process; on several cores, several
    processes take several requests (STOW-RS above all) at once."""
    command = [sys.executable, "-m", "app.cli", "serve-http", "--fd", str(fd)]
    return [ChildSupervisor(f"HTTP process {i + 2}", command, pass_fds=(fd,))
            for i in range(settings.http_workers - 1)]


# The supervisor of this process's embedded worker, for /readyz; None when there is none.
SUPERVISOR: WorkerSupervisor | None = None
# In an extra HTTP process of a server that supervises a worker: that worker's heartbeat, so
# that every process's /readyz gives the same answer.
SHARED_HEARTBEAT: Path | None = None


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: WorkerSupervisor | None = None
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        global SUPERVISOR
        if self.settings.embedded_worker and self.settings.embedded_broker:
            self.worker = SUPERVISOR = WorkerSupervisor(self.settings)
            self.worker.start()
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
            if self.worker is not None:
                self.worker.stop()
            global SUPERVISOR
            if SUPERVISOR is self.worker:
                SUPERVISOR = None
            self.worker = None
