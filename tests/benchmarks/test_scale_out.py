"""`benchmarks/scale_out.py`'s core, small enough for every CI run: two node processes share a
throwaway PostgreSQL and run a few stand-in jobs through the real queue, with each of the two
claim statements, so the benchmark cannot rot between the times its figures are remade."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scale_out import (
    DEVICE,
    EmptyClaims,
    NodeReport,
    check_every_job_ran_once,
    make_queue,
    percentile,
    prepare,
    run_nodes,
)
from stable_diffusion_api.db import Database
from tests.postgres import PostgresServer


@pytest.mark.postgres
@pytest.mark.parametrize("claim", ["update", "skip-locked"])
def test_two_nodes_run_every_job_once_and_are_measured(
    postgres: PostgresServer, claim: str
) -> None:
    url = postgres.new_database()
    result = run_nodes(url, nodes=2, jobs=6, job_s=0.05, claim=claim, poll_s=0.05,
                       start_method="fork")  # fmt: skip
    assert (result.claim, result.nodes, result.jobs) == (claim, 2, 6)
    # run_nodes checked the rows: each job succeeded once, by the node that claimed it.
    assert sum(result.per_node) == 6 and min(result.per_node) >= 1  # both nodes took work
    assert result.claims >= 6 and result.misses == result.claims - 6
    assert result.lost >= result.misses  # a miss is a claim whose every statement lost
    # Six jobs of 50 ms on two nodes cannot take less than 150 ms.
    assert result.seconds >= 0.15 and result.jobs_per_s == pytest.approx(6 / result.seconds)
    assert 0 < result.claim_p50_ms <= result.claim_p99_ms <= result.claim_max_ms


@pytest.mark.postgres
@pytest.mark.parametrize("claim", ["update", "skip-locked"])
def test_a_claim_statement_that_changes_no_row_is_counted(
    postgres: PostgresServer, claim: str
) -> None:
    url = postgres.new_database()
    (job,) = prepare(url, jobs=1)
    db = Database(url)
    try:
        queue, empty = make_queue(db, claim), EmptyClaims(db.engine)
        claimed = queue.claim(DEVICE, "node-0")
        assert claimed is not None and claimed[0].id == job and empty.count == 0
        assert queue.claim(DEVICE, "node-1") is None and empty.count == 1  # nothing left
        queue.succeed(job, "node-0", {}, [])  # another UPDATE of the row: not a claim
        assert empty.count == 1
    finally:
        db.dispose()


def test_a_job_run_twice_or_never_fails_the_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dali.db'}"
    first, second = prepare(url, jobs=2)
    twice = [NodeReport("node-0", [(first, 1.0)]), NodeReport("node-1", [(first, 1.1)])]
    with pytest.raises(AssertionError, match=rf"run twice: \[{first}\]; .*never run: \[{second}\]"):
        check_every_job_ran_once(url, [first, second], twice)
    # Each ran once, but the rows still say queued: not the work of a node.
    once = [NodeReport("node-0", [(first, 1.0)]), NodeReport("node-1", [(second, 1.1)])]
    with pytest.raises(AssertionError, match="not succeeded"):
        check_every_job_ran_once(url, [first, second], once)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert (percentile(values, 0.5), percentile(values, 0.0), percentile(values, 1.0)) == (3, 1, 5)
    assert percentile(values, 0.99) == pytest.approx(4.96)
    with pytest.raises(ValueError):
        percentile([], 0.5)
