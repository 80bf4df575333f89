"""Which queued jobs a worker's claim may take: the selections `JobQueue`'s claims are built on.

A claim takes the oldest queued job asking for one of the worker's device forms ("gpu-b/cuda:0",
"cuda:0", "cuda", "auto") and, for a node that lists its models, whose model it holds by name or
hash (`HELD`); a batch claim takes that job and the younger ones that match it (`batch_of`).
Everything here only selects and locks rows: changing their status is `JobQueue`'s alone
(services/job_queue.py; tests/api/test_job_state_owner.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import CTE, Select, Table, Text, and_, bindparam, cast, or_, select

from stable_diffusion_api.models import QUEUED, Base

GENERATIONS: Table = Base.metadata.tables["generations"]

FITS = GENERATIONS.c.device.in_(bindparam("device_forms", expanding=True))
HELD = GENERATIONS.c.model.in_(bindparam("model_names", expanding=True)) | (
    GENERATIONS.c.model_hash.in_(bindparam("model_hashes", expanding=True))
)


def oldest_queued(*conditions: Any) -> Select[Any]:
    """The oldest queued job meeting `conditions`. FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite,
    one writer at a time, leaves it out): a row another worker is claiming is passed over, not
    waited for and then lost, so nodes claiming at once take different rows
    (benchmarks/scale_out.py: no lost races, and 0.91 of N × one node's jobs/s at 8 nodes on
    a busy machine, against 0.83 without; docs/benchmarks.md)."""
    return (
        select(GENERATIONS.c.id)
        .where(GENERATIONS.c.status == QUEUED, *conditions)
        .order_by(GENERATIONS.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


OLDEST_QUEUED = oldest_queued(FITS)
OLDEST_QUEUED_HELD = oldest_queued(FITS, HELD)

# What jobs claimed together must share with the oldest (services/device_worker.py runs them
# in one denoising loop, sd_core/batched.py): the model on the same hardware, size, sampler,
# steps, and every other setting kept in `extra_params` (scheduler, eta, VAE, tiling, hires,
# clip skip, …; compared as text, which works on SQLite and PostgreSQL alike); no input image.
# Prompt, negative prompt, seed, guidance, batch and variation seed are each job's own.
BATCH_COLUMNS = ("model", "dtype", "low_memory", "width", "height", "sampler", "steps")
_FIRST, _OTHER = GENERATIONS.alias("first_job"), GENERATIONS.alias("other_job")


def batch_of(oldest: Select[Any]) -> CTE:
    """The ids of up to `most` (a bound parameter) queued jobs to run together: `oldest`'s job
    and the younger ones on its device that match it, oldest first."""
    return (
        select(_OTHER.c.id)
        .select_from(_OTHER.join(_FIRST, _FIRST.c.id == oldest.scalar_subquery().correlate(None)))
        .where(
            _OTHER.c.status == QUEUED,
            _OTHER.c.device == _FIRST.c.device,
            or_(
                _OTHER.c.id == _FIRST.c.id,
                and_(
                    _FIRST.c.init_image.is_(None),
                    _FIRST.c.mask.is_(None),
                    _OTHER.c.init_image.is_(None),
                    _OTHER.c.mask.is_(None),
                    cast(_OTHER.c.extra_params, Text).is_not_distinct_from(
                        cast(_FIRST.c.extra_params, Text)
                    ),
                    *(
                        _OTHER.c[name].is_not_distinct_from(_FIRST.c[name])
                        for name in BATCH_COLUMNS
                    ),
                ),
            ),
        )
        .order_by(_OTHER.c.id)
        .limit(bindparam("most"))
        .correlate(None)
        # The younger jobs are locked as the first one is, passing over rows another worker
        # holds: waiting for them instead let two batch claims each lock a row the other
        # wanted next — a deadlock PostgreSQL broke by failing one claim.
        .with_for_update(of=_OTHER, skip_locked=True)
        # A CTE, run once: as an IN (…) sub-select PostgreSQL may run it again per row, and
        # then it returned more rows than its LIMIT.
        .cte("batch")
    )


def claim_values(
    device: str | Collection[str],
    owner: str,
    models: tuple[Collection[str], Collection[str]] | None,
    node: str | None,
) -> tuple[dict[str, Any], bool]:
    """A claim's parameters, and whether it is limited to the models a node holds (`HELD`)."""
    forms = [device] if isinstance(device, str) else list(device)
    values: dict[str, Any] = {"device_forms": forms, "owner": owner, "node_name": node}
    if models is None:
        return values, False
    names, hashes = models
    return values | {"model_names": list(names), "model_hashes": list(hashes)}, True
