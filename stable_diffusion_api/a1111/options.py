"""A1111's `/options` beyond the ones that change a generation.

`A1111Service.get_options` / `set_options` apply what means something here (the current model,
`CLIP_stop_at_last_layers`, `sd_vae`: the project's defaults). This module holds the rest:

- FIXED: settings A1111 clients read whose value Dali cannot change (images are always PNG,
  the noise has no seed delta). Sending the same value is fine; another is a 422 naming the
  key, rather than a setting that silently does nothing.
- everything else (`send_seed`, `send_size`, UI and extension settings, …) is harmless to
  Dali: kept as sent in the project's row (`projects.a1111_options`) and answered back by
  GET /options, so a client that writes its settings finds them again, after a restart and
  from any web process.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update

from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField, NotFound
from stable_diffusion_api.models import Project

FIXED: dict[str, Any] = {
    "samples_format": "png",
    "grid_format": "png",
    "eta_noise_seed_delta": 0,
    "randn_source": "CPU",  # every image's noise is drawn on the CPU (docs/architecture.md)
}
# Values kept for clients that read them back; never used by Dali.
STORED_DEFAULTS: dict[str, Any] = {
    "send_seed": True,
    "send_size": True,
    "img2img_fix_steps": False,
    "enable_pnginfo": True,
    "save_txt": False,
}
MAX_KEYS = 500
MAX_VALUE_CHARS = 10_000


def check_fixed(options: dict[str, Any], prefix: str = "") -> None:
    """InvalidField for a FIXED option sent with another value than Dali's; the field is named
    `prefix` + the key (a request's "override_settings.")."""
    for key, value in FIXED.items():
        if key in options and options[key] != value:
            raise InvalidField(prefix + key, options[key], f"Dali always uses {value!r}")


class OptionStore:
    """The options without a meaning here, per project, in its row: the one writer of
    `projects.a1111_options`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def get(project: Project) -> dict[str, Any]:
        """The stored options of `project` (a row as read) over STORED_DEFAULTS."""
        return {**STORED_DEFAULTS, **(project.a1111_options or {})}

    def set(self, project_id: int, options: dict[str, Any]) -> None:
        """Merge `options` (JSON values of at most MAX_VALUE_CHARS each, MAX_KEYS in all) into
        the project's. The row is write-locked before it is read, so two web processes setting
        different keys at once keep both."""
        for key, value in options.items():
            try:
                size = len(json.dumps(value))
            except (TypeError, ValueError):
                size = MAX_VALUE_CHARS + 1
            if size > MAX_VALUE_CHARS:
                raise InvalidField(key, "<value>", f"a JSON value of ≤ {MAX_VALUE_CHARS} chars")
        with self._db.session() as session:
            # Touch the row first: its write lock is taken before the read (PostgreSQL locks
            # the row; SQLite's writer lock makes the read see the newest commit). Options are
            # not an edit of the project: `updated_at` (the projects list's order) stays.
            row = update(Project).where(Project.id == project_id)
            touched = session.execute(
                row.values(a1111_options=Project.a1111_options, updated_at=Project.updated_at)
            )
            if touched.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound("project", project_id)
            stored = session.scalar(select(Project.a1111_options).where(Project.id == project_id))
            kept = {**(stored or {}), **options}
            if len(kept) > MAX_KEYS:
                raise InvalidField("options", f"{len(kept)} keys", f"at most {MAX_KEYS} options")
            session.execute(row.values(a1111_options=kept, updated_at=Project.updated_at))
