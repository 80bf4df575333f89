"""What hardware exists on this machine and which dtypes each device takes."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class DeviceInfo:
    """One device a pipeline can run on."""

    id: str  # "cpu", "cuda:0", "mps"
    kind: str  # "cpu" | "cuda" | "mps"
    name: str
    total_memory: int | None  # bytes
    free_memory: int | None  # bytes
    cores: int | None
    compute_capability: str | None
    dtypes: tuple[str, ...]
    default_dtype: str


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _ram() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes from /proc/meminfo where it exists."""
    try:
        fields: dict[str, int] = {}
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
        return fields.get("MemTotal"), fields.get("MemAvailable")
    except (OSError, ValueError):
        return None, None


def cpu_device() -> DeviceInfo:
    total, free = _ram()
    return DeviceInfo(
        id="cpu",
        kind="cpu",
        name=_cpu_name(),
        total_memory=total,
        free_memory=free,
        cores=os.cpu_count(),
        compute_capability=None,
        # float16 matmuls on CPU are slow and poorly supported; bfloat16 works.
        dtypes=("float32", "bfloat16"),
        default_dtype="float32",
    )


def list_devices() -> list[DeviceInfo]:
    """Every device present: the CPU first, then each CUDA device, then MPS."""
    devices = [cpu_device()]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            try:
                free, total = torch.cuda.mem_get_info(index)
            except RuntimeError:
                free, total = None, props.total_memory
            dtypes = ["float32", "float16"]
            if torch.cuda.is_bf16_supported():
                dtypes.append("bfloat16")
            devices.append(
                DeviceInfo(
                    id=f"cuda:{index}",
                    kind="cuda",
                    name=props.name,
                    total_memory=total,
                    free_memory=free,
                    cores=props.multi_processor_count,
                    compute_capability=f"{props.major}.{props.minor}",
                    dtypes=tuple(dtypes),
                    default_dtype="float16",
                )
            )
    if torch.backends.mps.is_available():
        ram_total, ram_free = _ram()  # MPS shares system memory
        devices.append(
            DeviceInfo(
                id="mps",
                kind="mps",
                name="Apple Metal (MPS)",
                total_memory=ram_total,
                free_memory=ram_free,
                cores=None,
                compute_capability=None,
                dtypes=("float32", "float16"),
                default_dtype="float16",
            )
        )
    return devices


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn "cpu", "cuda", "cuda:1" or "mps" into a torch.device that exists here.

    Raises ValueError naming the device and listing the ones present.
    """
    text = str(device).strip().lower()
    if text == "cuda":
        text = "cuda:0"
    present = [d.id for d in list_devices()]
    if text not in present:
        raise ValueError(
            f"device {str(device)!r} is not available here; available devices: {', '.join(present)}"
        )
    return torch.device(text)


def device_info(device: torch.device) -> DeviceInfo:
    text = "cuda:0" if str(device) == "cuda" else str(device)
    for info in list_devices():
        if info.id == text:
            return info
    raise ValueError(f"device {text!r} is not available here")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to run in: `dtype` if the device takes it, else the device's default.

    Raises ValueError naming the dtype and the ones the device takes.
    """
    info = device_info(device)
    if dtype is None:
        return DTYPES[info.default_dtype]
    if isinstance(dtype, torch.dtype):
        names = [name for name, value in DTYPES.items() if value == dtype]
        name = names[0] if names else str(dtype)
    else:
        name = dtype.strip().lower().removeprefix("torch.")
        name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(
            name, name
        )
    if name not in info.dtypes:
        raise ValueError(
            f"dtype {str(dtype)!r} is not supported on {info.id}; choose one of: "
            f"{', '.join(info.dtypes)}"
        )
    return DTYPES[name]
