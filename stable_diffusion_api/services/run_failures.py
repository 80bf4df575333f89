"""How a run that raised ends: the failure kind and the message a job (or an engine task) is
recorded with. By exception type and name only, so torch need not be imported."""

from __future__ import annotations

from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import FailureKind


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether the engine ran out of device memory: torch's `OutOfMemoryError` (CUDA), or a
    RuntimeError saying so (MPS, the CPU allocator). By name, so torch need not be imported."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def failure_of(exc: Exception) -> tuple[FailureKind, str]:
    """The kind and the message a run that raised `exc` ends with (JobCanceled aside)."""
    if isinstance(exc, DatabaseUnavailable):  # not the inputs' fault
        return FailureKind.INTERNAL, f"internal error: {exc.reason}"
    if isinstance(exc, (ValueError, DomainError)):  # the engine or a check refused the inputs
        return FailureKind.INVALID_INPUT, str(exc)
    # The message is worded as it always was; the kind tells the two apart.
    message = f"internal error: {type(exc).__name__}: {exc}"
    return FailureKind.OUT_OF_MEMORY if is_out_of_memory(exc) else FailureKind.INTERNAL, message
