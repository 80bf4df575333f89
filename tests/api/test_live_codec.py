"""The live news between hosts without a database: the NOTIFY payloads (small enough at every
image size, read back as what was sent), and a sender or listener that cannot reach the
database neither blocks nor raises, and backs off."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from psycopg.conninfo import conninfo_to_dict

from stable_diffusion_api.services import live_codec, pg_listener, pg_sender
from stable_diffusion_api.services.live_codec import (
    MAX_PAYLOAD,
    decode_report,
    encode_report,
)
from stable_diffusion_api.services.notify_hub import NotifyHub
from stable_diffusion_api.services.pg_notify import libpq_conninfo, node_live, web_live
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.worker_messages import (
    JobFinished,
    JobPreview,
    JobProblem,
    JobStarted,
    JobStepped,
    replay,
)

ROOT = Path(__file__).resolve().parents[2]

# image side → its latent's side (1/8)
SIZES = {64: 8, 512: 64, 1024: 128, 2048: 256}


@pytest.mark.parametrize("image", sorted(SIZES))
def test_a_preview_payload_stays_far_under_notifys_limit(image: int) -> None:
    side = SIZES[image]
    latent = np.random.default_rng(image).standard_normal((4, side, side)).astype(np.float32)
    payload = encode_report(JobPreview(17, latent, 5))
    size = len(payload.encode())
    assert size < 6000 < MAX_PAYLOAD < 8000, size
    back = decode_report(payload)
    assert isinstance(back, JobPreview) and (back.job_id, back.step) == (17, 5)
    factor = max(1, side // 32)  # at most 32×32 per channel
    assert back.latent.shape == (4, side // factor, side // factor)
    # Each value is the average of its factor×factor block, to half a quantization step.
    blocks = latent.reshape(4, side // factor, factor, side // factor, factor).mean(axis=(2, 4))
    step = (blocks.max(axis=(1, 2)) - blocks.min(axis=(1, 2))) / 255
    assert np.all(np.abs(back.latent - blocks) <= step[:, None, None] * 0.5 + 1e-4)


def test_odd_and_flat_latents_survive_the_trip() -> None:
    wide = np.linspace(-2, 2, 4 * 9 * 250, dtype=np.float32).reshape(4, 9, 250)  # 72×2000
    back = decode_report(encode_report(JobPreview(1, wide, 2)))
    assert isinstance(back, JobPreview)
    assert 4 * back.latent.shape[1] * back.latent.shape[2] <= live_codec.PREVIEW_VALUES
    assert back.latent.min() >= -2.001 and back.latent.max() <= 2.001
    flat = np.full((4, 8, 8), 0.25, np.float32)  # one value per channel: scale 0
    back = decode_report(encode_report(JobPreview(1, flat, 2)))
    assert isinstance(back, JobPreview) and np.allclose(back.latent, 0.25)


def test_every_report_reads_back_as_sent_and_a_too_big_view_is_left_out() -> None:
    for message in (
        JobStarted(3, 20),
        JobStepped(3, 4, 20, 0.125),
        JobStepped(3, 1, 20, None),
        JobProblem(3, "the database refused it (disk full)"),
        JobFinished(3, "succeeded", {"id": 3, "status": "succeeded", "prompt": "a cat"}),
        JobFinished(3, "canceled", None),
    ):
        assert decode_report(encode_report(message)) == message
    big = {"id": 3, "prompt": "a very long prompt " * 600}
    payload = encode_report(JobFinished(3, "succeeded", big))
    assert len(payload.encode()) <= MAX_PAYLOAD
    assert decode_report(payload) == JobFinished(3, "succeeded", None)  # streams read the row
    long = decode_report(encode_report(JobProblem(3, "x" * 10_000)))
    assert isinstance(long, JobProblem) and len(long.message) == live_codec.MAX_TEXT


def test_replay_puts_a_nodes_reports_on_the_hub_as_calls() -> None:
    hub = ProgressHub()
    latent = np.zeros((4, 64, 64), np.float32)
    for message in (JobStarted(9, 10), JobStepped(9, 3, 10, 0.5), JobPreview(9, latent, 3)):
        replay(hub, decode_report(encode_report(message)))
    state = hub.get(9)
    assert state is not None and (state.step, state.total, state.eta_s) == (3, 10, 3.5)
    assert state.preview_png is not None and state.preview_png.startswith(b"\x89PNG")
    replay(hub, decode_report(encode_report(JobFinished(9, "succeeded", {"id": 9}))))
    assert (hub.get(9) or state).result == {"id": 9}


def test_the_factories_build_nothing_for_sqlite() -> None:
    assert web_live("sqlite:///data/dali.db", ProgressHub()) is None
    assert node_live("sqlite:///data/dali.db") is None
    conninfo = libpq_conninfo("postgresql+psycopg://dali:secret@/db?host=/run/pg")
    assert conninfo is not None
    assert conninfo_to_dict(conninfo) == {
        "user": "dali",
        "password": "secret",
        "dbname": "db",
        "host": "/run/pg",
    }


def test_a_sender_without_a_database_never_blocks_and_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries: list[float] = []

    def refuse(_conninfo: str) -> None:
        tries.append(time.monotonic())
        raise OSError("connection refused")

    monkeypatch.setattr(pg_sender, "connect", refuse)
    sender = pg_sender.NotifySender("host=/nowhere dbname=x")
    hub = NotifyHub(sender)
    sender.start()
    began = time.monotonic()
    latent = np.zeros((4, 128, 128), np.float32)
    while time.monotonic() - began < 1.6:
        hub.step(1, 1, 10, None)  # a job's reports: each returns at once
        hub.preview_latent(1, latent, 1)
        time.sleep(0.01)
    sender.stop()
    assert sender.sent == 0 and sender.dropped > 100
    # Tried at once, then after 0.5 s, then after 1 s: three tries in 1.6 s, not one a report.
    assert len(tries) == 3, tries
    assert tries[1] - tries[0] >= 0.49 and tries[2] - tries[1] >= 0.99


def test_a_listener_without_a_database_backs_off_and_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries: list[float] = []

    def refuse(_conninfo: str) -> None:
        tries.append(time.monotonic())
        raise OSError("connection refused")

    monkeypatch.setattr(pg_listener, "connect", refuse)
    listener = pg_listener.NotifyListener("host=/nowhere", ["dali_progress"], print)
    listener.start()
    time.sleep(1.7)
    began = time.monotonic()
    listener.stop()
    assert time.monotonic() - began < 0.5  # heard at once, even while backing off
    assert len(tries) == 3 and not listener.connected.is_set(), tries


def test_drawing_a_preview_loads_no_torch() -> None:
    """The web host draws the previews of remote nodes (and of its worker processes) from
    their latents: that must not cost it torch's import, seconds that would hold up every
    report behind the first preview."""
    code = "import sys, sd_core.preview; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert done.returncode == 0
