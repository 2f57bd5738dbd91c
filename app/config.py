"""Settings: one object, read once from the environment (prefix ``MEDGATE_``).

With nothing set, everything lives under ``./var``: SQLite database, file store, kombu
filesystem broker. Setting ``DATABASE_URL`` and ``BROKER_URL`` gives the distributed set-up with
the same code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DOMAINS = ("cxr", "ct", "ecg", "pathology")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDGATE_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None
    storage_dir: Path | None = None
    model_dir: Path | None = None
    ae_title: str = "MEDGATE"
    dicom_port: int = 11112
    # Where the SCP listens; unset: the HTTP host (127.0.0.1), resolved after validation.
    dicom_host: str | None = None
    # Accept any calling AE title with store and query rights (demos only; logs a warning).
    # Otherwise only the known peers (`medgate peers`, /api/v1/admin/peers) may associate.
    dicom_accept_any_peer: bool = False
    # DICOM TLS (PS3.15 Annex B): a second listener, off unless a port is set (2762 is the
    # IANA dicom-tls port). With a CA, client certificates are required and verified.
    dicom_tls_port: int | None = None
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    stable_seconds: float = 10.0
    # Per-domain overrides, e.g. MEDGATE_STABLE_SECONDS_BY_DOMAIN='{"ct": 30}'
    stable_seconds_by_domain: dict[str, float] = Field(default_factory=dict)
    embedder: str | None = None
    max_upload_bytes: int = 2 * 1024**3
    # A Deflated Explicit VR Little Endian data set may inflate to at most this many bytes;
    # checked while inflating, before anything parses it (a deflate bomb is refused).
    max_inflated_bytes: int = 256 * 1024**2
    # At start-up, a stored file without a row younger than this is left for a second pass
    # once it is older: another process sharing the store may be between rename and commit.
    # 0 where this server is the store's only writer.
    reconcile_min_age_seconds: float = 30.0
    # Parts one STOW-RS request may carry; more is refused with 413 before they are spooled.
    max_parts_per_request: int = 5000
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # HTTP server processes of `medgate serve` on one listening socket; the first also runs
    # the DICOM SCP, the grouping loop and the embedded worker. More than one lets STOW-RS use
    # more than one core (docs/dicomweb.md).
    http_workers: int = Field(1, ge=1, le=64)
    # The URL clients reach MedGate by (behind a proxy, the proxy's); response URLs
    # (RetrieveURL, BulkDataURI) are built from it, never from a request's Host header.
    public_url: str | None = None
    # Proxies whose X-Forwarded-Proto/-Host headers are believed (IP addresses).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a browser session (the viewer's cookie, POST /api/v1/session) lasts.
    session_hours: float = Field(8.0, gt=0, le=24 * 30)
    # The unpacked @ohif/app package (`make viewer`); unset: viewer/ohif in the source tree.
    viewer_dir: Path | None = None
    # Start the DIMSE SCP and the embedded worker from `medgate serve`.
    embedded_worker: bool = True
    start_scp: bool = True
    sweep_interval_seconds: float = 2.0
    # A queued job not started after this long is sent again (its message may be lost).
    job_resend_seconds: float = 120.0
    # A started job whose worker has not beaten its heart for this long is taken back.
    job_lost_seconds: float = 60.0
    job_heartbeat_seconds: float = 5.0
    job_max_attempts: int = 5
    # One engine run longer than this is abandoned and counted as timed out (0: no limit);
    # the worker builds a fresh engine for the next job.
    engine_timeout_seconds: float = 1800.0
    # Where engines compute: "cpu", "cuda" or "cuda:N" (checked when the first engine loads).
    device: str = "cpu"
    # Per-family dtype preference on an accelerator ("bf16", "fp16", "fp32"); on the CPU every
    # family computes in fp32. E.g. MEDGATE_DTYPE_BY_FAMILY='{"merl": "fp32"}'
    dtype_by_family: dict[str, str] = Field(default_factory=dict)
    # Interactive questions (/api/v1/studies/{uid}/ask) are refused while the chosen family has
    # no trained, active version; true lets demos and integration tests get reference answers,
    # marked `trained: false` and "reference model: not for clinical use".
    allow_reference_answers: bool = False
    # Extra modules that register engine families (a site's own engines), imported by workers.
    engine_plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("engine_plugins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [a.strip() for a in v.split(",") if a.strip()]
        return v

    @model_validator(mode="after")
    def _dicom_host_defaults_to_http_host(self) -> Settings:
        if not self.dicom_host:
            self.dicom_host = self.http_host
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'medgate.db').resolve()}"

    @property
    def store_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "store").resolve()

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def asks_dir(self) -> Path:
        """Drawn masks sent with interactive questions, one folder per ask."""
        return (self.data_dir / "asks").resolve()

    @property
    def results_dir(self) -> Path:
        """Files engines write beside their results (mask images and volumes)."""
        return (self.data_dir / "results").resolve()

    @property
    def ohif_dir(self) -> Path:
        """The OHIF package folder (package.json, dist/) that `make viewer` unpacks."""
        return (self.viewer_dir or Path(__file__).resolve().parents[1] / "viewer" / "ohif"
                ).resolve()

    @property
    def kb_dir(self) -> Path:
        return (self.data_dir / "kb").resolve()

    @property
    def models_dir(self) -> Path:
        return (self.model_dir or self.data_dir / "models").resolve()

    def stable_seconds_for(self, domain: str | None) -> float:
        if domain and domain in self.stable_seconds_by_domain:
            return float(self.stable_seconds_by_domain[domain])
        return self.stable_seconds

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.store_dir, self.kb_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.embedded_broker:
            for sub in ("in", "processed"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
