"""The one Celery app. Embedded default: kombu's filesystem transport under ``var/broker``;
``MEDGATE_BROKER_URL=redis://...`` gives the distributed set-up with the same tasks.

The database is the source of truth for jobs; the broker only carries wake-ups, which is why
late acknowledgement and prefetch 1 are safe and a lost message is re-sent by the sweeper.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue
from kombu import pools as kombu_pools

from app.config import Settings, get_settings
from app.pipeline.worker_beat import on_worker_ready

QUEUES = ("ingest", "cxr", "ct", "ecg", "pathology", "export")

celery_app = Celery("medgate", include=["app.pipeline.tasks"])
worker_ready.connect(on_worker_ready, weak=False)


def configure(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    conf: dict = {
        "broker_url": s.celery_broker_url,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "ingest",
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_reject_on_worker_lost": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_expires": 3600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if s.embedded_broker:
        s.ensure_dirs()
        folder = str(s.broker_dir / "in")
        conf["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(s.broker_dir / "processed"),
            "store_processed": False,
            # kombu's default control folder is ./control, relative to whatever the cwd is
            "control_folder": str(s.broker_dir / "control"),
            # kombu polls the folder once a second by default: up to a second of queue wait
            # before every job; a listing of a small folder ten times a second costs nothing
            "polling_interval": 0.1,
        }
        results = s.data_dir.resolve() / "results"
        results.mkdir(parents=True, exist_ok=True)
        conf["result_backend"] = f"file://{results}"
    else:
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
        conf["result_backend"] = s.broker_url
    celery_app.conf.update(conf)
    _forget_connections()
    return celery_app


def _forget_connections() -> None:
    # Settings may change in one process (tests, CLI); drop pools built for the old broker.
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    if "amqp" in celery_app.__dict__:
        celery_app.amqp._producer_pool = None
    kombu_pools.reset()  # kombu keeps process-wide producer pools keyed by broker URL
    if hasattr(celery_app._local, "backend"):
        del celery_app._local.backend


configure()
