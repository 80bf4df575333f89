"""`JobQueue`: the one owner of a job's state machine, and the statements every image passes
through, prebuilt as SQLAlchemy Core.

A generation's `status` (`JobStatus`) changes here and nowhere else:

    enqueue          → queued
    claim            queued → running (a conditional UPDATE: one worker gets it), for a
                     worker whose device forms and models fit the job (services/nodes.py)
    hand_back        running → queued: a node stopping (SIGTERM) returns the job it was
                     running, to be claimed again
    claim_batch      the same for the oldest job it may run and up to N − 1 younger ones that
                     match it, run in one denoising loop (DALI_BATCH_MAX)
    succeed          running → succeeded (or interrupted: stopped early on request, keeping
                     its partial images), with its image rows, for the worker that owns it
    finish           running → failed, or canceled when the kind is `cancelled`
    cancel           queued → canceled at once; running → its cancel flag (the worker stops it
                     at its next step and calls `finish`), or with keep_partial its interrupt
                     flag (the worker stops it at its next step and calls `succeed`)
    cancel_project_jobs   a project being deleted: its queued jobs canceled, its running ones
                     flagged (in the deleting transaction)
    fail_orphaned    recovery: running jobs of processes whose heartbeat stopped → failed,
                     interrupted, naming the node that ran them
    fail_dead_worker a worker process that died: the job it was running → failed, interrupted

Every job that ends unsuccessfully gets a `FailureKind` with its message, so nobody reads the
kind back out of the text. (tests/api/test_job_queue.py checks that no other module writes
`status`.)

Between a client's POST and its `done` event, each generation is queued (the project read, the
queue count and the insert), claimed by its device's worker, and marked succeeded with its image
rows (or finished otherwise). These run on a cold CPU — after an idle pause, or right after
sampling has filled the caches with tensors — and there an ORM session costs 2–4 ms a statement
on this project's 2-core machine, a Core statement built once and run on a plain connection
about 1 ms (docs/benchmarks.md, "Service overhead"). The statements are portable Core: the same
code runs on PostgreSQL.

Rows come back as transient ORM objects (`Generation`, `Image`, not attached to any session), so
the rest of the code reads them like any other row. Everything else — listing, paging, deleting,
recovery — stays on ORM sessions, where a millisecond does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Base,
    FailureKind,
    Generation,
    Image,
    JobStatus,
    utcnow,
)
from stable_diffusion_api.services.claim_routing import (
    OLDEST_QUEUED,
    OLDEST_QUEUED_HELD,
    batch_of,
    claim_values,
)

GENERATIONS: Table = Base.metadata.tables["generations"]
IMAGES: Table = Base.metadata.tables["images"]
PROJECTS: Table = Base.metadata.tables["projects"]
RowModel = TypeVar("RowModel", Generation, Image)

# What the rows say about jobs that did not end on their own.
CANCELED_QUEUED = "canceled before it started"
CANCELED_RUNNING = "canceled while running"
PROJECT_DELETED = "canceled: its project was deleted"
INTERRUPTED = "interrupted: the server stopped while this job was running"
NODE_STOPPED = "interrupted: node {node} stopped while this job was running"
DIED = "interrupted: the worker process stopped unexpectedly (exit code {code})"

# Bound parameters are named apart from the columns: a column's own name in an UPDATE's
# parameters means "SET this column".
_PROJECT = select(
    PROJECTS.c.device,
    PROJECTS.c.dtype,
    PROJECTS.c.low_memory,
    PROJECTS.c.default_model,
    PROJECTS.c.defaults,
).where(PROJECTS.c.id == bindparam("project_key"))

# Jobs waiting anywhere (for the queue limit), and jobs waiting or running on one device (all
# of them are ahead of a row inserted now).
_QUEUE_LENGTHS = select(
    func.count(GENERATIONS.c.id).filter(GENERATIONS.c.status == QUEUED),
    func.count(GENERATIONS.c.id).filter(GENERATIONS.c.device == bindparam("on_device")),
).where(GENERATIONS.c.status.in_((QUEUED, RUNNING)))

_INSERT = insert(GENERATIONS).values(status=QUEUED).returning(GENERATIONS.c.id)

_SET_INPUTS = update(GENERATIONS).where(GENERATIONS.c.id == bindparam("job_key"))

_PROJECT_NAME = (
    select(PROJECTS.c.name)
    .where(PROJECTS.c.id == GENERATIONS.c.project_id)
    .scalar_subquery()
    .label("project_name")
)


def _take(*conditions: Any) -> Any:
    """queued → running under `owner` on `node`: the rows meeting `conditions` that are still
    queued, returned with their project's name (services/claim_routing.py picks them)."""
    return (
        update(GENERATIONS)
        .where(*conditions, GENERATIONS.c.status == QUEUED)
        .values(
            status=RUNNING,
            worker_id=bindparam("owner"),
            node=bindparam("node_name"),
            started_at=bindparam("now"),
        )
        .returning(*GENERATIONS.c, _PROJECT_NAME)
    )


_CLAIM = _take(GENERATIONS.c.id == OLDEST_QUEUED.scalar_subquery())
_CLAIM_HELD = _take(GENERATIONS.c.id == OLDEST_QUEUED_HELD.scalar_subquery())
_CLAIM_BATCH = _take(GENERATIONS.c.id.in_(select(batch_of(OLDEST_QUEUED).c.id)))
_CLAIM_BATCH_HELD = _take(GENERATIONS.c.id.in_(select(batch_of(OLDEST_QUEUED_HELD).c.id)))

_HAND_BACK = (
    update(GENERATIONS)
    .where(
        GENERATIONS.c.id == bindparam("job_key"),
        GENERATIONS.c.status == RUNNING,
        GENERATIONS.c.worker_id == bindparam("owner"),
    )
    .values(status=QUEUED, worker_id=None, node=None, started_at=None)
)

_SUCCEED = (
    update(GENERATIONS)
    .where(
        GENERATIONS.c.id == bindparam("job_key"),
        GENERATIONS.c.status == RUNNING,
        GENERATIONS.c.worker_id == bindparam("owner"),
    )
    .values(status=bindparam("final_status"), failure_kind=None)
    .returning(*GENERATIONS.c)
)

_INSERT_IMAGES = insert(IMAGES).returning(*IMAGES.c, sort_by_parameter_order=True)

_FINISH = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id == bindparam("job_key"), GENERATIONS.c.status == RUNNING)
    .values(
        status=bindparam("new_status"),
        failure_kind=bindparam("kind"),
        error=bindparam("message"),
        finished_at=bindparam("now"),
    )
)

_CANCEL_QUEUED = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id == bindparam("job_key"), GENERATIONS.c.status == QUEUED)
    .values(
        status=CANCELED,
        failure_kind=FailureKind.CANCELLED,
        error=CANCELED_QUEUED,
        finished_at=bindparam("now"),
    )
    .returning(GENERATIONS.c.id)
)

_FLAG_RUNNING = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id == bindparam("job_key"), GENERATIONS.c.status == RUNNING)
    .values(cancel_requested=True)
    .returning(GENERATIONS.c.id)
)

_FLAG_INTERRUPT = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id == bindparam("job_key"), GENERATIONS.c.status == RUNNING)
    .values(interrupt_requested=True)
    .returning(GENERATIONS.c.id)
)


_STATUS = select(GENERATIONS.c.status).where(GENERATIONS.c.id == bindparam("job_key"))

_CANCEL_PROJECT_QUEUED = (
    update(GENERATIONS)
    .where(GENERATIONS.c.project_id == bindparam("project_key"), GENERATIONS.c.status == QUEUED)
    .values(
        status=CANCELED,
        failure_kind=FailureKind.CANCELLED,
        error=PROJECT_DELETED,
        finished_at=bindparam("now"),
    )
)

_FLAG_PROJECT_RUNNING = (
    update(GENERATIONS)
    .where(GENERATIONS.c.project_id == bindparam("project_key"), GENERATIONS.c.status == RUNNING)
    .values(cancel_requested=True)
    .returning(GENERATIONS.c.id)
)

_RUNNING_OWNERS = select(GENERATIONS.c.id, GENERATIONS.c.worker_id, GENERATIONS.c.node).where(
    GENERATIONS.c.status == RUNNING
)

_INTERRUPT = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id.in_(bindparam("job_keys", expanding=True)))
    .where(GENERATIONS.c.status == RUNNING)
    .values(
        status=FAILED,
        failure_kind=FailureKind.INTERRUPTED,
        error=bindparam("message"),
        finished_at=bindparam("now"),
    )
    .returning(GENERATIONS.c.id)
)

_INTERRUPT_WORKER = (
    update(GENERATIONS)
    .where(
        GENERATIONS.c.status == RUNNING,
        GENERATIONS.c.device.in_(bindparam("device_forms", expanding=True)),
        GENERATIONS.c.worker_id == bindparam("owner"),
    )
    .values(
        status=FAILED,
        failure_kind=FailureKind.INTERRUPTED,
        error=bindparam("message"),
        finished_at=bindparam("now"),
    )
    .returning(GENERATIONS.c.id)
)

_CANCEL_REQUESTED = select(GENERATIONS.c.cancel_requested, GENERATIONS.c.interrupt_requested).where(
    GENERATIONS.c.id == bindparam("job_key")
)


class ProjectSettings(NamedTuple):
    """What a new job copies from its project."""

    device: str
    dtype: str | None
    low_memory: bool
    default_model: str | None
    defaults: dict[str, Any] | None


class StopRequest(NamedTuple):
    """What a running job's row asks of its worker: to cancel (drop its work), to interrupt
    (stop keeping what it made)."""

    cancel: bool
    interrupt: bool


class Enqueued(NamedTuple):
    id: int
    ahead: int  # jobs waiting or running on its device before it


class CancelOutcome(NamedTuple):
    """What `JobQueue.cancel` did: `status` is the job's status afterwards — `running` with
    `changed` means its cancel was requested — and `changed` False means it had already
    finished (with that status)."""

    status: JobStatus
    changed: bool


def _transient(model: type[RowModel], table: Table, row: Row[Any]) -> RowModel:
    """An ORM object (in no session) holding `row`'s values of `table`'s columns."""
    return model(**{column.key: row._mapping[column] for column in table.c})


class JobQueue:
    """The queue's per-image statements on one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def project(self, project_id: int) -> ProjectSettings | None:
        """The project's hardware, default model and defaults; None when there is no such
        project."""
        with self._db.connect() as connection:
            row = connection.execute(_PROJECT, {"project_key": project_id}).first()
        return ProjectSettings(*row) if row is not None else None

    def enqueue(
        self,
        values: dict[str, Any],
        queue_limit: int,
        attach: Callable[[int], dict[str, Any]] | None = None,
    ) -> Enqueued | None:
        """Insert a queued job with the columns in `values`, unless `queue_limit` jobs already
        wait (then None). `attach(id)`, when given, writes the job's input files and returns
        the columns that point at them. One transaction: callers serialise calls to make the
        limit exact. Raises LookupError when the project has gone meanwhile."""
        with self._db.begin() as connection:
            waiting, ahead = connection.execute(
                _QUEUE_LENGTHS, {"on_device": values["device"]}
            ).one()
            if waiting >= queue_limit:
                return None
            try:
                job_id = connection.execute(_INSERT, values).scalar_one()
            except IntegrityError as exc:  # the project was deleted since it was read
                raise LookupError(values["project_id"]) from exc
            if attach is not None:
                columns = attach(job_id)
                if columns:
                    connection.execute(_SET_INPUTS, {"job_key": job_id, **columns})
        return Enqueued(job_id, ahead)

    def claim(
        self,
        device: str | Collection[str],
        owner: str,
        models: tuple[Collection[str], Collection[str]] | None = None,
        node: str | None = None,
    ) -> tuple[Generation, str] | None:
        """The oldest queued job asking for `device` (or one of several forms of it), now
        running under `owner` on `node`, and its project's name; None when nothing waits.
        `models`: (names, short hashes) of the models the node holds — a job of another model
        is left to a node that has it; None: any model. One conditional UPDATE … RETURNING:
        two workers (even in two processes or on two hosts) never claim the same row."""
        values, held = claim_values(device, owner, models, node)
        claim, oldest = (_CLAIM_HELD, OLDEST_QUEUED_HELD) if held else (_CLAIM, OLDEST_QUEUED)
        with self._db.begin() as connection:
            for _ in range(3):  # PostgreSQL: another worker may win the row between the two
                row = connection.execute(claim, values | {"now": utcnow()}).first()
                if row is not None:
                    return _transient(Generation, GENERATIONS, row), row.project_name or ""
                if connection.execute(oldest, values).first() is None:
                    return None
        return None

    def claim_batch(
        self,
        device: str | Collection[str],
        owner: str,
        most: int,
        models: tuple[Collection[str], Collection[str]] | None = None,
        node: str | None = None,
    ) -> list[tuple[Generation, str]]:
        """Up to `most` queued jobs that can run together, now running under `owner` on
        `node`, oldest first, each with its project's name: the oldest job `claim` would take
        and the younger ones asking for the same device that match it (`claim_routing.batch_of`, the
        same `extra_params`, no input image). Empty when nothing waits. One conditional
        UPDATE … RETURNING, as `claim`."""
        values, held = claim_values(device, owner, models, node)
        claim, oldest = (
            (_CLAIM_BATCH_HELD, OLDEST_QUEUED_HELD) if held else (_CLAIM_BATCH, OLDEST_QUEUED)
        )
        with self._db.begin() as connection:
            for _ in range(3):  # PostgreSQL: another worker may win the rows between the two
                rows = connection.execute(claim, values | {"now": utcnow(), "most": most}).all()
                if rows:
                    return [
                        (_transient(Generation, GENERATIONS, row), row.project_name or "")
                        for row in sorted(rows, key=lambda row: row.id)
                    ]
                if connection.execute(oldest, values).first() is None:
                    return []
        return []

    def hand_back(self, job_id: int, owner: str) -> bool:
        """A running job of `owner` back to queued (its node is stopping): another worker,
        or this node after a restart, runs it from the start. False when it was not running
        under `owner` (then nothing changes)."""
        with self._db.begin() as connection:
            done = connection.execute(_HAND_BACK, {"job_key": job_id, "owner": owner})
        return bool(done.rowcount)

    def succeed(
        self,
        job_id: int,
        owner: str,
        columns: dict[str, Any],
        images: list[dict[str, Any]],
        status: JobStatus = SUCCEEDED,
    ) -> tuple[Generation, list[Image]] | None:
        """Mark the job succeeded (setting `columns` too: finished_at, timings, …) and insert its image rows, in one
        transaction — unless the row is gone (project deleted) or no longer running under
        `owner`: then None and nothing changes. Returns the finished row and the image rows.
        `status` INTERRUPTED: it stopped early on request, and `images` are what it had made."""
        if status not in (SUCCEEDED, JobStatus.INTERRUPTED):
            raise ValueError(f"a job ends with its images succeeded or interrupted, not {status}")
        with self._db.begin() as connection:
            row = connection.execute(
                _SUCCEED, {"job_key": job_id, "owner": owner, "final_status": status, **columns}
            ).first()
            if row is None:
                return None
            inserted = connection.execute(_INSERT_IMAGES, images).all() if images else []
        rows = [_transient(Image, IMAGES, image) for image in inserted]
        return _transient(Generation, GENERATIONS, row), rows

    def finish(
        self, job_id: int, kind: FailureKind, error: str, columns: dict[str, Any] | None = None
    ) -> JobStatus | None:
        """End a running job unsuccessfully: canceled when `kind` is `cancelled`, else failed,
        with `error` and `columns` (e.g. step_seconds). The status written; None when the job
        was no longer running (then nothing changes)."""
        status = CANCELED if kind is FailureKind.CANCELLED else FAILED
        values = {"job_key": job_id, "new_status": status, "kind": kind, "message": error,
                  "now": utcnow(), **(columns or {})}  # fmt: skip
        with self._db.begin() as connection:
            done = connection.execute(_FINISH, values)
        return status if done.rowcount else None

    def cancel(self, job_id: int, keep_partial: bool = False) -> CancelOutcome | None:
        """Cancel a queued job at once (canceled, kind `cancelled`) or flag a running one (its
        worker stops it at the next step and records it canceled; with `keep_partial`, it
        keeps what it made and records it interrupted); a finished job is left as it was.
        What happened, or None when there is no such job."""
        flag = _FLAG_INTERRUPT if keep_partial else _FLAG_RUNNING
        with self._db.begin() as connection:
            if connection.execute(_CANCEL_QUEUED, {"job_key": job_id, "now": utcnow()}).first():
                return CancelOutcome(CANCELED, True)
            if connection.execute(flag, {"job_key": job_id}).first():
                return CancelOutcome(RUNNING, True)
            status = connection.execute(_STATUS, {"job_key": job_id}).scalar()
        return CancelOutcome(JobStatus(status), False) if status is not None else None

    @staticmethod
    def cancel_project_jobs(connection: Connection, project_id: int) -> list[int]:
        """Within the transaction deleting project `project_id` (`connection`'s): its queued
        jobs canceled, its running ones flagged. The ids of the running ones (their workers
        are to be told at once)."""
        connection.execute(_CANCEL_PROJECT_QUEUED, {"project_key": project_id, "now": utcnow()})
        return list(
            connection.execute(_FLAG_PROJECT_RUNNING, {"project_key": project_id}).scalars()
        )

    def fail_orphaned(self, alive: Collection[str]) -> list[int]:
        """Recovery: every running job whose worker id is not in `alive` (its process stopped
        beating) → failed, interrupted, naming the node that ran it. The ids failed. A job
        claimed meanwhile by a process not in `alive` is not among them: only the rows seen
        running before are changed."""
        with self._db.begin() as connection:
            by_node: dict[str | None, list[int]] = {}
            for job_id, worker_id, node in connection.execute(_RUNNING_OWNERS):
                if worker_id not in alive:
                    by_node.setdefault(node, []).append(job_id)
            failed: list[int] = []
            for node, orphans in by_node.items():
                message = INTERRUPTED if node is None else NODE_STOPPED.format(node=node)
                values = {"job_keys": orphans, "message": message, "now": utcnow()}
                failed.extend(connection.execute(_INTERRUPT, values).scalars())
        return sorted(failed)

    def fail_dead_worker(
        self,
        device: str | Collection[str],
        owner: str,
        exit_code: int | None,
        job_id: int | None = None,
    ) -> list[int]:
        """A worker process of `owner` for `device` (or its forms: "cuda:0", "cuda", "auto",
        …) died: the job it was running (`job_id`, when known: two of the owner's workers may
        run "auto" jobs) → failed, interrupted (saying the exit code). The ids failed."""
        forms = [device] if isinstance(device, str) else list(device)
        values = {"device_forms": forms, "owner": owner, "now": utcnow(),
                  "message": DIED.format(code=exit_code)}  # fmt: skip
        statement = _INTERRUPT_WORKER
        if job_id is not None:
            statement = statement.where(GENERATIONS.c.id == job_id)
        with self._db.begin() as connection:
            return list(connection.execute(statement, values).scalars())

    def cancel_requested(self, job_id: int) -> bool:
        """Whether the job's row asks for a cancel; True when the row is gone."""
        return self.stop_requested(job_id).cancel

    def stop_requested(self, job_id: int) -> StopRequest:
        """What the job's row asks of its worker; a row that is gone asks for a cancel."""
        with self._db.connect() as connection:
            row = connection.execute(_CANCEL_REQUESTED, {"job_key": job_id}).first()
        if row is None:
            return StopRequest(cancel=True, interrupt=False)
        return StopRequest(cancel=bool(row[0]), interrupt=bool(row[1]))
