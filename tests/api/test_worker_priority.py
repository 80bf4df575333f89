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


def test_normal_is_the_default_and_others_are_refused() -> None:
    # Not "idle" or "low": on a machine busy with other work they starved the user's own job.
    assert Settings().worker_priority == "normal"
    with pytest.raises(ValueError, match="worker_priority"):
        Settings(worker_priority="realtime")  # type: ignore[arg-type]


def test_openmp_threads_spin_briefly_unless_the_user_said_otherwise() -> None:
    from stable_diffusion_api.services.worker_process import wait_without_spinning

    fresh: dict[str, str] = {}
    wait_without_spinning(fresh)
    assert fresh == {"GOMP_SPINCOUNT": "10000"}
    for chosen in ({"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        kept = dict(chosen)
        wait_without_spinning(kept)
        assert kept == chosen


def test_a_worker_process_loads_torch_with_a_short_openmp_spin(tmp_path: Path) -> None:
    """The real child: by the time it imports torch, GOMP_SPINCOUNT is set (OpenMP reads it
    then, once)."""
    probe = (
        "import multiprocessing, os, sys\n"
        "from stable_diffusion_api.services import worker_process\n"
        "seen = {}\n"
        "def fake_context(settings, instance_id, hub):\n"
        "    seen['policy'] = os.environ.get('GOMP_SPINCOUNT')\n"
        "    raise SystemExit(0)\n"
        "worker_process.child_context = fake_context\n"
        "parent, child = multiprocessing.Pipe()\n"
        "try:\n"
        "    worker_process.child_main(worker_process.Settings(data_dir=sys.argv[1]), 'cpu', 'x', child)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen['policy'], 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], check=True,
                          capture_output=True, text=True, env=env | {"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.stdout.split() == ["10000", "False"]
