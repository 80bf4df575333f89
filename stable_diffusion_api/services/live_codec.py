"""The wire format of live news between hosts: a worker's reports, cancels and "work queued",
as compact JSON for PostgreSQL's NOTIFY.

A node's reports are the same typed messages a worker process sends its server over a pipe
(services/worker_messages.py: `JobStarted`, `JobStepped`, `JobPreview`, `JobProblem`,
`JobFinished`); here each becomes one small JSON object with a one-letter kind `k`. NOTIFY
refuses a payload of 8000 bytes or more, so:

- a preview's latent, (4, h, w) float32, is averaged down by a whole factor until at most
  `PREVIEW_VALUES` values are left (1024 per channel: a 512² image's 64×64 latent becomes
  32×32), each channel quantized to uint8 between its own minimum and maximum (both sent), and
  base64-encoded: a payload of at most 5.6 kB. Measured payloads are in docs/benchmarks.md;
- a finished job's view that would not fit (a batch of 8 with long prompts) goes without it:
  the event streams then read the finished job from the database, as for any job that ended
  in another process;
- a problem's message is cut to `MAX_TEXT` characters.

`decode_report` turns a payload back into the message, which `replay` hands to a hub exactly
as `ProcessWorker` replays what comes over its pipe.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stable_diffusion_api.services.worker_messages import (
    Cancel,
    JobFinished,
    JobPreview,
    JobProblem,
    JobStarted,
    JobStepped,
    Report,
)

if TYPE_CHECKING:
    import numpy as np

# PostgreSQL's channels (one per database, so two studios on one server do not mix).
PROGRESS_CHANNEL = "dali_progress"  # node → web hosts: the reports of running jobs
CANCEL_CHANNEL = "dali_cancel"  # web host → nodes: stop a running job (or interrupt it)
WORK_CHANNEL = "dali_work"  # web host → nodes: a job was queued for a device

MAX_PAYLOAD = 7900  # bytes; NOTIFY refuses 8000 and more
PREVIEW_VALUES = 4096  # values of a preview's latent at most, all channels together
MAX_TEXT = 2000  # characters of a problem's message


@dataclass(frozen=True)
class WorkQueued:
    """A job was queued for `device` (as the web host names it)."""

    device: str


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def encode_preview(latent: np.ndarray) -> dict[str, Any]:
    """A (4, h, w) latent as {"h", "w", "lo": [4 floats], "sc": [4 floats], "q": base64 of
    uint8 (4, h', w')}: averaged down by the smallest whole factor that leaves at most
    `PREVIEW_VALUES` values, then each channel quantized to 256 levels between its extremes."""
    import numpy as np

    values = np.asarray(latent, dtype=np.float32)
    channels, height, width = values.shape
    factor = 1
    while channels * math.ceil(height / factor) * math.ceil(width / factor) > PREVIEW_VALUES:
        factor += 1
    if factor > 1:
        tall, wide = math.ceil(height / factor) * factor, math.ceil(width / factor) * factor
        padded = np.pad(values, ((0, 0), (0, tall - height), (0, wide - width)), mode="edge")
        values = padded.reshape(channels, tall // factor, factor, wide // factor, factor).mean(
            axis=(2, 4)
        )
    low = values.min(axis=(1, 2))
    scale = (values.max(axis=(1, 2)) - low) / 255.0
    steps = np.where(scale > 0, scale, 1.0)
    quantized = np.rint((values - low[:, None, None]) / steps[:, None, None]).astype(np.uint8)
    return {
        "h": int(values.shape[1]),
        "w": int(values.shape[2]),
        "lo": [float(f"{v:.6g}") for v in low],
        "sc": [float(f"{v:.6g}") for v in scale],
        "q": base64.b64encode(quantized.tobytes()).decode("ascii"),
    }


def decode_preview(data: dict[str, Any]) -> np.ndarray:
    """`encode_preview`'s dict → a (4, h', w') float32 latent."""
    import numpy as np

    low = np.asarray(data["lo"], dtype=np.float32)
    scale = np.asarray(data["sc"], dtype=np.float32)
    shape = (len(low), int(data["h"]), int(data["w"]))
    quantized = np.frombuffer(base64.b64decode(data["q"]), dtype=np.uint8).reshape(shape)
    return low[:, None, None] + quantized.astype(np.float32) * scale[:, None, None]


def encode_report(message: Report) -> str:
    """One report as a NOTIFY payload, always under `MAX_PAYLOAD` bytes."""
    match message:
        case JobStepped(job_id, step, total, step_seconds):
            seconds = None if step_seconds is None else round(step_seconds, 5)
            return _dumps({"k": "p", "id": job_id, "s": step, "t": total, "ss": seconds})
        case JobPreview(job_id, latent, step):
            return _dumps({"k": "v", "id": job_id, "s": step, **encode_preview(latent)})
        case JobStarted(job_id, total):
            return _dumps({"k": "s", "id": job_id, "t": total})
        case JobProblem(job_id, text):
            return _dumps({"k": "x", "id": job_id, "m": text[:MAX_TEXT]})
        case JobFinished(job_id, status, result):
            payload = _dumps({"k": "f", "id": job_id, "st": status, "r": result})
            if len(payload.encode()) <= MAX_PAYLOAD:
                return payload
            return _dumps({"k": "f", "id": job_id, "st": status, "r": None})
    raise TypeError(f"not a report: {message!r}")


def decode_report(payload: str) -> Report:
    """A payload of `encode_report` → its message; ValueError (or KeyError) when malformed."""
    data = json.loads(payload)
    job_id = int(data["id"])
    match data["k"]:
        case "p":
            seconds = data["ss"]
            return JobStepped(job_id, int(data["s"]), int(data["t"]), seconds)
        case "v":
            return JobPreview(job_id, decode_preview(data), int(data["s"]))
        case "s":
            return JobStarted(job_id, int(data["t"]))
        case "x":
            return JobProblem(job_id, str(data["m"]))
        case "f":
            return JobFinished(job_id, str(data["st"]), data["r"])
    raise ValueError(f"unknown report kind {data['k']!r}")


def encode_cancel(message: Cancel) -> str:
    return _dumps({"id": message.job_id, "keep": message.keep_partial})


def decode_cancel(payload: str) -> Cancel:
    data = json.loads(payload)
    return Cancel(int(data["id"]), bool(data["keep"]))


def encode_work(message: WorkQueued) -> str:
    return _dumps({"d": message.device})


def decode_work(payload: str) -> WorkQueued:
    return WorkQueued(str(json.loads(payload)["d"]))
