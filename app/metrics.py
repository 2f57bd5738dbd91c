"""Prometheus metrics. Workers and the API are separate processes, so prometheus_client runs in
multiprocess mode with its files under ``<data dir>/metrics``: /metrics on the API aggregates
every process on the host. A worker on another host serves its own with
``medgate worker --metrics-port``.

This module must be imported before anything else imports prometheus_client.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.config import get_settings

_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _dir:
    _dir = str((get_settings().data_dir / "metrics").resolve())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _dir
Path(_dir).mkdir(parents=True, exist_ok=True)

from prometheus_client import (  # noqa: E402 - the environment must be set first
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

QUEUE_WAIT = Histogram("medgate_job_queue_wait_seconds",
                       "Time from a job being queued to a worker starting it", ["domain"],
                       buckets=BUCKETS)
JOB_RUN = Histogram("medgate_job_run_seconds", "Time a worker spends on one job", ["domain"],
                    buckets=BUCKETS)
ENGINE_RUN = Histogram("medgate_engine_run_seconds", "Time one engine spends on one study",
                       ["domain", "engine"], buckets=BUCKETS)
ENGINE_LOAD = Histogram("medgate_engine_load_seconds",
                        "Time a worker spends building and loading one engine (once per "
                        "family, version and weights in the worker's lifetime)",
                        ["family", "version", "device"], buckets=BUCKETS)
ENGINE_SKIPPED = Counter("medgate_engine_skipped_total",
                         "Optional engines that failed or refused their input; the job went on",
                         ["domain", "engine"])
WORKER_RESTARTS = Counter("medgate_worker_restarts_total",
                          "Times `medgate serve` restarted its embedded worker after it died")
JOBS_FINISHED = Counter("medgate_jobs_total", "Jobs by how they ended: done, failed, retried",
                        ["domain", "outcome"])
STORE_QUARANTINED = Counter("medgate_store_quarantined_total",
                            "Files found in the store without a row that could not be indexed "
                            "and were moved to the quarantine folder")
DELIVERIES = Counter("medgate_deliveries_total",
                     "Report deliveries by destination and outcome: done, retried, failed",
                     ["destination", "outcome"])
MODEL_RUNS = Counter("medgate_model_runs_total",
                     "Engine runs per model version and role (active, shadow) by outcome: done, "
                     "failed, timed_out", ["family", "version", "role", "outcome"])
MODEL_RUN_SECONDS = Histogram("medgate_model_run_seconds",
                              "Time one model version spends on one study", ["family", "version",
                                                                             "role"],
                              buckets=BUCKETS)
MODEL_EDIT_RATE = Histogram("medgate_model_edit_rate",
                            "Share of a draft's text changed before signing (character-level "
                            "diff), per model version that took part in the draft",
                            ["family", "version"],
                            buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))
MODEL_FINDINGS = Counter("medgate_model_findings_total",
                         "Findings of a model version against the signed report, per finding "
                         "code: agree_present, agree_absent, false_positive, miss",
                         ["family", "version", "role", "outcome"])
MODELS_QUARANTINED = Counter("medgate_models_quarantined_total",
                             "Model versions taken out of service because their weights no "
                             "longer match their manifest", ["family", "version"])
INSTANCES_STORED = Counter("medgate_instances_stored_total", "Instances stored", ["source"])


def render() -> tuple[bytes, str]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_dir)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def clear_dead_process_files() -> None:
    """At `serve` start: files of processes that no longer exist would count forever."""
    for f in Path(_dir).glob("*.db"):
        f.unlink(missing_ok=True)
