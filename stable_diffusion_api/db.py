"""The database: a SQLAlchemy 2.0 engine, its sessions, and Alembic migrations at start-up.

A database that cannot do the work asked of it — its file gone or read-only, its disk full, its
server unreachable — raises `DatabaseUnavailable` (503, saying why) from `session`, `begin` and
`connect`, never the driver's error: the transaction is rolled back and its connection goes back
to the pool clean, so the next request works as soon as the database does. The last refusal is
remembered (`problems`, for /health) until a write goes through again (`writes_work`).

SQLite is the default. Each new SQLite connection turns on foreign keys (off by default in
SQLite, and cascading deletes rely on them), WAL journaling (readers never block the worker's
writes, synced at checkpoints) and a busy timeout (two writers wait for each other instead of failing at once). For any
other URL, PostgreSQL included, the engine is used as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stable_diffusion_api.errors import DomainError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the process loses
    # nothing, a power cut at most the last commits (recovery then removes image files no row
    # points at). FULL, the default, costs an fsync per commit — several per generation.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their parent directory created and the pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # Sessions are used from request threads and worker threads alike.
        connect_args={"check_same_thread": False, "timeout": 10},
        # Many concurrent readers (the pages poll, SSE streams) on one file: a roomy pool.
        pool_size=20,
        max_overflow=20,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class DatabaseUnavailable(DomainError):
    """The database cannot do the work now: the SQLite file went away or turned read-only while
    the studio ran (a write would vanish with the deleted file, or fail half-way), or the
    database refused it (disk full, I/O error, locked too long, server gone). `reason` says
    which, without the advice the message adds."""

    status_code = 503

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: nothing can be saved; see the server log")
        self.reason = reason


def refusal(exc: OperationalError) -> str | None:
    """Why the database refused, when `exc` says it cannot do the work now (full, read-only,
    I/O error, locked, unreachable); None when the statement itself is at fault (SQLite's
    generic SQLITE_ERROR: no such table, a syntax error), which is a bug, not an outage."""
    if getattr(exc.orig, "sqlite_errorname", None) == "SQLITE_ERROR":
        return None
    return f"the database refused it ({str(exc.orig).strip() or type(exc.orig).__name__})"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for any other database (or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


class Database:
    """An engine plus its session factory. One per application."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._file = sqlite_file(url)
        self._refused: str | None = None  # the last refusal, until a write goes through

    def problem(self) -> str | None:
        """Why the database cannot take writes now, or None. For a SQLite file: it must still
        exist (an open connection would go on writing into a deleted file, and the next start
        would find none of it) and be writable. Costs two stat calls."""
        if self._file is None:
            return None
        if not self._file.exists():
            return "the database file is gone (deleted or moved while the studio ran)"
        # The mode bits too: root may write whatever the mode says, but a file set read-only
        # means someone wants no writes (a read-only file system fails os.access for root).
        if not os.access(self._file, os.W_OK) or not self._file.stat().st_mode & 0o222:
            return "the database file has become read-only"
        return None

    def problems(self) -> list[str]:
        """What keeps the studio from saving its work now, for /health: `problem()`, and the
        last refusal of the database until a write has gone through since."""
        return [p for p in (self.problem(), self._refused) if p is not None]

    def require_writes(self) -> None:
        """DatabaseUnavailable while `problems()` has something to say. For the changes that
        would otherwise answer as if all were well: a job whose end the database refused still
        reads `running`, so a cancel would flag it for nobody and a delete call it busy."""
        problems = self.problems()
        if problems:
            raise DatabaseUnavailable(problems[0])

    def writes_work(self) -> None:
        """A write has just gone through (the heartbeat's): the last refusal is over."""
        self._refused = None

    def _check(self) -> None:
        problem = self.problem()
        if problem is not None:
            log.error("%s: %s; nothing can be saved until it is back", self._file, problem)
            raise DatabaseUnavailable(problem)

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """The driver's "cannot do it now" (OperationalError) as DatabaseUnavailable, raised
        after the transaction inside has been rolled back and its connection returned."""
        try:
            yield
        except OperationalError as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            log.error("database: %s; the transaction was rolled back", reason)
            self._refused = reason
            raise DatabaseUnavailable(reason) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back otherwise.
        DatabaseUnavailable when the file is gone or read-only (see `problem`), or when the
        database refuses the work (disk full, …)."""
        self._check()
        with self._refusals(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction (Core statements), committed when the block ends
        normally; DatabaseUnavailable as for `session`."""
        self._check()
        with self._refusals(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (no transaction is committed; nothing is checked first);
        DatabaseUnavailable when the database refuses them."""
        with self._refusals(), self.engine.connect() as connection:
            yield connection

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision` with Alembic (idempotent; safe at every start-up)."""
        from alembic import command

        with self.engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self.engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(connection: Any = None) -> Any:
    """An Alembic Config pointing at this package's migrations (no alembic.ini needed).

    With `connection`, migrations run on it (see migrations/env.py); the URL is never parsed
    from a file, so the same code serves SQLite and PostgreSQL.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config
