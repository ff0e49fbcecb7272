"""What this machine offers a model: backend, processor, memory, BLAS.

:func:`device_info` reads the facts; the usable memory follows these rules:

- on a Mac (Metal), Metal's recommended working set;
- on Linux, the available RAM (``MemAvailable`` in ``/proc/meminfo``), or the
  room left under this process's cgroup (v2) memory limit if that is smaller;
- elsewhere, three quarters of the physical memory;
- in every case capped by ``MLX_LOCAL_MEMORY_LIMIT`` (e.g. ``8GB``) if set.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import _runtime as runtime
from ._units import format_bytes, parse_bytes
from .errors import InvalidOptionError

__all__ = ["DeviceInfo", "device_info"]


@dataclass(frozen=True)
class DeviceInfo:
    """What this machine offers a model.

    Attributes:
        backend: ``"metal"``, ``"cuda"`` or ``"cpu"``.
        processor: the chip or CPU name.
        total_memory: physical memory in bytes.
        usable_memory: what a model may use: Metal's recommended working set
            on a Mac, the available RAM elsewhere (within a cgroup limit if
            there is one), capped by ``MLX_LOCAL_MEMORY_LIMIT`` if set.
        usable_source: where ``usable_memory`` comes from.
        blas: the BLAS behind CPU matmuls.
        cpu_kernels: which quantized matmul kernels run on the CPU (mlx_local's
            native ones, or why not: see ``MLX_LOCAL_NATIVE``).
    """

    backend: str
    processor: str
    total_memory: int
    usable_memory: int
    usable_source: str
    blas: str
    cpu_kernels: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.processor} ({self.backend}), {format_bytes(self.total_memory)} memory, "
            f"{format_bytes(self.usable_memory)} usable ({self.usable_source}), BLAS: {self.blas}"
            + (f", quantized kernels: {self.cpu_kernels}" if self.cpu_kernels else "")
        )


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return out


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, if it has one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def _total_memory() -> int:
    """Physical memory in bytes, from the OS (0 if it will not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _usable(backend: str, info: dict[str, Any], total: int) -> tuple[int, str]:
    """The usable memory and where it comes from, before ``MLX_LOCAL_MEMORY_LIMIT``."""
    if backend == "metal" and info.get("max_recommended_working_set_size"):
        return int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    meminfo = _meminfo() if sys.platform.startswith("linux") else {}
    if "MemAvailable" in meminfo:
        usable, source = meminfo["MemAvailable"], "available RAM"
        room = _cgroup_room()
        if room is not None and room < usable:
            usable, source = room, "room left under the cgroup memory limit"
        return usable, source
    return int(total * 0.75), "three quarters of RAM"


def _capped(usable: int, source: str) -> tuple[int, str]:
    """``usable`` capped by ``MLX_LOCAL_MEMORY_LIMIT`` if that is set and smaller."""
    limit = os.environ.get("MLX_LOCAL_MEMORY_LIMIT", "").strip()
    if not limit:
        return usable, source
    try:
        cap = parse_bytes(limit)
    except ValueError as e:
        raise InvalidOptionError(f"MLX_LOCAL_MEMORY_LIMIT: {e}", option="MLX_LOCAL_MEMORY_LIMIT") from None
    if cap < usable:
        return cap, f"MLX_LOCAL_MEMORY_LIMIT={limit}"
    return usable, source


def device_info() -> DeviceInfo:
    """The backend, processor, memory and BLAS of this machine.

    ``MLX_LOCAL_MEMORY_LIMIT`` (e.g. ``8GB``) caps the usable memory, to keep
    room for other programs.

    Raises:
        InvalidOptionError: ``MLX_LOCAL_MEMORY_LIMIT`` is not a size.
    """
    import mlx.core as mx

    rt = runtime.current()
    info: dict[str, Any] = {}
    try:
        info = dict(mx.device_info())
    except Exception:  # older MLX
        pass
    total = int(info.get("memory_size") or _total_memory())
    usable, source = _capped(*_usable(rt.backend, info, total))
    from ._cpu_kernels import native_status

    kernels = native_status() if rt.backend == "cpu" else ""
    return DeviceInfo(rt.backend, rt.processor, total, usable, source, rt.blas, kernels)
