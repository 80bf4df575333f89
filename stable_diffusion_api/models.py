"""ORM tables. The generations table is also the durable job queue.

A generation's life (`JobStatus`): queued → running → succeeded | interrupted | failed |
canceled, every change made by `services/job_queue.py` alone; a job that failed or was canceled
also says why (`FailureKind`, its `failure_kind` column); an interrupted one kept the images it
had made when asked to stop (A1111's interrupt), partly denoised. A row is written before
the API answers 202; a worker claims the oldest queued row of its device by flipping it to
running (a conditional UPDATE, so two workers never take the same row); image rows are inserted
in the same transaction that marks the generation succeeded, after their files exist, so no row
ever points at a missing file.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from enum import StrEnum
from typing import Any, Generic, TypeVar

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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates


class JobStatus(StrEnum):
    """Where a generation is in its life. The values are what the REST API and the rows say."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # Stopped early on request (A1111's interrupt), keeping its images as they were then.
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    CANCELED = "canceled"


class FailureKind(StrEnum):
    """Why a job did not succeed (None while it has not ended, and for a success)."""

    INVALID_INPUT = "invalid_input"  # the engine or a check refused the inputs
    OUT_OF_MEMORY = "out_of_memory"  # the device ran out of memory
    INTERRUPTED = "interrupted"  # the server or its worker process stopped under it
    CANCELLED = "cancelled"  # someone canceled it (or deleted its project)
    INTERNAL = "internal"  # a fault of ours


QUEUED = JobStatus.QUEUED
RUNNING = JobStatus.RUNNING
SUCCEEDED = JobStatus.SUCCEEDED
FAILED = JobStatus.FAILED
CANCELED = JobStatus.CANCELED
STATUSES = tuple(JobStatus)
FINISHED = (SUCCEEDED, JobStatus.INTERRUPTED, FAILED, CANCELED)
WITH_IMAGES = (SUCCEEDED, JobStatus.INTERRUPTED)  # the finished statuses that keep images


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware UTC datetimes")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


EnumT = TypeVar("EnumT", bound=StrEnum)


class StrEnumColumn(TypeDecorator[EnumT], Generic[EnumT]):
    """A `StrEnum` kept as its plain string value (a VARCHAR: no database enum type, so adding
    a member needs no migration); read back as the enum member."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[EnumT], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: EnumT | str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> EnumT | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    pass


def name_key(name: str) -> str:
    """What makes two project names the same: whitespace runs as one space, Unicode case
    folding (`str.casefold`, so `Straße` is `STRASSE`) and canonical composition (an `Ö` typed
    as O plus a combining diaeresis is an `Ö`)."""
    folded = unicodedata.normalize("NFC", " ".join(name.split())).casefold()
    return unicodedata.normalize("NFC", folded)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_name_key", "name_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # `name_key(name)`, set whenever the name is: its unique index makes `Ölbild` and `ölbild`
    # one name on every database (SQLite's lower() folds ASCII only). No length: case folding
    # can lengthen a name ("ß" → "ss"). Nullable only because SQLite cannot make an added
    # column NOT NULL without copying the table (migration 0009); every project has one.
    name_key: Mapped[str | None] = mapped_column(String(), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # "cpu", "cuda:0" (that device on any node), "cuda" (any CUDA device), "auto" (any), or
    # "gpu-b/cuda:0" (that node's); services/nodes.py.
    device: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(16))  # None → the device's default
    low_memory: Mapped[bool] = mapped_column(Boolean, default=False)
    default_model: Mapped[str | None] = mapped_column(String(255))  # None → the built-in model
    defaults: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The A1111 options a client set that mean nothing to Dali, as sent (written only by
    # `a1111.options.OptionStore`); None until the first.
    a1111_options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    generations: Mapped[list[Generation]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True
    )

    @validates("name")
    def _set_name_key(self, _key: str, name: str) -> str:
        self.name_key = name_key(name)
        return name


class Generation(Base):
    __tablename__ = "generations"
    # AUTOINCREMENT: a deleted id is never handed out again, so cached image URLs stay true.
    __table_args__ = (
        Index("ix_generations_queue", "status", "device", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(StrEnumColumn(JobStatus, 16), default=QUEUED)
    source: Mapped[str] = mapped_column(String(32), default="api")  # api, page, a1111, gradio
    # The hardware and model are copied from the project at submission: editing the project
    # later does not change what a queued job runs on.
    device: Mapped[str] = mapped_column(String(32))  # as the project's (services/nodes.py)
    dtype: Mapped[str | None] = mapped_column(String(16))
    low_memory: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str] = mapped_column(String(255))
    model_hash: Mapped[str | None] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    sampler: Mapped[str | None] = mapped_column(String(64))  # None → the model's default
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)  # random seeds are drawn at submission
    width: Mapped[int | None] = mapped_column(Integer)  # None → the model's native size
    height: Mapped[int | None] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer, default=1)
    strength: Mapped[float] = mapped_column(Float, default=0.75)
    variation_seed: Mapped[int | None] = mapped_column(BigInteger)  # None when strength is 0
    variation_strength: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # GenerationParams fields with no column of their own (services/job_params.py); None → none.
    extra_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    init_image: Mapped[str | None] = mapped_column(String(255))  # path relative to data dir
    mask: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Asked to stop at its next step keeping what it made (A1111's interrupt), not to cancel.
    interrupt_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String(64))
    # The node that claimed it (services/nodes.py); None while queued (and for old rows).
    node: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    failure_kind: Mapped[FailureKind | None] = mapped_column(StrEnumColumn(FailureKind, 16))
    step_seconds: Mapped[float | None] = mapped_column(Float)  # measured mean time per step
    # The reverse-process strip kept from the run (path relative to the data dir) and what it
    # shows: {"width", "height", "decoder", "frames": [{"step", "total", "sigma"}, …]}.
    # None → no strip.
    filmstrip_path: Mapped[str | None] = mapped_column(String(255))
    filmstrip: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the engine warned about the run's input (e.g. a removed LoRA tag); None → nothing.
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    # Seconds a finished run spent where (schemas.GenerationTimings); None → never ran.
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    project: Mapped[Project] = relationship(back_populates="generations")
    images: Mapped[list[Image]] = relationship(
        back_populates="generation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Image.index",
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_project_newest", "project_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # position in its batch
    seed: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(255))  # relative to the data directory
    thumb_path: Mapped[str] = mapped_column(String(255))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[str] = mapped_column(Text, default="")  # A1111 infotext
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An upscale of another image (services/upscales.py) belongs to its source's generation and
    # points at the source; the link goes (NULL) when the source is deleted. `postprocessing` is
    # what AUTOMATIC1111 writes in its PNG chunk of that name ("Postprocess upscale by: 2,
    # Postprocess upscaler: Lanczos"); None for a generated image.
    source_image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL", name="fk_images_source_image_id"), index=True
    )
    postprocessing: Mapped[str | None] = mapped_column(Text)

    generation: Mapped[Generation] = relationship(back_populates="images")


class ModelFile(Base):
    """What `checkpoint_info` said about a checkpoint, keyed by path and valid while the file's
    size and mtime are unchanged (hashing a 4 GB file takes seconds: do it once)."""

    __tablename__ = "model_files"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    short_hash: Mapped[str | None] = mapped_column(String(16))
    variant: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(16))
    parameters: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    native_size: Mapped[int | None] = mapped_column(Integer)  # learned from the first image
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SpeedMeasurement(Base):
    """Measured sampling speed of one model at one size on one device and dtype."""

    __tablename__ = "speed_measurements"
    __table_args__ = (UniqueConstraint("device", "model_hash", "dtype", "width", "height"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[str] = mapped_column(String(32))  # "node/device" (plain in older rows)
    model_hash: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))  # "auto" when the device default was used
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps_per_s: Mapped[float] = mapped_column(Float)  # one image (batch 1)
    overhead_s: Mapped[float] = mapped_column(Float)  # text encoding + decoding + saving
    source: Mapped[str] = mapped_column(String(16))  # "benchmark" | "generation"
    measured_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerProcess(Base):
    """A running server process. Its heartbeat tells other processes that its running jobs are
    alive; a running job whose process stopped beating was interrupted.

    A process that runs workers is a node (services/nodes.py): `node` names it, `devices`
    lists its devices (`DeviceSpec` fields) and `models` the models it holds ({"name",
    "sha256", "short_hash"}), kept current by the heartbeat. A web host without workers has
    None in all three."""

    __tablename__ = "worker_processes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    node: Mapped[str | None] = mapped_column(String(64))
    devices: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    models: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class BenchmarkRequest(Base):
    """A speed measurement asked for another node's device (services/nodes.py): that node's
    heartbeat takes it (`state` queued → running), runs it on its worker and writes how it
    ended (done, failed). Measurements themselves go to `speed_measurements`."""

    __tablename__ = "benchmark_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(32))  # its id on that node ("cuda:0")
    dtype: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # running, done, failed
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StudioIdentity(Base):
    """The studio's id, also written in the data folder (`services/identity.py`): a database
    and a data folder belong together only when their ids agree."""

    __tablename__ = "studio_identity"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
