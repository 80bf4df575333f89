"""`NotifySender`: NOTIFYs sent from one thread of their own over one PostgreSQL connection,
never blocking nor failing whoever sends.

`send(channel, payload)` only puts the pair in a bounded queue and returns (microseconds); the
payload may be a function that makes it, called on the sender's thread (a preview's encoding
then costs the job nothing). The sender's thread runs `SELECT pg_notify(channel, payload)` on its own autocommit connection, in
the order given — PostgreSQL delivers one session's notifications in that order. A queue that
is full (the database slower than the reports) drops the new one. A lost connection drops the
message in hand and every one sent while it reconnects, trying again after 0.5 s, then twice as
long each time up to `MAX_BACKOFF_S`; live news that is late is no news, and the rows keep the
truth. The counts of sent and dropped messages are kept (`sent`, `dropped`) for tests and logs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
QUEUE_SIZE = 1000

Payload = str | Callable[[], str]


def connect(conninfo: str) -> Any:
    """A psycopg autocommit connection; on TCP with keep-alives, so a vanished server is noticed
    within about 30 s even while nothing is sent."""
    import psycopg

    return psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=5,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


class NotifySender:
    def __init__(self, conninfo: str, name: str = "dali-notify") -> None:
        self._conninfo = conninfo
        self._queue: queue.Queue[tuple[str, Payload] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = threading.Event()
        self._connection: Any = None
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to `timeout`), then close the connection."""
        self._stopping.set()
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def send(self, channel: str, payload: Payload) -> None:
        """Queue one notification (its text, or a function making it); never blocks, never
        raises."""
        if self._stopping.is_set():
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((channel, payload))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        retry_at = 0.0
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._connection is None:
                if time.monotonic() < retry_at:
                    self.dropped += 1
                    continue
                try:
                    self._connection = connect(self._conninfo)
                except Exception as exc:  # psycopg.OperationalError, mostly
                    log.warning("notify: cannot reach the database (%s); again in %.1f s",
                                str(exc).strip(), backoff)  # fmt: skip
                    retry_at, backoff = time.monotonic() + backoff, min(backoff * 2, MAX_BACKOFF_S)
                    self.dropped += 1
                    continue
                backoff = MIN_BACKOFF_S
            channel, payload = item
            try:
                text = payload if isinstance(payload, str) else payload()
            except Exception:  # a report that cannot be encoded is a bug, not an outage
                log.exception("notify: a %s message could not be encoded", channel)
                self.dropped += 1
                continue
            try:
                self._connection.execute("SELECT pg_notify(%s, %s)", (channel, text))
                self.sent += 1
            except Exception as exc:
                log.warning("notify: lost the database (%s); reconnecting", str(exc).strip())
                self._close()
                self.dropped += 1
        self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection: nothing to save
                log.debug("notify: closing the connection failed", exc_info=True)
