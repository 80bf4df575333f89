"""The autotune results kept in the data directory, read for the hardware page and the API.

The engine (`SdCoreGenerator.autotune`, in a device's worker) writes the file through
`sd_core.autotune.save_autotune`; this module only reads it, with the standard library, so the
web process needs no torch for it. The file maps a device id to what its last autotune found
(`sd_core.autotune.AutotuneResult.as_json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def saved_autotunes(path: Path) -> dict[str, dict[str, Any]]:
    """Device id → its last autotune's figures; {} when none ran (or the file is unreadable:
    the engine then runs every device eager, and the next autotune writes it afresh)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {device: entry for device, entry in data.items() if isinstance(entry, dict)}
