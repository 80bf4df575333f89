"""Scale-out coordination: jobs/s with 1, 2, 4 and 8 worker nodes sharing one PostgreSQL, and
how long a node waits for its claim.

Issue 20's goal: throughput at least 0.9 × N times one node's, up to 8 nodes, and claim latency
p99 ≤ 50 ms. The generator is a stand-in of fixed duration (`--job-s`, 100 ms: a sleep, which
needs no CPU, so 8 nodes fit on 2 cores), so what is measured is the coordination, not compute.
Everything else is real:

- a throwaway PostgreSQL server, started as `tests/postgres.py` starts one but with `fsync`
  on, as in production (`--no-fsync` turns it off, as the tests run it);
- the real schema: a fresh database per run, built by the Alembic migrations (`Database.migrate`);
- jobs enqueued with `JobQueue.enqueue`;
- N separate OS processes ("nodes"), each with its own engine and connection pool, each looping
  as `DeviceWorker.run` does: `JobQueue.claim` (one conditional UPDATE … RETURNING), the
  stand-in generator, then `JobQueue.succeed` with one image row (the job's last write).
  A claim that finds nothing while jobs still wait (it lost the race three times: see
  `JobQueue.claim`) waits `--poll-s` (1 s, the worker's default `DALI_POLL_S`), as a worker
  does; these are counted as "misses".

Claim statements compared (`--claims`):

  update       `JobQueue.claim` as it was before session 8 (`UpdateQueue`): UPDATE … WHERE
               id = (oldest queued) AND status = 'queued' RETURNING; a node that loses the
               row to another finds 0 rows and looks again (up to 3 times).
  skip-locked  `JobQueue.claim` as it is: the same UPDATE whose subquery says FOR UPDATE SKIP
               LOCKED, so a row another node is claiming is passed over instead of waited
               for and lost. SQLite ignores the clause. Chosen by these figures.

Measured per claim statement and N: jobs/s (jobs ÷ time from the start signal to the last
job's `succeed`), the efficiency against N × one node's jobs/s, the claim latency (the whole
`claim` call: its transaction, retries included; misses included, the final empty look of
each node not) p50/p99/max, the races lost (claim statements that found their row taken by
another node: `JobQueue.claim` retries those within its call), the misses, and the machine's
load average. Every run checks that each job ran exactly once
and ended `succeeded`. Not a test (figures go to docs/benchmarks.md, "Scale-out
coordination"); tests/benchmarks/test_scale_out.py runs its core with 2 nodes so it keeps
working.

    python benchmarks/scale_out.py                          # 1 2 4 8 nodes, both claims
    python benchmarks/scale_out.py --nodes 8 --repeats 3 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue as queue_module
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, event, func, select, text, update  # noqa: E402

from stable_diffusion_api.db import Database  # noqa: E402
from stable_diffusion_api.models import QUEUED, RUNNING, Generation, Project, utcnow  # noqa: E402
from stable_diffusion_api.services.job_queue import (  # noqa: E402
    _CLAIM,
    GENERATIONS,
    PROJECTS,
    JobQueue,
    _transient,
)
from tests.postgres import PostgresServer, postgres_server, server_binaries  # noqa: E402

T = TypeVar("T")
DEVICE = "cuda:0"  # every node serves the same device, as GPU nodes of one pool do
WARM_UP_DEVICE = "warm-up"  # no job is queued there: claims on it compile, and find nothing
CLAIMS = ("update", "skip-locked")
GOAL_EFFICIENCY = 0.9
GOAL_CLAIM_P99_S = 0.050

# The claim JobQueue used before session 8, for comparison: the same UPDATE without FOR UPDATE
# SKIP LOCKED on its subquery, so a node that loses its row to another finds 0 rows and looks
# again (up to 3 times). JobQueue's own claim (`_CLAIM`) now passes over rows being claimed.
_UPDATE_OLDEST = (
    select(GENERATIONS.c.id)
    .where(GENERATIONS.c.status == QUEUED, GENERATIONS.c.device == bindparam("on_device"))
    .order_by(GENERATIONS.c.id)
    .limit(1)
)
_UPDATE_CLAIM = (
    update(GENERATIONS)
    .where(GENERATIONS.c.id == _UPDATE_OLDEST.scalar_subquery(), GENERATIONS.c.status == QUEUED)
    .values(status=RUNNING, worker_id=bindparam("owner"), started_at=bindparam("now"))
    .returning(
        *GENERATIONS.c,
        select(PROJECTS.c.name)
        .where(PROJECTS.c.id == GENERATIONS.c.project_id)
        .scalar_subquery()
        .label("project_name"),
    )
)
CLAIM_STATEMENTS = (_UPDATE_CLAIM, _CLAIM)
_ANY_QUEUED = select(func.count()).where(GENERATIONS.c.status == QUEUED)


class UpdateQueue(JobQueue):
    """`JobQueue` with the claim it had before session 8 (benchmark only)."""

    def claim(self, device: str, owner: str) -> tuple[Generation, str] | None:  # type: ignore[override]
        values = {"on_device": device, "owner": owner}
        with self._db.begin() as connection:
            for _ in range(3):  # another node may win the row between the two
                row = connection.execute(_UPDATE_CLAIM, values | {"now": utcnow()}).first()
                if row is not None:
                    return _transient(Generation, GENERATIONS, row), row.project_name or ""
                if connection.execute(_UPDATE_OLDEST, values).first() is None:
                    return None
        return None


def make_queue(db: Database, claim: str) -> JobQueue:
    """ "skip-locked": the queue's own claim; "update": the one it had before."""
    if claim not in CLAIMS:
        raise ValueError(f"claim must be one of {', '.join(CLAIMS)}, not {claim!r}")
    return UpdateQueue(db) if claim == "update" else JobQueue(db)


class StandInGenerator:
    """A generator of fixed duration: sleeps `seconds` (no CPU) and returns one image row to
    insert, as the real worker's `_save` does after writing the PNG."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def generate(self, row: Generation) -> list[dict[str, Any]]:
        time.sleep(self.seconds)
        return [
            {
                "generation_id": row.id,
                "project_id": row.project_id,
                "index": 0,
                "seed": row.seed,
                "path": f"images/{row.project_id}/{row.id}-0.png",
                "thumb_path": f"thumbs/{row.project_id}/{row.id}-0.webp",
                "width": 512,
                "height": 512,
                "parameters": row.prompt,
            }
        ]


class EmptyClaims:
    """Counts the claim UPDATEs run on `engine` that changed no row: another node had the row
    (or, at the end, nothing waited). `JobQueue.claim` retries such a loss inside its call, so
    only the statements show it."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        event.listen(engine, "after_cursor_execute", self._seen)

    def _seen(
        self, _conn: Any, cursor: Any, _sql: str, _params: Any, context: Any, _many: bool
    ) -> None:
        compiled = getattr(context, "compiled", None)
        if compiled is not None and compiled.statement in CLAIM_STATEMENTS and cursor.rowcount == 0:
            self.count += 1


@dataclass
class NodeReport:
    """What one node did: the jobs it ran (id, when its `succeed` returned, monotonic clock),
    the latency of each claim call, how many claims found nothing while jobs waited (misses),
    and how many claim statements changed no row while jobs waited (races lost)."""

    name: str
    jobs: list[tuple[int, float]] = field(default_factory=list)
    claim_s: list[float] = field(default_factory=list)
    misses: int = 0
    lost: int = 0  # claim UPDATEs that found their row taken by another node
    error: str | None = None


def node_main(
    url: str,
    name: str,
    claim: str,
    job_s: float,
    poll_s: float,
    ready: Any,
    go: Any,
    reports: Any,
) -> None:
    """One worker node (a process of its own): claim, generate, succeed until no job waits."""
    report = NodeReport(name)
    db = Database(url)
    try:
        queue = make_queue(db, claim)
        empty = EmptyClaims(db.engine)
        generator = StandInGenerator(job_s)
        # Warm up as a long-running worker is: a pooled connection open, and the statements
        # compiled (SQLAlchemy caches them per process; the first use costs ~10 ms more).
        if queue.claim(WARM_UP_DEVICE, name) is not None:
            raise RuntimeError(f"a job waits on {WARM_UP_DEVICE}, which serves only warm-ups")
        queue.succeed(0, name, {"finished_at": utcnow(), "step_seconds": job_s}, [])  # no row 0
        with db.connect() as connection:
            connection.execute(_ANY_QUEUED)
        ready.release()
        go.wait()
        while True:
            start, empty_before = time.monotonic(), empty.count
            claimed = queue.claim(DEVICE, name)
            took = time.monotonic() - start
            if claimed is None:
                with db.connect() as connection:
                    if not connection.execute(_ANY_QUEUED).scalar_one():
                        break  # the queue is empty: this node is done
                report.lost += empty.count - empty_before
                report.claim_s.append(took)
                report.misses += 1
                time.sleep(poll_s)  # as DeviceWorker.run waits after an empty claim
                continue
            report.lost += empty.count - empty_before
            report.claim_s.append(took)
            row, _project = claimed
            images = generator.generate(row)
            columns = {"finished_at": utcnow(), "step_seconds": job_s}
            if queue.succeed(row.id, name, columns, images) is None:
                raise RuntimeError(f"job {row.id} was no longer {name}'s at its end")
            report.jobs.append((row.id, time.monotonic()))
    except Exception as exc:  # reported to the parent, which fails the run
        report.error = f"{type(exc).__name__}: {exc}"
        ready.release()
    finally:
        db.dispose()
        reports.put(report)


@dataclass(frozen=True)
class RunResult:
    """One run: `nodes` nodes, `jobs` jobs of `job_s` each, with claim statement `claim`."""

    claim: str
    nodes: int
    jobs: int
    job_s: float
    seconds: float  # start signal → last job's succeed
    jobs_per_s: float
    claim_p50_ms: float
    claim_p99_ms: float
    claim_max_ms: float
    claims: int
    misses: int
    lost: int  # claim statements that lost their row to another node
    load_1min: float  # the machine's load average at the run's end
    per_node: list[int]  # jobs each node ran

    @property
    def ideal_jobs_per_s(self) -> float:
        return self.nodes / self.job_s


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0…1) by linear interpolation; values need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def prepare(url: str, jobs: int) -> list[int]:
    """Migrate the empty database at `url`, add a project and enqueue `jobs` jobs with the real
    `JobQueue.enqueue`. Their ids."""
    db = Database(url)
    try:
        db.migrate()
        with db.session() as session:
            session.add(Project(id=1, name="scale-out", device=DEVICE))
        queue = JobQueue(db)
        ids = []
        for i in range(jobs):
            values = {"project_id": 1, "device": DEVICE, "dtype": "float16", "model": "dali-tiny",
                      "prompt": f"job {i}", "steps": 20, "guidance": 7.5, "seed": i}  # fmt: skip
            queued = queue.enqueue(values, queue_limit=jobs + 1)
            if queued is None:
                raise RuntimeError("the queue refused a job")
            ids.append(queued.id)
        return ids
    finally:
        db.dispose()


def check_every_job_ran_once(url: str, ids: list[int], reports: list[NodeReport]) -> None:
    """Every job ran on exactly one node and its row says succeeded, by that node."""
    ran = [job_id for report in reports for job_id, _ in report.jobs]
    if sorted(ran) != sorted(ids):
        twice = sorted({i for i in ran if ran.count(i) > 1})
        missing = sorted(set(ids) - set(ran))
        raise AssertionError(f"jobs run twice: {twice}; jobs never run: {missing}")
    owner = {job_id: report.name for report in reports for job_id, _ in report.jobs}
    db = Database(url)
    try:
        with db.connect() as connection:
            rows = connection.execute(
                select(GENERATIONS.c.id, GENERATIONS.c.status, GENERATIONS.c.worker_id)
            ).all()
    finally:
        db.dispose()
    wrong = [r for r in rows if r.status != "succeeded" or r.worker_id != owner.get(r.id)]
    if wrong:
        raise AssertionError(f"rows not succeeded by the node that ran them: {wrong[:5]}")


def _get(reports: Any) -> NodeReport | None:
    try:
        report: NodeReport = reports.get(timeout=0.2)
    except queue_module.Empty:
        return None
    return report


def _wait_for(look: Callable[[], T | None], processes: list[Any], what: str, limit_s: float) -> T:
    """What `look` finds, asked again until it finds something; RuntimeError when a node
    process died without a word (an import failed, it was killed) or after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = look()
        if found is not None and found is not False:
            return found
        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"a node process died (exit codes {dead}) before its {what}")
    raise RuntimeError(f"no node {what} within {limit_s:.0f} s")


def run_nodes(
    url: str,
    nodes: int,
    jobs: int,
    job_s: float = 0.1,
    claim: str = "update",
    poll_s: float = 1.0,
    start_method: str = "spawn",
) -> RunResult:
    """Enqueue `jobs` jobs in the fresh database at `url`, run them on `nodes` node processes,
    check each ran once, and measure."""
    if nodes < 1 or jobs < 1:
        raise ValueError(f"nodes and jobs must be at least 1, not {nodes} and {jobs}")
    if claim not in CLAIMS:
        raise ValueError(f"claim must be one of {', '.join(CLAIMS)}, not {claim!r}")
    ids = prepare(url, jobs)
    # Each node a process of its own; "spawn" shares nothing but the database, "fork" starts
    # faster (the test's choice: the parent's engine is disposed before, so nothing leaks).
    context = multiprocessing.get_context(start_method)
    ready, go, reports = context.Semaphore(0), context.Event(), context.Queue()
    processes = [
        context.Process(
            target=node_main,
            args=(url, f"node-{i}", claim, job_s, poll_s, ready, go, reports),
            daemon=True,
        )
        for i in range(nodes)
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            _wait_for(lambda: ready.acquire(timeout=0.2), processes, "start", 120)
        started = time.monotonic()
        go.set()
        results: list[NodeReport] = []
        for _ in processes:
            results.append(_wait_for(lambda: _get(reports), processes, "report", 600))
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    errors = [f"{r.name}: {r.error}" for r in results if r.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    check_every_job_ran_once(url, ids, results)
    finished = max(at for report in results for _, at in report.jobs)
    claim_s = [s for report in results for s in report.claim_s]
    seconds = finished - started
    return RunResult(
        claim=claim,
        nodes=nodes,
        jobs=jobs,
        job_s=job_s,
        seconds=seconds,
        jobs_per_s=jobs / seconds,
        claim_p50_ms=1000 * percentile(claim_s, 0.5),
        claim_p99_ms=1000 * percentile(claim_s, 0.99),
        claim_max_ms=1000 * max(claim_s),
        claims=len(claim_s),
        misses=sum(report.misses for report in results),
        lost=sum(report.lost for report in results),
        load_1min=os.getloadavg()[0],
        per_node=sorted((len(report.jobs) for report in results), reverse=True),
    )


def machine() -> dict[str, Any]:
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "load_1min": os.getloadavg()[0],
            "python": platform.python_version(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip


@contextmanager
def postgres(fsync: bool) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (tests/postgres.py's), with `fsync` as asked: the tests
    turn it off; production keeps it on, and a commit then waits for the disk."""
    binaries = server_binaries()
    if binaries is None:
        sys.exit("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    with postgres_server(binaries, fsync=fsync) as server:
        yield server


def server_facts(url: str) -> dict[str, Any]:
    """The server's version and the settings that bear on a commit's cost."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            names = ("server_version", "fsync", "synchronous_commit", "max_connections")
            return {name: connection.execute(text(f"SHOW {name}")).scalar_one() for name in names}
    finally:
        engine.dispose()


def table(results: list[RunResult]) -> str:
    """A Markdown table of `results`, efficiency against the same claim's 1-node median."""
    single: dict[str, float] = {}
    for claim in {r.claim for r in results}:
        ones = [r.jobs_per_s for r in results if r.claim == claim and r.nodes == 1]
        if ones:
            single[claim] = statistics.median(ones)
    lines = [
        "| claim | nodes | jobs | jobs/s | ideal | efficiency vs N × 1 node | claim p50 | "
        "claim p99 | claim max | races lost | misses | jobs per node | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        efficiency = r.jobs_per_s / (r.nodes * single[r.claim]) if r.claim in single else None
        shown = f"{efficiency:.3f}" if efficiency is not None else "–"
        lines.append(
            f"| {r.claim} | {r.nodes} | {r.jobs} | {r.jobs_per_s:.2f} | {r.ideal_jobs_per_s:.1f} "
            f"| {shown} | {r.claim_p50_ms:.1f} ms | {r.claim_p99_ms:.1f} ms "
            f"| {r.claim_max_ms:.1f} ms | {r.lost} | {r.misses} "
            f"| {'/'.join(map(str, r.per_node))} | {r.load_1min:.1f} |"
        )
    return "\n".join(lines)


def summary(results: list[RunResult]) -> str:
    """A Markdown table with one line per claim statement and N over the repeated runs: the
    median jobs/s (and its range), the efficiency against N × the median of one node's, the
    medians of the claim p50 and p99 (and the worst p99), the races lost per claim, every miss,
    and the load averages seen."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.claim, r.nodes), []).append(r)
    lines = [
        "| claim | nodes | runs | jobs/s (range) | ideal | efficiency vs N × 1 node | "
        "claim p50 | claim p99 (worst) | races lost per claim | misses | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (claim, nodes), runs in groups.items():
        rate = statistics.median(r.jobs_per_s for r in runs)
        single = groups.get((claim, 1))
        efficiency = (
            f"{rate / (nodes * statistics.median(r.jobs_per_s for r in single)):.2f}"
            if single
            else "–"
        )
        low, high = min(r.jobs_per_s for r in runs), max(r.jobs_per_s for r in runs)
        p99 = statistics.median(r.claim_p99_ms for r in runs)
        lost = sum(r.lost for r in runs) / sum(r.claims for r in runs)
        loads = [r.load_1min for r in runs]
        lines.append(
            f"| {claim} | {nodes} | {len(runs)} | {rate:.1f} ({low:.1f}–{high:.1f}) "
            f"| {nodes / runs[0].job_s:.0f} | {efficiency} "
            f"| {statistics.median(r.claim_p50_ms for r in runs):.1f} ms "
            f"| {p99:.0f} ms ({max(r.claim_p99_ms for r in runs):.0f} ms) | {lost:.2f} "
            f"| {sum(r.misses for r in runs)} | {min(loads):.0f}–{max(loads):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--claims", nargs="+", choices=CLAIMS, default=list(CLAIMS))
    parser.add_argument("--jobs-per-node", type=int, default=40)
    parser.add_argument("--job-s", type=float, default=0.1, help="the stand-in's duration")
    parser.add_argument("--poll-s", type=float, default=1.0, help="wait after an empty claim")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-fsync", action="store_true", help="leave fsync off (as tests)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--summarize", type=Path, help="only print the tables of a --json file")
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        runs = [RunResult(**run) for run in saved["runs"]]
        print(table(runs), summary(runs), json.dumps(saved["machine"]), sep="\n\n")
        return
    # A stop (kill, timeout) unwinds like Ctrl+C, so the server is stopped and its folder gone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))

    facts = machine()
    results: list[RunResult] = []
    with postgres(fsync=not args.no_fsync) as server:
        facts.update(server_facts(server.url("postgres")))
        print(json.dumps(facts), flush=True)
        for _ in range(args.repeats):
            for claim in args.claims:
                for nodes in args.nodes:
                    result = run_nodes(server.new_database(), nodes, nodes * args.jobs_per_node,
                                       args.job_s, claim, args.poll_s)  # fmt: skip
                    results.append(result)
                    print(json.dumps(asdict(result)), flush=True)
    facts["load_1min_after"] = os.getloadavg()[0]
    print(table(results), summary(results), json.dumps(facts), sep="\n\n")
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "runs": [asdict(r) for r in results]},
                                        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
