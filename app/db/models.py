"""SQLAlchemy 2.0 typed models: the database is the source of truth for studies, jobs and reports.

Schema changes go through Alembic migrations in ``migrations/``; this module and the newest
migration must describe the same schema (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


# The largest value of an Integer column on PostgreSQL (int4); ids, numbers, offsets and limits
# beyond it are refused where they enter, not left to overflow in the driver.
MAX_INT = 2**31 - 1


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset and returns naive
    values; comparing them with aware ones would fail)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_id_issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"),
                                            index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    # receiving until idle for stable_seconds (or /complete), then complete
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    domain: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # routed, or unrouted when no rule matched at completion (kept and listed, never dropped)
    route_status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                       index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study",
                                                cascade="all, delete-orphan")
    events: Mapped[list[StudyEvent]] = relationship(cascade="all, delete-orphan",
                                                    order_by="StudyEvent.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    # MedGate's own results stored in the study (DICOM SEG of a mask): not analysis input,
    # and storing them does not reopen the study.
    derived: Mapped[bool] = mapped_column(Boolean, default=False)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series",
                                                     cascade="all, delete-orphan")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"),
                                           index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class StudyEvent(Base):
    """The study timeline: received, complete, reopened, queued, started, finished, drafted,
    signed... Each event is one row, written in the transaction that caused it."""

    __tablename__ = "study_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(Base):
    __tablename__ = "job"

    id: Mapped[int] = mapped_column(primary_key=True)
    # None for a job of no study (a model version's validation)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"),
                                                 index=True, nullable=True)
    # study, pipeline and the set of instances: a redelivered completion makes no second job
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    # "analysis" (a study's draft), "ask" (one interactive question, its Ask row), "export"
    # (a delivery) or "validate" (a model version on its family's validation study)
    kind: Mapped[str] = mapped_column(String(16), default="analysis")
    domain: Mapped[str] = mapped_column(String(16))
    pipeline: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(64), default="")
    engines: Mapped[list[Any]] = mapped_column(JSON, default=list)
    instance_uids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # queued -> started -> done | failed; the claim token makes a re-delivered message harmless
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # messages re-sent by the sweeper since the job was last queued (the wait doubles each time)
    resends: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Ask(Base):
    """One interactive question about an instance of a study, answered by one family on the
    job machinery (``job_fk``); ``answer`` is written with the job's finish."""

    __tablename__ = "ask"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"),
                                               nullable=True, index=True, unique=True)
    family: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    trained: Mapped[bool] = mapped_column(Boolean)
    instance_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # models.base.Prompt.to_dict(), the drawn mask as a file under <data>/asks/<id>/
    prompt: Mapped[dict[str, Any]] = mapped_column(JSON)
    asked_by: Mapped[str] = mapped_column(String(128))
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Destination(Base):
    """Where report versions go: a DICOM AE (C-STORE) or a STOW-RS URL, for some domains and
    states (an empty list means all)."""

    __tablename__ = "destination"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # dimse | stow-rs
    ae_title: Mapped[str] = mapped_column(String(16), default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    url: Mapped[str] = mapped_column(String(1024), default="")
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    domains: Mapped[list[Any]] = mapped_column(JSON, default=list)
    states: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Delivery(Base):
    """One report version sent to one destination, carried by a Job of kind ``export``."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"),
                                               nullable=True, index=True, unique=True)
    report_fk: Mapped[int] = mapped_column(ForeignKey("report.id", ondelete="CASCADE"),
                                           index=True)
    version: Mapped[int] = mapped_column(Integer)
    destination_fk: Mapped[int | None] = mapped_column(
        ForeignKey("destination.id", ondelete="SET NULL"), nullable=True)
    destination_name: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Report(Base):
    __tablename__ = "report"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(16), index=True)
    state: Mapped[str] = mapped_column(String(24), default="pending", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # A draft written after the study's report was signed is an addendum to that report.
    addendum_of: Mapped[int | None] = mapped_column(ForeignKey("report.id", ondelete="SET NULL"),
                                                    nullable=True)
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    # A newer AI draft made after a clinician's edit: kept as this version number, offered,
    # never made current by itself ("new images since your edit").
    proposed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    versions: Mapped[list[ReportVersion]] = relationship(
        back_populates="report", cascade="all, delete-orphan", order_by="ReportVersion.number")


class ReportVersion(Base):
    __tablename__ = "report_version"
    __table_args__ = (UniqueConstraint("report_fk", "number", name="uq_report_version_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_fk: Mapped[int] = mapped_column(ForeignKey("report.id", ondelete="CASCADE"),
                                           index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    sections: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    author: Mapped[str] = mapped_column(String(128))
    author_kind: Mapped[str] = mapped_column(String(16), default="user")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    etag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    report: Mapped[Report] = relationship(back_populates="versions")


class RouteRuleRow(Base):
    """One routing rule; ``definition`` is ``app.pipeline.routing.RouteRule.to_dict()``."""

    __tablename__ = "route_rule"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("family", "version", name="uq_model_family_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(16), default="builtin")
    weights_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # the digest of the manifest (a single file: its own sha256)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # size and sha256 of every weights file (models.runtime.manifest)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # registered | validated | shadow | active | retired | quarantined (app.registry.lifecycle)
    status: Mapped[str] = mapped_column(String(16), default="registered")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the administrator's model-card notes: what this version is and is not validated for
    notes: Mapped[str] = mapped_column(Text, default="")
    registered_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelAssignment(Base):
    """A version in a role (active or shadow) for a family, on every rule (``rule == ""``) or on
    one routing rule, from ``started_at`` until ``ended_at``. ``version_fk`` None stands for the
    family's built-in default (what a rollback past the first activation returns to).
    ``replaces_fk`` is the assignment this one ended: what a rollback goes back to."""

    __tablename__ = "model_assignment"
    __table_args__ = (
        Index("ix_model_assignment_open", "family", "role", "ended_at"),
        # one open assignment per family, role and rule (two administrators at once)
        Index("uq_model_assignment_open_one", "family", "role", "rule", unique=True,
              postgresql_where=text("ended_at IS NULL"), sqlite_where=text("ended_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64), default="")
    role: Mapped[str] = mapped_column(String(8))
    version_fk: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), nullable=True, index=True)
    replaces_fk: Mapped[int | None] = mapped_column(
        ForeignKey("model_assignment.id", ondelete="SET NULL"), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    started_by: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ModelValidation(Base):
    """One validation run of a version on its family's bundled validation study."""

    __tablename__ = "model_validation"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_fk: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"),
                                            index=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"),
                                               nullable=True, unique=True)
    case: Mapped[str] = mapped_column(String(64), default="")
    # queued -> passed | failed
    state: Mapped[str] = mapped_column(String(16), default="queued")
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    load_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    peak_gpu_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    checks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[str] = mapped_column(String(32), default="")
    worker: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ModelRun(Base):
    """One engine run in one job, of the active version or of a shadow: how it ended, how long
    it took, the findings it stated (codes and states) and, for a shadow, its whole result and
    how it compared with the active version's. ``version_fk`` None: a built-in default."""

    __tablename__ = "model_run"
    __table_args__ = (Index("ix_model_run_version", "family", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    version_fk: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL"), nullable=True, index=True)
    family: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(8), default="active")
    # done | failed | timed_out
    outcome: Mapped[str] = mapped_column(String(16))
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # set when this run built and loaded the engine in its worker
    load_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    trained: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    findings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelOutcome(Base):
    """What a signed report says of one model run of the job that drafted it: the edit rate of
    the draft (active runs) and, per finding code, agreement with the signed text."""

    __tablename__ = "model_outcome"
    __table_args__ = (UniqueConstraint("run_fk", "report_version_fk",
                                       name="uq_model_outcome_run_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_fk: Mapped[int] = mapped_column(ForeignKey("model_run.id", ondelete="CASCADE"),
                                        index=True)
    report_version_fk: Mapped[int] = mapped_column(
        ForeignKey("report_version.id", ondelete="CASCADE"), index=True)
    family: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(8))
    edit_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    # code key -> {"label", "outcome": agree_present | agree_absent | false_positive | miss}
    codes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # how the signed text's findings were read: "cxr-labeller@1.0.0", "kept-sentences", ...
    method: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_resource", "resource_type", "resource_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(128), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    # The person the key belongs to (a signature records them); empty for a system's key.
    person_name: Mapped[str] = mapped_column(String(128), default="")
    # An optional identifier of that person at the site (staff number, NPI, GMC number).
    person_id: Mapped[str] = mapped_column(String(64), default="")
    # The first characters of the key, stored in clear to find the row; the rest only hashed.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebSession(Base):
    """A browser's sign-in with an API key (the viewer's session cookie). Only a hash of the
    cookie's token is stored; the session ends at ``expires_at``, at sign-out or when its key
    is revoked."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_fk: Mapped[int] = mapped_column(ForeignKey("api_key.id", ondelete="CASCADE"),
                                        index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DicomPeer(Base):
    """A DICOM application entity MedGate knows: who may associate, from where, and what it may
    do. The same rows are the destinations results and retrieves are sent to (host and port)."""

    __tablename__ = "dicom_peer"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    # The host the peer connects from and is reached at; empty: any address.
    host: Mapped[str] = mapped_column(String(255), default="")
    # Its own SCP port (destinations of C-MOVE and of exported results); None: not reachable.
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    can_store: Mapped[bool] = mapped_column(Boolean, default=False)
    can_query: Mapped[bool] = mapped_column(Boolean, default=False)
    can_retrieve: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
