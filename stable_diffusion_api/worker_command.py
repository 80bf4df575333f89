"""`python -m stable_diffusion_api worker`: a node — this host's workers, no HTTP server.

    DALI_DATABASE_URL=postgresql+psycopg://… DALI_NODE_NAME=gpu-b python -m stable_diffusion_api worker
    … worker --device cuda:0 --device cuda:1     (or --device cuda: every CUDA device)

It registers the node (name, devices, models, heartbeat: services/nodes.py) in the shared
database and runs one worker thread per device (no web server here, so no GIL to keep free
for one), claiming the jobs that fit its devices and models. The web host
(`DALI_RUN_WORKERS=false python -m stable_diffusion_api`) queues them; on PostgreSQL it says so
over NOTIFY and the workers look at once (else at their poll, `DeviceWorker.wait_for_work`), and
the node's progress, previews and finish reach the web host's pages the same way, as its
cancels reach the node (services/pg_notify.py). SIGTERM or SIGINT stops it cleanly: a running job
stops at its next step and goes back to the queue (another node, or this one restarted, runs
it), then the node's row is removed. Exit codes: 0 stopped on request; 2 bad settings or
`--device`; 3 its name is taken by another live node (set DALI_NODE_NAME).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from stable_diffusion_api.config import Settings

if TYPE_CHECKING:
    from stable_diffusion_api.services.studio import Studio

log = logging.getLogger("stable_diffusion_api.worker")

EXIT_SETTINGS = 2
EXIT_NAME_TAKEN = 3


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stable_diffusion_api worker",
        description="Run this host's workers as a node of a shared studio (no HTTP server).",
    )
    parser.add_argument(
        "--device",
        action="append",
        metavar="DEVICE",
        help="only this device (an id such as cuda:0, or a kind such as cuda); repeat or "
        "separate with commas for several (default: every device)",
    )
    args = parser.parse_args(argv)
    if args.device:
        args.device = [d.strip().lower() for given in args.device for d in given.split(",")]
        args.device = [d for d in args.device if d]
    return args


def main(argv: Sequence[str]) -> int:
    """Run the node until SIGTERM/SIGINT; the exit code."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = Settings()
    except ValidationError as exc:  # each problem named by its variable (DALI_NODE_NAME, …)
        for error in exc.errors():
            variable = "DALI_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"dali worker: {variable}={error.get('input')!r}: {error['msg']}",
                  file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    if not settings.run_workers:
        print("dali worker: DALI_RUN_WORKERS=false leaves this node nothing to run",
              file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    from stable_diffusion_api.services.pg_notify import node_live
    from stable_diffusion_api.services.progress import ProgressHub
    from stable_diffusion_api.services.studio import Studio
    from stable_diffusion_api.services.worker_process import wait_without_spinning

    wait_without_spinning(os.environ)  # before torch loads OpenMP
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping (a running job goes back to the queue)",
                 signal.Signals(signum).name)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # On PostgreSQL the node's reports go to the web hosts over NOTIFY (its hub publishes
    # them), and cancels and "work queued" come back the same way (services/pg_notify.py); on
    # SQLite (one machine, tests) a plain in-process hub.
    live = node_live(settings.resolved_database_url)
    hub = live.hub if live is not None else ProgressHub()
    studio = Studio(settings, worker_mode="thread", devices=args.device, node_command=True,
                    hub=hub)  # fmt: skip
    if live is not None:  # the pool's workers already hear the hub's cancels

        def wake_all(_device: str) -> None:
            for worker in studio.workers.workers.values():
                worker.wake()

        live.on_work = wake_all
        live.start()
    try:
        code = _serve(studio, args, stop)
    finally:
        if live is not None:
            live.stop()
    return code


def _serve(studio: Studio, args: argparse.Namespace, stop: threading.Event) -> int:
    """Start the node's workers and keep them until `stop`; the exit code."""
    from stable_diffusion_api.services.identity import StudioMismatch
    from stable_diffusion_api.services.nodes import NodeNameTaken

    try:
        studio.start()
    except NodeNameTaken as exc:
        print(f"dali worker: {exc}", file=sys.stderr)
        studio.db.dispose()
        return EXIT_NAME_TAKEN
    except StudioMismatch as exc:
        print(f"dali worker: {exc}", file=sys.stderr)
        studio.db.dispose()
        return EXIT_SETTINGS
    if not studio.hardware.local_devices:
        present = ", ".join(d.id for d in studio.generator.list_devices())
        print(f"dali worker: --device {','.join(args.device or [])} matches no device of this "
              f"host (it has: {present})", file=sys.stderr)  # fmt: skip
        studio.stop()
        return EXIT_SETTINGS
    devices = ", ".join(d.id for d in studio.hardware.local_devices)
    log.info("node %s: workers on %s (pid %d)", studio.nodes.name, devices, os.getpid())
    while not stop.wait(1.0):
        pass
    studio.stop()
    log.info("node %s stopped", studio.nodes.name)
    return 0


__all__ = ["main", "parse"]
