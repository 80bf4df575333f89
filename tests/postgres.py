"""A throwaway PostgreSQL server for the tests that check "the database URL can point at
PostgreSQL unchanged": `initdb` into a temporary folder, `postgres` on a Unix socket there (no
TCP port), one fresh database per test. PostgreSQL refuses to run as root, so under root the
server runs as `nobody`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_binaries() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    def __init__(self, socket_dir: Path, user: str) -> None:
        self.socket_dir, self.user = socket_dir, user

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        from sqlalchemy import create_engine, text

        name = f"dali_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


@contextmanager
def postgres_server(binaries: Path, fsync: bool = False) -> Iterator[PostgresServer]:
    """The server, stopped and removed on the way out. `fsync` off (tests: nothing to keep);
    benchmarks/scale_out.py turns it on, as production runs it."""
    root = Path(tempfile.mkdtemp(prefix="dali-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        prefix = ["runuser", "-u", "nobody", "--"]
    data, log = root / "data", root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed:\n{done.stdout}{done.stderr}{server_log}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "dali", "--auth=trust", "-E", "UTF8")
        options = f"-k {root} -c listen_addresses='' -c fsync={'on' if fsync else 'off'}"
        run(str(binaries / "pg_ctl"), "start", "-w", "-D", str(data), "-o", options, "-l", str(log))
        try:
            yield PostgresServer(root, "dali")
        finally:
            run(str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "fast")
    finally:
        shutil.rmtree(root, ignore_errors=True)
