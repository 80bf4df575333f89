"""How a worker process yields the CPU to the web server (DALI_WORKER_PRIORITY)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stable_diffusion_api.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os, sys
from stable_diffusion_api.services.worker_process import lower_priority
lower_priority(sys.argv[1], sys.argv[2])
print(json.dumps([os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)]))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="scheduling policies are Linux's")
@pytest.mark.parametrize(
    ("priority", "device", "policy", "nicer_by"),
    [
        ("idle", "cpu", "SCHED_IDLE", 10),
        ("idle", "cuda:0", "SCHED_OTHER", 10),  # a GPU worker's kernel launches stay prompt
        ("low", "cpu", "SCHED_OTHER", 10),
        ("normal", "cpu", "SCHED_OTHER", 0),
    ],
)
def test_worker_priority(priority: str, device: str, policy: str, nicer_by: int) -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE, priority, device], check=True,
                           capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})  # fmt: skip
    scheduler, niceness = json.loads(probe.stdout)
    assert scheduler == getattr(os, policy)
    assert niceness == os.getpriority(os.PRIO_PROCESS, 0) + nicer_by


def test_idle_is_the_default_and_others_are_refused() -> None:
    assert Settings().worker_priority == "idle"
    with pytest.raises(ValueError, match="worker_priority"):
        Settings(worker_priority="realtime")  # type: ignore[arg-type]
