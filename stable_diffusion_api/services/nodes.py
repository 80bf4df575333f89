"""Nodes: the hosts (processes) that run workers, what each holds, and which jobs each may run.

Every process that runs workers is a node: the single machine (`DALI_RUN_WORKERS=true`, the
default) and each `python -m stable_diffusion_api worker` on other hosts sharing the database.
A node registers itself in its `worker_processes` row — its name (`DALI_NODE_NAME`, default the
host name), its devices (`DeviceSpec` fields) and the models it holds (name, sha256, short
hash) — and its heartbeat keeps them current. A node is live while its heartbeat is younger
than `DALI_STALE_AFTER_S`; the sweep that fails a dead process's running jobs also deletes its
row, so it drops out of every listing.

Device ids and what a job's `device` accepts (`accepted_forms`):

    gpu-b/cuda:0    that device of that node
    cuda:0          that device on any node
    cuda            any CUDA device (also cpu, mps: any device of the kind)
    auto            any device

A worker claims a job whose device is one of its forms and whose model (by name or short hash)
its node holds (`JobQueue.claim`). A job no live node can run waits, and `waiting_reason`
says why.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import BenchmarkRequest, WorkerProcess, utcnow
from stable_diffusion_api.services.generator import DeviceSpec

ANY_DEVICE = "auto"


@dataclass(frozen=True)
class NodeModel:
    """A model a node holds."""

    name: str
    sha256: str | None
    short_hash: str | None


@dataclass(frozen=True)
class Node:
    """A live node: its name, devices (ids local to it: "cuda:0") and models (None: not
    known, so not a constraint — a node not yet registered)."""

    name: str
    devices: tuple[DeviceSpec, ...]
    models: tuple[NodeModel, ...] | None

    def holds(self, model: str, model_hash: str | None = None) -> bool:
        if self.models is None:
            return True
        return any(
            model == m.name or (model_hash is not None and model_hash == m.short_hash)
            for m in self.models
        )


class NodeNameTaken(RuntimeError):
    """Another live process already runs as this node name (set with DALI_NODE_NAME)."""


def qualified(node: str, device: str) -> str:
    """The id of `node`'s `device` everywhere: "gpu-b/cuda:0"."""
    return f"{node}/{device}"


def kind_of(device: str) -> str:
    """ "cuda:0" → "cuda"; "cpu" → "cpu"."""
    return device.split(":", 1)[0]


def accepted_forms(node: str, device: str) -> tuple[str, ...]:
    """The `device` values of the jobs that `node`'s worker for `device` may run."""
    forms = (qualified(node, device), device, kind_of(device), ANY_DEVICE)
    return tuple(dict.fromkeys(forms))


def normalize(device: str) -> str:
    """A requested device as it is stored: device part lower-cased, the node's name kept."""
    text = device.strip()
    if "/" in text:
        node, local = text.split("/", 1)
        return qualified(node.strip(), local.strip().lower())
    return text.lower()


def spec_json(spec: DeviceSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec) | {"dtypes": list(spec.dtypes)}


def spec_from_json(data: dict[str, Any]) -> DeviceSpec:
    return DeviceSpec(**(data | {"dtypes": tuple(data["dtypes"])}))


def model_json(model: NodeModel) -> dict[str, Any]:
    return dataclasses.asdict(model)


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


class NodeRegistry:
    """The live nodes, as the database says (this process's own from memory)."""

    def __init__(self, db: Database, name: str, stale_after_s: float) -> None:
        self._db = db
        self.name = name
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._own: Node | None = None

    @property
    def own(self) -> Node | None:
        """This process's node, once its workers registered it (None: not a node)."""
        with self._lock:
            return self._own

    def set_own(self, node: Node | None) -> None:
        with self._lock:
            self._own = node

    def _cutoff(self) -> dt.datetime:
        return utcnow() - dt.timedelta(seconds=self._stale_after_s)

    def others(self) -> list[Node]:
        """Every other live node, by name (the processes of one host sharing its default name
        are one node: the first row stands for it)."""
        with self._db.session() as session:
            rows = session.execute(
                select(WorkerProcess.node, WorkerProcess.devices, WorkerProcess.models)
                .where(WorkerProcess.node.is_not(None))
                .where(WorkerProcess.heartbeat_at >= self._cutoff())
                .order_by(WorkerProcess.node, WorkerProcess.started_at)
            ).all()
        nodes: dict[str, Node] = {}
        for name, devices, models in rows:
            if name is None or name == self.name or name in nodes:
                continue
            nodes[name] = Node(
                name,
                tuple(spec_from_json(d) for d in devices or ()),
                tuple(NodeModel(**m) for m in models or ()),
            )
        return list(nodes.values())

    def check_name_free(self, explicit: bool) -> None:
        """Raise NodeNameTaken when a live process of another host — or, for a name set in
        DALI_NODE_NAME (`explicit`), any live process — already runs as this node."""
        here = socket.gethostname()
        with self._db.session() as session:
            holders = session.execute(
                select(WorkerProcess.hostname, WorkerProcess.pid, WorkerProcess.heartbeat_at)
                .where(WorkerProcess.node == self.name)
                .where(WorkerProcess.heartbeat_at >= self._cutoff())
            ).all()
        for hostname, pid, beat in holders:
            if hostname == here and not pid_exists(pid):
                continue  # killed on this host: its row is only waiting for the sweep
            if explicit or hostname != here:
                raise NodeNameTaken(
                    f"DALI_NODE_NAME={self.name!r} is already used by a live node (host "
                    f"{hostname}, pid {pid}, last heartbeat {beat:%H:%M:%S} UTC): give this "
                    "node another name with DALI_NODE_NAME, or stop the other one"
                )

    # -- benchmarks asked of other nodes ---------------------------------------------------

    def ask_benchmark(
        self,
        node: str,
        device: str,
        dtype: str | None,
        model: str,
        width: int | None,
        height: int | None,
        steps: int,
    ) -> BenchmarkRequest:
        """Ask `node` to measure `model` on its `device`; its heartbeat takes it up."""
        with self._db.session() as session:
            request = BenchmarkRequest(node=node, device=device, dtype=dtype, model=model,
                                       width=width, height=height, steps=steps, state="queued")  # fmt: skip
            session.add(request)
            session.flush()
            session.expunge(request)
        return request

    def benchmark_requests(self) -> list[BenchmarkRequest]:
        """Every benchmark asked of a node, newest first (the last 50)."""
        with self._db.session() as session:
            rows = list(
                session.scalars(
                    select(BenchmarkRequest).order_by(BenchmarkRequest.id.desc()).limit(50)
                )
            )
            session.expunge_all()
        return rows

    def take_benchmarks(self) -> list[BenchmarkRequest]:
        """The benchmarks asked of this node, now running here (each taken once: a
        conditional UPDATE per request)."""
        with self._db.session() as session:
            waiting = list(
                session.scalars(
                    select(BenchmarkRequest.id).where(
                        BenchmarkRequest.node == self.name, BenchmarkRequest.state == "queued"
                    )
                )
            )
            taken = []
            for request_id in waiting:
                row = session.execute(
                    update(BenchmarkRequest)
                    .where(BenchmarkRequest.id == request_id, BenchmarkRequest.state == "queued")
                    .values(state="running")
                    .returning(BenchmarkRequest)
                ).scalar_one_or_none()
                if row is not None:
                    taken.append(row)
            session.expunge_all()
        return taken

    def benchmark_ended(self, request_id: int, state: str, error: str | None) -> None:
        with self._db.session() as session:
            session.execute(
                update(BenchmarkRequest)
                .where(BenchmarkRequest.id == request_id)
                .values(state=state, error=error)
            )


def held_models(entries: Iterable[Any]) -> tuple[NodeModel, ...]:
    """The usable models among a registry's `ModelEntry`s."""
    return tuple(
        NodeModel(entry.name, entry.sha256, entry.short_hash)
        for entry in entries
        if entry.available
    )


def waiting_reason(
    nodes: list[Node], device: str, model: str, model_hash: str | None
) -> str | None:
    """Why no live node can run a job on `device` with `model`; None when one can."""
    with_device = [
        node
        for node in nodes
        if any(device in accepted_forms(node.name, spec.id) for spec in node.devices)
    ]
    if not with_device:
        if "/" in device:
            node, local = device.split("/", 1)
            if all(n.name != node for n in nodes):
                return f"node {node} is not live (no heartbeat within the stale window)"
            return f"node {node} has no device {local}"
        if device == ANY_DEVICE:
            return "no live node"
        if ":" in device:
            return f"no live node has device {device}"
        article = "an" if device[:1] in "aeiou" or device == "mps" else "a"  # "an mps device"
        return f"no live node has {article} {device} device"
    if not any(node.holds(model, model_hash) for node in with_device):
        where = "" if len(with_device) == len(nodes) else f" with a {device} device"
        return f"no live node{where} has model {model}"
    return None
