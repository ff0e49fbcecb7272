"""Shared by the benchmark scripts: the device description, medians, output files."""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import mlx_local  # first: it picks the BLAS before mlx loads

RESULTS = Path(__file__).parent / "results"


def device() -> dict[str, Any]:
    """What the numbers were measured on."""
    from importlib.metadata import version

    import mlx.core as mx

    rt = mlx_local._runtime.current()
    try:
        import os

        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "backend": rt.backend,
        "device": rt.device,
        "processor": rt.processor,
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "memory_bytes": memory,
        "blas": rt.blas,
        "versions": {p: version(p) for p in ("mlx", "mlx-lm", "mlx-local")},
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mlx_default_device": str(mx.default_device()),
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
