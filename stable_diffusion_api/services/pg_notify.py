"""Live view across hosts over PostgreSQL's LISTEN/NOTIFY: what a web host and a worker node
each run, and the factories that build them for a PostgreSQL URL (None for SQLite: one machine,
and the pipes of services/worker_process.py carry everything).

Three channels (services/live_codec.py), no broker but the database both already share:

    node ──dali_progress──▶ web hosts   every report of a running job (start, step, preview,
                                        problem, finish), replayed on the web host's hub, so
                                        the event streams and pages work unchanged
    web  ──dali_cancel────▶ nodes       cancel / interrupt: the node's worker is told at once
                                        and stops at its next step (the row's flag, polled once
                                        a second, stays the fallback)
    web  ──dali_work──────▶ nodes       a job was queued: the node's workers look at the queue
                                        now instead of at their next poll

A web host (`WebLive`, started and stopped by the `Studio`): one listening connection for
progress and one sending connection for cancels and wake-ups. A node (`NodeLive`, built by the
worker command): a `NotifyHub` to give its workers as their hub, and one listening connection
for cancels and work, handed to the functions the worker command gives
(`worker.request_cancel`, `worker.wake`) — and `wait_for_work(timeout)` for a loop of its own.
Every connection reconnects with back-off after a loss; nothing here ever fails a job or a
request.

A node's worker command plugs it in like this (its `WorkerPool` already listens to its hub's
cancels, so only the wake-up needs wiring):

    live = node_live(settings.resolved_database_url)       # None on SQLite
    hub = live.hub if live is not None else ProgressHub()  # the hub given to the WorkerPool
    pool = WorkerPool(settings, db, engine, hardware, models, storage, hub, speeds, mode, jobs)
    if live is not None:
        live.on_work = lambda _device: [w.wake() for w in pool.workers.values()]
        live.start()
    ...
    pool.stop()
    if live is not None:
        live.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url

from stable_diffusion_api.services.live_codec import (
    CANCEL_CHANNEL,
    PROGRESS_CHANNEL,
    WORK_CHANNEL,
    WorkQueued,
    decode_cancel,
    decode_report,
    decode_work,
    encode_cancel,
    encode_work,
)
from stable_diffusion_api.services.notify_hub import NotifyHub
from stable_diffusion_api.services.pg_listener import NotifyListener
from stable_diffusion_api.services.pg_sender import NotifySender
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.worker_messages import Cancel, replay

log = logging.getLogger(__name__)

CancelFn = Callable[[int, bool], None]  # (job id, keep_partial): a Worker's request_cancel
WakeFn = Callable[[str], None]  # (device): wake the worker(s) of that device


def libpq_conninfo(database_url: str) -> str | None:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL
    (`postgresql+psycopg://user@/db?host=/run/pg` → `postgresql://user@/db?host=/run/pg`);
    None for any other database."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class WebLive:
    """A web host's end: remote reports replayed on `hub`; cancels and new work announced."""

    def __init__(self, conninfo: str, hub: ProgressHub) -> None:
        self.hub = hub
        self.sender = NotifySender(conninfo, name="dali-notify-web")
        self.listener = NotifyListener(
            conninfo, [PROGRESS_CHANNEL], self._report, name="dali-listen-progress"
        )

    def start(self) -> None:
        self.sender.start()
        self.listener.start()
        self.hub.cancel_listeners.append(self.cancel)

    def stop(self) -> None:
        if self.cancel in self.hub.cancel_listeners:
            self.hub.cancel_listeners.remove(self.cancel)
        self.listener.stop()
        self.sender.stop()

    def _report(self, _channel: str, payload: str) -> None:
        replay(self.hub, decode_report(payload))

    def cancel(self, job_id: int, keep_partial: bool = False) -> None:
        """Tell every node: stop `job_id` at its next step (`keep_partial`: an interrupt)."""
        self.sender.send(CANCEL_CHANNEL, encode_cancel(Cancel(job_id, keep_partial)))

    def work_queued(self, device: str) -> None:
        """Tell every node: a job was queued for `device`."""
        self.sender.send(WORK_CHANNEL, encode_work(WorkQueued(device)))

    def waking(self, local: WakeFn) -> WakeFn:
        """`local` (the web host's own workers' wake-up), followed by the nodes'."""

        def wake(device: str) -> None:
            local(device)
            self.work_queued(device)

        return wake


class NodeLive:
    """A worker node's end: `hub` for its workers; cancels and new work passed to `on_cancel`
    and `on_work` (and to `wait_for_work`) as they come. `on_cancel` defaults to the hub's own
    `request_cancel`, which a `WorkerPool` built on that hub already listens to (its workers
    hear every cancel); either may be set after the workers are built."""

    def __init__(
        self,
        conninfo: str,
        on_cancel: CancelFn | None = None,
        on_work: WakeFn | None = None,
    ) -> None:
        self.sender = NotifySender(conninfo, name="dali-notify-node")
        self.hub = NotifyHub(self.sender)
        self.on_cancel: CancelFn = on_cancel if on_cancel is not None else self.hub.request_cancel
        self.on_work = on_work
        self._work = threading.Condition()
        self._work_seen = 0
        self.listener = NotifyListener(
            conninfo, [CANCEL_CHANNEL, WORK_CHANNEL], self._heard, name="dali-listen-node"
        )

    def start(self) -> None:
        self.sender.start()
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()
        self.sender.stop()

    def _heard(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            cancel = decode_cancel(payload)
            self.on_cancel(cancel.job_id, cancel.keep_partial)
        elif channel == WORK_CHANNEL:
            work = decode_work(payload)
            with self._work:
                self._work_seen += 1
                self._work.notify_all()
            if self.on_work is not None:
                self.on_work(work.device)

    def work_count(self) -> int:
        """How many "work queued" notifications came so far (for `wait_for_work`)."""
        return self._work_seen

    def wait_for_work(self, timeout: float, seen: int | None = None) -> bool:
        """Block until a "work queued" notification comes after the `seen`-th one (default:
        now), or `timeout` passes; whether one came. A worker loop's poll sleep:
        `live.wait_for_work(settings.poll_s)` wakes the moment a job is queued."""
        with self._work:
            after = self._work_seen if seen is None else seen
            return self._work.wait_for(lambda: self._work_seen > after, timeout)


def web_live(database_url: str, hub: ProgressHub) -> WebLive | None:
    """A web host's live links for a PostgreSQL database; None for SQLite (nothing to do)."""
    conninfo = libpq_conninfo(database_url)
    return None if conninfo is None else WebLive(conninfo, hub)


def node_live(
    database_url: str, on_cancel: CancelFn | None = None, on_work: WakeFn | None = None
) -> NodeLive | None:
    """A worker node's live links (its hub: `.hub`) for a PostgreSQL database; None for SQLite.
    Start it before the workers, stop it after them."""
    conninfo = libpq_conninfo(database_url)
    return None if conninfo is None else NodeLive(conninfo, on_cancel, on_work)
