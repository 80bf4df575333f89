"""`NotifyListener`: one dedicated PostgreSQL connection that LISTENs on some channels and hands
every notification to a function, from a thread of its own.

The thread waits for notifications at most `WAIT_S` at a time, so `stop()` is heard within
that. When the connection is lost (the server restarted, the backend terminated, the network
gone) it reconnects — at once the first time, then after 0.5 s, doubling up to
`pg_sender.MAX_BACKOFF_S` — and LISTENs again; what was notified meanwhile is lost (NOTIFY
keeps nothing for a session that is not listening), and the next report brings the news up to
date. `connected` is set while it listens (tests wait on it); `connections` counts the
connections made. A handler that raises is logged and the listener goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stable_diffusion_api.services.pg_sender import MAX_BACKOFF_S, MIN_BACKOFF_S, connect

log = logging.getLogger(__name__)

WAIT_S = 0.5
# With no notification for this long, ask the server something: a connection that died
# quietly is noticed then, not only when the operating system gives up on it.
CHECK_EVERY_S = 5.0

Handler = Callable[[str, str], None]  # (channel, payload)


class NotifyListener:
    def __init__(
        self, conninfo: str, channels: Sequence[str], handler: Handler, name: str = "dali-listen"
    ) -> None:
        self._conninfo = conninfo
        self._channels = tuple(channels)
        self._handler = handler
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connected = threading.Event()
        self.connections = 0
        self.backend_pid: int | None = None  # of the listening connection (tests end it)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.0  # before the next connection; none after a connection that listened
        while not self._stopping.wait(backoff):
            try:
                connection = connect(self._conninfo)
            except Exception as exc:
                backoff = min(max(backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
                log.warning("listen: cannot reach the database (%s); again in %.1f s",
                            str(exc).strip(), backoff)  # fmt: skip
                continue
            self.connections += 1
            try:
                self._listen(connection)
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("listen: lost the database (%s); reconnecting", str(exc).strip())
                listened = self.connected.is_set()
                backoff = 0.0 if listened else min(max(backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
            finally:
                self.connected.clear()
                try:
                    connection.close()
                except Exception:
                    log.debug("listen: closing the connection failed", exc_info=True)

    def _listen(self, connection: Any) -> None:
        from psycopg import sql

        for channel in self._channels:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.backend_pid = connection.info.backend_pid
        self.connected.set()
        quiet = 0.0
        while not self._stopping.is_set():
            heard = False
            for notify in connection.notifies(timeout=WAIT_S):
                heard = True
                try:
                    self._handler(notify.channel, notify.payload)
                except Exception:
                    log.exception("listen: a %s notification could not be handled",
                                  notify.channel)  # fmt: skip
                if self._stopping.is_set():
                    return
            quiet = 0.0 if heard else quiet + WAIT_S
            if quiet >= CHECK_EVERY_S:
                connection.execute("SELECT 1")
                quiet = 0.0
