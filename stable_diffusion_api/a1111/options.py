"""A1111's `/options` beyond the ones that change a generation.

`A1111Service.get_options` / `set_options` apply what means something here (the current model,
`CLIP_stop_at_last_layers`, `sd_vae`: the project's defaults). This module holds the rest:

- FIXED: settings A1111 clients read whose value Dali cannot change (images are always PNG,
  the noise has no seed delta). Sending the same value is fine; another is a 422 naming the
  key, rather than a setting that silently does nothing.
- everything else (`send_seed`, `send_size`, UI and extension settings, …) is harmless to
  Dali: kept per project in memory, as sent, and answered back by GET /options until the
  server restarts, so a client that writes its settings finds them again.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from stable_diffusion_api.errors import InvalidField

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
    """The options without a meaning here, per project name, in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, Any]] = {}

    def get(self, project: str) -> dict[str, Any]:
        with self._lock:
            return {**STORED_DEFAULTS, **self._values.get(project, {})}

    def set(self, project: str, options: dict[str, Any]) -> None:
        """Keep `options` (JSON values of at most MAX_VALUE_CHARS each, MAX_KEYS in all)."""
        for key, value in options.items():
            try:
                size = len(json.dumps(value))
            except (TypeError, ValueError):
                size = MAX_VALUE_CHARS + 1
            if size > MAX_VALUE_CHARS:
                raise InvalidField(key, "<value>", f"a JSON value of ≤ {MAX_VALUE_CHARS} chars")
        with self._lock:
            kept = {**self._values.get(project, {}), **options}
            if len(kept) > MAX_KEYS:
                raise InvalidField("options", f"{len(kept)} keys", f"at most {MAX_KEYS} options")
            self._values[project] = kept
