"""Make the repository root importable (`sd_core`, `tests.reference`) however pytest is started,
and run torch single-threaded.

The suite runs on 2 cores next to the servers it starts (uvicorn, Gradio); with several
processes each spinning up OpenMP workers, small tensor ops got 10-30x slower than with one
thread each (measured: a 4-step tiny generation took 17 s with 2 threads under load, 0.5 s with
1). Tests check results, not speed, so one thread per process is the robust choice.

Markers: a plain `pytest` is the fast run; it leaves out the tests marked `slow`, `server`
(real uvicorn or Gradio processes), `browser` and `postgres` (see pyproject.toml). `./test.sh`,
and so CI, runs every test. A test that uses the `postgres` fixture is marked `postgres` here,
so no such test can be forgotten.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL server for the whole session (tests/postgres.py). Only tests
    marked `postgres` use it, and a plain `pytest` leaves them out: asked for (./test.sh, CI),
    a missing server is a failure, not a skip."""
    from tests.postgres import postgres_server, server_binaries

    binaries = server_binaries()
    if binaries is None:
        pytest.fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    with postgres_server(binaries) as server:
        yield server


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session, for the app fixtures to copy
    (tests/migrated.py says why)."""
    from tests.migrated import migrated_database_file

    return migrated_database_file(tmp_path_factory.mktemp("migrated"))
