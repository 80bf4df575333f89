"""What hardware the live nodes have, and the checks that a project's choice of it is possible.

The devices of this process's own node come from the engine (`local_devices`); those of the
other nodes from their registration (services/nodes.py). Everywhere a device is listed its id
is `node/device` ("gpu-b/cuda:0"); a request may also name a plain form ("cuda:0", "cuda",
"auto"), which any live node's matching device may run.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import replace

from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.generator import DeviceSpec, Generator
from stable_diffusion_api.services.nodes import (
    Node,
    NodeModel,
    NodeRegistry,
    accepted_forms,
    normalize,
    qualified,
    waiting_reason,
)

AUTO_DTYPE = "auto"


class HardwareService:
    def __init__(
        self,
        generator: Generator,
        nodes: NodeRegistry | None = None,
        run_workers: bool = True,
        only: Collection[str] | None = None,
    ) -> None:
        """`nodes` None: this process alone, as node "local". `run_workers` False: this
        process has no devices of its own (a web host). `only`: the local devices to use (the
        worker command's --device), by id or kind."""
        self._generator = generator
        self._nodes = nodes
        self._run_workers = run_workers
        self._only = tuple(only) if only else None
        self._devices: list[DeviceSpec] | None = None
        self._lock = threading.Lock()

    @property
    def node_name(self) -> str:
        return self._nodes.name if self._nodes is not None else "local"

    def refresh(self) -> list[DeviceSpec]:
        """Ask the engine again (free memory changes; done at start-up and on request)."""
        devices = self._generator.list_devices() if self._run_workers else []
        if self._only is not None:
            devices = [d for d in devices if d.id in self._only or d.kind in self._only]
        with self._lock:
            self._devices = devices
        return devices

    @property
    def local_devices(self) -> list[DeviceSpec]:
        """This process's own devices, ids as the engine knows them ("cuda:0")."""
        with self._lock:
            devices = self._devices
        return devices if devices is not None else self.refresh()

    def nodes(self) -> list[Node]:
        """Every live node, this process's own first."""
        own = self._nodes.own if self._nodes is not None else None
        if own is None and self._run_workers:  # not registered yet: its devices all the same
            own = Node(self.node_name, tuple(self.local_devices), None)
        try:
            others = self._nodes.others() if self._nodes is not None else []
        except DatabaseUnavailable:  # not made yet (the Gradio UI is built before the studio
            others = []  # starts and migrates) or away: this host's devices are still known
        return ([own] if own is not None else []) + others

    @property
    def devices(self) -> list[DeviceSpec]:
        """Every live node's devices, each with its `node/device` id."""
        return [
            replace(spec, id=qualified(node.name, spec.id))
            for node in self.nodes()
            for spec in node.devices
        ]

    def choices(self) -> list[DeviceSpec]:
        """The devices a form offers: with one live node, their plain ids ("cpu", "cuda:0":
        a single machine's forms as ever); with several, `node/device` ids."""
        nodes = self.nodes()
        if len(nodes) == 1:
            return list(nodes[0].devices)
        return self.devices

    def node_models(self) -> list[NodeModel]:
        """The models the other live nodes hold (this one's are in its registry)."""
        others = (node for node in self.nodes() if node.name != self.node_name)
        return [model for node in others for model in node.models or ()]

    def get(self, device: str, field: str = "device") -> DeviceSpec:
        """A live device that runs jobs asking for `device`, with `id` the form a job stores
        ("gpu-b/cuda:0", "cuda:0", "cuda", "auto"); InvalidField lists the live devices."""
        wanted = normalize(device)
        for node in self.nodes():
            for spec in node.devices:
                if wanted in accepted_forms(node.name, spec.id):
                    return replace(spec, id=wanted)
        present = ", ".join(f"{d.id} ({d.name})" for d in self.devices) or "none"
        raise InvalidField(
            field,
            device,
            f"devices of the live nodes: {present} (or a plain form such as 'cuda:0', "
            "'cuda' or 'auto' that any node's device may run)",
        )

    def local(self, device: str, field: str = "device") -> DeviceSpec:
        """This process's own device that `device` names (benchmarks and engine tasks run
        here); InvalidField when it names only another node's."""
        wanted = normalize(device)
        for spec in self.local_devices:
            if wanted in accepted_forms(self.node_name, spec.id):
                return spec
        mine = ", ".join(qualified(self.node_name, d.id) for d in self.local_devices) or "none"
        raise InvalidField(field, device, f"this runs on this host's own devices: {mine}")

    def matching(self, device: str) -> list[str]:
        """The `node/device` ids of the live devices that run jobs asking for `device`."""
        wanted = normalize(device)
        return [
            qualified(node.name, spec.id)
            for node in self.nodes()
            for spec in node.devices
            if wanted in accepted_forms(node.name, spec.id)
        ]

    def waiting_reason(
        self, device: str, model: str, model_hash: str | None, nodes: list[Node] | None = None
    ) -> str | None:
        """Why no live node can run a job on `device` with `model` now; None when one can.
        `nodes`: the live nodes, if already read."""
        return waiting_reason(self.nodes() if nodes is None else nodes, device, model, model_hash)

    def check(
        self, device: str, dtype: str | None, prefix: str = ""
    ) -> tuple[DeviceSpec, str | None]:
        """(device, dtype or None for the device's default) after checking both exist on a
        live node."""
        spec = self.get(device, f"{prefix}device")
        if dtype is None or dtype.strip().lower() == AUTO_DTYPE:
            return spec, None
        name = dtype.strip().lower()
        if name not in spec.dtypes:
            raise InvalidField(
                f"{prefix}dtype",
                dtype,
                f"{spec.id} takes: {', '.join(spec.dtypes)} (or 'auto' for {spec.default_dtype})",
            )
        return spec, name
