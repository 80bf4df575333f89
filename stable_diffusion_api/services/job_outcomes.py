"""`Outcomes`: a device worker's last write of each job, kept until the database takes it.

A job ends with one write: its image rows and `succeeded` (`JobQueue.succeed`), or `failed` /
`canceled` (`JobQueue.finish`). The database may refuse that write for a while — its disk full,
its file made read-only or deleted (`DatabaseUnavailable`). The job must not then stay `running`
forever, nor may its images be lost, or kept on disk with no row that points at them:

- A success is retried with a back-off (0.1 s, doubling, at most 5 s apart) for
  `settings.save_retry_s` (`DALI_SAVE_RETRY_S`, 60 s). If the database takes it in that time,
  the job succeeds as if nothing had happened. If not (or if the server stops meanwhile), its
  files are moved to `quarantine/` in the file store (never deleted) and the job fails, kind `internal`,
  saying why and where its files went.
- An ending the database refuses (that failure, or any failure or cancel) is kept in memory
  and written before the worker claims its next job (`write_unwritten`): at the first moment
  the database takes writes again, and before any other job starts (a claim is a write too).
- Meanwhile the progress hub hears the problem (the event streams send it as `problem`), and
  once the worker has given the job up, its outcome (`done`): no watcher waits for the row.

If the process stops before the row is written, the next start finds the job `running` under a
dead process and marks it interrupted, and recovery moves any file of it to quarantine (the
crash policy, services/workers.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.models import (
    SUCCEEDED,
    FailureKind,
    Generation,
    Image,
    JobStatus,
    utcnow,
)
from stable_diffusion_api.services.generations import generation_view
from stable_diffusion_api.services.worker_context import WorkerContext

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
LONGEST_RETRY_S = 5.0


class Unsaved(Exception):
    """A success the database did not take in time; its files are in quarantine. The message
    is the job's error."""


class Outcomes:
    """The final writes of one worker's jobs (a worker runs one job at a time)."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        # Endings the database refused: job id → (kind, error, columns), oldest first.
        self._unwritten: dict[int, tuple[FailureKind, str, dict[str, Any]]] = {}

    def succeed(
        self,
        job_id: int,
        columns: dict[str, Any],
        images: list[dict[str, Any]],
        files: list[str],
        status: JobStatus = SUCCEEDED,
    ) -> tuple[Generation, list[Image]] | None:
        """`JobQueue.succeed` for this worker's job (`status`: succeeded, or interrupted when
        it ended early keeping its images), retried while the database refuses it.
        Unsaved, once `files` (the job's, relative to the data folder) are in quarantine, when
        it still refuses after `save_retry_s` or the server is stopping."""
        context = self.context
        deadline = time.monotonic() + context.settings.save_retry_s
        delay = FIRST_RETRY_S
        while True:
            try:
                return context.jobs.succeed(job_id, context.instance_id, columns, images, status)
            except DatabaseUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0 or context.stopping.is_set():
                    raise Unsaved(self._quarantine(job_id, files, exc.reason)) from exc
                context.hub.problem(job_id, f"its images are not saved yet: {exc.reason}")
                context.stopping.wait(min(delay, left))
                delay = min(2 * delay, LONGEST_RETRY_S)

    def _quarantine(self, job_id: int, files: list[str], reason: str) -> str:
        """Move the job's files to quarantine; the error the job ends with."""
        storage = self.context.storage
        moved = 0
        for relative in files:
            try:
                if storage.exists(relative):
                    storage.quarantine(relative)
                    moved += 1
            except OSError:  # left in place: recovery quarantines it at the next start
                log.exception("generation %d: could not move %s to quarantine", job_id, relative)
        log.error("generation %d: the database did not take its result (%s); %d files moved "
                  "to quarantine", job_id, reason, moved)  # fmt: skip
        return (
            f"internal error: its result could not be saved: {reason}; its {moved} image "
            "files were moved to quarantine/ in the file store"
        )

    def finish(
        self,
        row: Generation,
        status: JobStatus,
        kind: FailureKind,
        error: str,
        columns: dict[str, Any],
    ) -> dict[str, Any] | None:
        """End `row`'s job unsuccessfully (`JobQueue.finish`; `status` is what that writes).
        None when written; when the database refuses, the ending is kept for
        `write_unwritten` and the view the job will have is returned, for the hub."""
        try:
            self.context.jobs.finish(row.id, kind, error, columns)
        except DatabaseUnavailable as exc:
            self._unwritten[row.id] = (kind, error, columns)
            log.error("generation %d: its end (%s) is not saved yet (%s); it will be before the "
                      "next job", row.id, kind, exc.reason)  # fmt: skip
            self.context.hub.problem(row.id, f"its end is not saved yet: {exc.reason}")
            update = {"status": status, "failure_kind": kind, "error": error,
                      "finished_at": utcnow()}  # fmt: skip
            return generation_view(row, []).model_copy(update=update).model_dump(mode="json")
        return None

    def write_unwritten(self) -> bool:
        """Write the endings the database refused, oldest first; whether none is left."""
        for job_id, (kind, error, columns) in list(self._unwritten.items()):
            try:
                self.context.jobs.finish(job_id, kind, error, columns)
            except DatabaseUnavailable:
                return False  # the database said why; the worker tries again after a poll
            del self._unwritten[job_id]
            log.warning("generation %d: its end (%s) is saved now", job_id, kind)
        return True
