"""`NotifyHub`: a worker node's progress hub, publishing every report with PostgreSQL's NOTIFY
for the web hosts' hubs (services/live_listener.py replays them there).

The node's `DeviceWorker` reports to it as to any hub: start, step, a preview's latent, a
problem saving, finish. Each report becomes the message a worker process would send over its
pipe (services/worker_messages.py), encoded small (services/live_codec.py: a preview's latent
averaged down and quantized to stay far under NOTIFY's 8000 bytes) and handed to a
`NotifySender`, which never blocks the job and drops news while the database is away. The
encoding runs on the sender's thread, not the job's (about 20 µs for a step, 1.2 ms for a
1024² preview).

Cancels from the web hosts come to its `request_cancel` (services/pg_notify.py `NodeLive`),
which tells its `cancel_listeners` — the node's `WorkerPool` — as on any hub.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from stable_diffusion_api.services.live_codec import PROGRESS_CHANNEL, encode_report
from stable_diffusion_api.services.pg_sender import NotifySender
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.worker_messages import (
    JobFinished,
    JobPreview,
    JobProblem,
    JobStarted,
    JobStepped,
    Report,
)

if TYPE_CHECKING:
    import numpy as np


class NotifyHub(ProgressHub):
    def __init__(self, sender: NotifySender, channel: str = PROGRESS_CHANNEL) -> None:
        super().__init__()
        self.sender = sender
        self.channel = channel

    def publish(self, message: Report) -> None:
        self.sender.send(self.channel, partial(encode_report, message))

    def start(self, generation_id: int, total: int) -> None:
        self.publish(JobStarted(generation_id, total))

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        self.publish(JobStepped(generation_id, step, total, step_seconds))

    def preview_latent(self, generation_id: int, latent: np.ndarray, step: int) -> None:
        self.publish(JobPreview(generation_id, latent, step))  # drawn by the web host

    def problem(self, generation_id: int, message: str) -> None:
        self.publish(JobProblem(generation_id, message))

    def finish(self, generation_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        self.publish(JobFinished(generation_id, status, result))
        with self._changed:  # a cancel asked of it (`request_cancel`) is done with
            self._cancel.discard(generation_id)
