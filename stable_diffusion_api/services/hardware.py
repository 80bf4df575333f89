"""What hardware this machine has, and the checks that a project's choice of it is possible."""

from __future__ import annotations

import threading

from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.generator import DeviceSpec, Generator

AUTO_DTYPE = "auto"


class HardwareService:
    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._devices: list[DeviceSpec] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> list[DeviceSpec]:
        """Ask the engine again (free memory changes; done at start-up and on request)."""
        devices = self._generator.list_devices()
        with self._lock:
            self._devices = devices
        return devices

    @property
    def devices(self) -> list[DeviceSpec]:
        with self._lock:
            devices = self._devices
        return devices if devices is not None else self.refresh()

    def get(self, device: str, field: str = "device") -> DeviceSpec:
        """The device called `device` ("cuda" means "cuda:0"); InvalidField lists those present."""
        wanted = device.strip().lower()
        if wanted == "cuda":
            wanted = "cuda:0"
        for spec in self.devices:
            if spec.id == wanted:
                return spec
        present = ", ".join(f"{d.id} ({d.name})" for d in self.devices)
        raise InvalidField(field, device, f"devices present on this machine: {present}")

    def check(
        self, device: str, dtype: str | None, prefix: str = ""
    ) -> tuple[DeviceSpec, str | None]:
        """(device, dtype or None for the device's default) after checking both exist here."""
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
