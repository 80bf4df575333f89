"""Measured hardware speed, and the time estimates built on it.

A measurement is the sampling speed (steps per second for one image) and the fixed cost around
sampling (text encoding, decoding, saving) of one model at one size on one device and dtype.
Benchmarks on demand write them, and so does every finished single-image generation, so the
numbers follow the machine as it is (other load, thermal limits). A size never measured is
estimated from the nearest measured one, scaled by pixel count (the UNet's work grows about
linearly with the number of latent pixels at SD sizes), and the estimate says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import SpeedMeasurement, utcnow

# A generation's measurement is first held within ×/÷ `MAX_JUMP` of the kept one, then
# `NEW_WEIGHT` of it goes in: one run 780× slower than usual (the machine busy for a moment)
# moves the estimate by 4^0.3 ≈ 1.5×, not 780×; a lasting change takes over within ten runs.
MAX_JUMP = 4.0
NEW_WEIGHT = 0.3


def blend(kept: float, new: float) -> float:
    """A new measurement (a rate or a duration) blended into the kept one, geometrically."""
    if kept <= 0 or new <= 0:
        return new
    new = min(max(new, kept / MAX_JUMP), kept * MAX_JUMP)
    return float(math.exp((1 - NEW_WEIGHT) * math.log(kept) + NEW_WEIGHT * math.log(new)))


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str


class SpeedService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        device: str,
        model_hash: str,
        dtype: str | None,
        width: int,
        height: int,
        steps_per_s: float,
        overhead_s: float,
        source: str,
    ) -> None:
        """Keep this measurement. A benchmark (asked for) replaces the last one of the same
        key; a generation's is blended into it (`blend`), so one run slowed by other work moves
        the estimate by a little, not by the whole slowdown."""
        key = dict(
            device=device, model_hash=model_hash, dtype=dtype or "auto", width=width, height=height
        )
        overhead_s = max(0.0, overhead_s)
        with self._db.session() as session:
            last = session.scalars(select(SpeedMeasurement).filter_by(**key)).first()
            if last is not None and source == "generation":
                steps_per_s = blend(last.steps_per_s, steps_per_s)
                overhead_s = blend(last.overhead_s, overhead_s)
            values = dict(
                steps_per_s=steps_per_s,
                overhead_s=overhead_s,
                source=source,
                measured_at=utcnow(),
            )
            self._upsert(session, key, values)

    @staticmethod
    def _upsert(session: Session, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Insert, or update the row of the same key: one atomic statement on SQLite and
        PostgreSQL, so two processes measuring the same thing at once cannot collide."""
        dialect = session.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            module = sqlite if dialect == "sqlite" else postgresql
            statement = module.insert(SpeedMeasurement).values(**key, **values)
            session.execute(statement.on_conflict_do_update(index_elements=list(key), set_=values))
            return
        row = session.scalars(select(SpeedMeasurement).filter_by(**key)).first()
        if row is None:
            session.add(SpeedMeasurement(**key, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)

    def list(self, device: str | None = None) -> list[SpeedMeasurement]:
        with self._db.session() as session:
            query = select(SpeedMeasurement).order_by(SpeedMeasurement.measured_at.desc())
            if device is not None:
                query = query.where(SpeedMeasurement.device == device)
            return list(session.scalars(query))

    def estimate(
        self,
        device: str,
        model_hash: str | None,
        dtype: str | None,
        width: int,
        height: int,
        steps: int,
        batch: int = 1,
    ) -> Estimate:
        """Seconds for `batch` images of `steps` steps; None when nothing fits was measured."""
        if model_hash is None:
            return Estimate(None, "model not inspected yet")
        with self._db.session() as session:
            rows = list(
                session.scalars(
                    select(SpeedMeasurement).filter_by(
                        device=device, model_hash=model_hash, dtype=dtype or "auto"
                    )
                )
            )
        if not rows:
            return Estimate(None, f"speed not measured on {device} yet")
        pixels = width * height
        row = min(rows, key=lambda r: abs(r.width * r.height - pixels))
        scale = pixels / (row.width * row.height)
        seconds = row.overhead_s * scale + batch * steps * scale / row.steps_per_s
        if (row.width, row.height) == (width, height):
            basis = f"measured {row.steps_per_s:.2f} steps/s at {width}×{height}"
        else:
            basis = (
                f"scaled from {row.steps_per_s:.2f} steps/s measured at {row.width}×{row.height}"
            )
        return Estimate(seconds, basis)
