"""The loader of mlx_local's native CPU kernels (the extension ``_native_ext``, issue 14).

The extension is built at install time on Linux x86-64 (``setup.py``) into
``mlx_local/_native_lib/`` (not a package: nothing imports it by accident),
and recorded beside it, in ``_native_build.json``, with the mlx version and nanobind ABI
it was built for and its SHA-256. Nothing is loaded before that record is
checked against the running process: a module built for another mlx release,
another nanobind ABI, changed since its build, or a CPU without AVX2 is
refused with a reason, never loaded (a mismatched nanobind module can crash
the process). ``MLX_LOCAL_NATIVE=off`` disables it; ``MLX_LOCAL_NATIVE=int8``
makes :mod:`mlx_local._cpu_kernels` use int8 activations instead of the exact
float32 kernels.

:func:`quantized_matmul` is ``x @ dequantize(w).T`` for MLX affine quantized
weights, by the native kernel where it applies and by ``mx.quantized_matmul``
otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

import mlx.core as mx

from .errors import InvalidOptionError

__all__ = ["Native", "probe", "load", "quantized_matmul", "supports", "MODES", "BITS", "GROUP_SIZES"]

MODULE = "mlx_local._native_ext"
RECORD = "_native_build.json"
#: The kernels' activation modes: exact float32 products, or int8 activations per 32 elements.
MODES = ("exact", "int8")
BITS = (4, 5, 8)
GROUP_SIZES = (32, 64, 128)
_MLX_VERSION = str(getattr(mx, "__version__", ""))
_ARGUMENTS = ("x", "w", "scales", "biases", "group_size", "bits")
_ABI = re.compile(rb"nanobind_[A-Za-z0-9_]*?_a\d+_v\d+(?:_stable)?")


@dataclass(frozen=True)
class Native:
    """What loading the native kernels gave: the module, or why there is none."""

    module: ModuleType | None
    reason: str  # "" when loaded, else e.g. "off: MLX_LOCAL_NATIVE=off"
    isa: str = ""  # "avx2", "avx512vnni", "avxvnni" (int8 kernels)
    threads: int = 0


def _abi_tag(path: Path) -> str:
    tags = sorted({t.decode() for t in _ABI.findall(path.read_bytes())})
    return ";".join(tags)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _check(folder: Path) -> tuple[Path | None, str]:
    """The module file in ``folder`` if its build record matches this process, else why not."""
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        return None, f"not built: Linux x86-64 only, this is {sys.platform} {platform.machine()}"
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return None, "not built: no build record (installed without the build step?)"
    except (OSError, ValueError) as e:
        return None, f"refused: unreadable build record {folder / RECORD}: {e}"
    if not record.get("built"):
        return None, f"not built: {record.get('reason', 'unknown reason')}"
    so = folder / str(record.get("file", ""))
    if not so.is_file():
        return None, f"not built: {so.name} is missing"
    if record.get("mlx") != _MLX_VERSION:
        return None, f"refused: built for mlx {record.get('mlx')}, this is mlx {_MLX_VERSION} (rebuild: ./setup.sh)"
    if record.get("python") != sys.implementation.cache_tag:
        return None, f"refused: built for {record.get('python')}, this is {sys.implementation.cache_tag}"
    if hashlib.sha256(so.read_bytes()).hexdigest() != record.get("sha256"):
        return None, f"refused: {so.name} changed since it was built (SHA-256 differs)"
    core = Path(mx.__file__)
    mine, theirs = _abi_tag(so), _abi_tag(core)
    if not mine or mine != theirs or mine != record.get("nanobind_abi"):
        return None, f"refused: nanobind ABI {mine or '?'} does not match mlx's core.so ({theirs or '?'})"
    flags = _cpu_flags()
    if flags and not {"avx2", "fma", "f16c"} <= flags:
        return None, "unsupported CPU: the kernels need AVX2, FMA and F16C"
    return so, ""


def _self_test(ext: ModuleType) -> str:
    """'' if the kernels agree with mx.quantized_matmul on a small product, else what went wrong."""
    w = mx.random.normal((96, 256), key=mx.random.key(0))
    x = mx.random.normal((3, 256), key=mx.random.key(1))
    for bits in BITS:
        q, s, b = mx.quantize(w, group_size=64, bits=bits)
        ref = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=bits)
        for mode in ("f32", "int8"):
            y = ext.quantized_matmul(x, q, s, b, 64, bits, mode)
            err = cast(float, (mx.abs(y - ref).max() / mx.abs(ref).max()).item())
            if not err < (1e-5 if mode == "f32" else 0.05):
                return f"{bits}-bit {mode} kernel off by {err:.2g} (relative)"
    return ""


def probe(folder: Path | str | None = None) -> Native:
    """Check, load and self-test the native kernels in ``folder`` (default: this package's)."""
    if os.environ.get("MLX_LOCAL_NATIVE", "").strip().lower() == "off":
        return Native(None, "off: MLX_LOCAL_NATIVE=off")
    so, reason = _check(Path(__file__).parent / "_native_lib" if folder is None else Path(folder))
    if so is None:
        return Native(None, reason)
    try:
        spec = importlib.util.spec_from_file_location(MODULE, so)
        if spec is None or spec.loader is None:
            return Native(None, f"failed to load: no loader for {so.name}")
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
        if not ext.cpu_supported():
            return Native(None, "unsupported CPU: the kernels need AVX2, FMA and F16C")
        if ext.BUILT_FOR_MLX != _MLX_VERSION:
            return Native(None, f"refused: compiled against mlx {ext.BUILT_FOR_MLX}, this is mlx {_MLX_VERSION}")
        failed = _self_test(ext)
    except Exception as e:  # an ImportError, a missing symbol, a kernel error: run without it
        return Native(None, f"failed to load: {type(e).__name__}: {e}")
    if failed:
        return Native(None, f"failed self-test: {failed}")
    return Native(ext, "", isa=str(ext.best_isa()), threads=int(ext.num_threads()))


_loaded: Native | None = None


def load() -> Native:
    """The package's native kernels, probed once per process."""
    global _loaded
    if _loaded is None:
        _loaded = probe()
    return _loaded


def supports(bits: int, group_size: int, in_features: int) -> bool:
    """True if the native kernel computes this layer's product (else ``mx.quantized_matmul`` does)."""
    return bits in BITS and group_size in GROUP_SIZES and in_features % 64 == 0


def quantized_matmul(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array | None,
    *,
    group_size: int,
    bits: int,
    mode: str = "exact",
) -> mx.array:
    """``x @ dequantize(w).T`` for MLX affine quantized ``w`` (``transpose=True`` layout).

    The native kernel computes it when it is loaded and supports the layer,
    ``mx.quantized_matmul`` otherwise. ``mode`` is ``"exact"`` (float32
    products) or ``"int8"`` (activations quantized to int8 per 32 elements).
    """
    if mode not in MODES:
        raise InvalidOptionError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}", option="mode")
    ext = load().module
    if ext is not None and biases is not None and x.ndim >= 1 and supports(bits, group_size, x.shape[-1]):
        try:
            y: mx.array = ext.quantized_matmul(x, w, scales, biases, group_size, bits, "f32" if mode == "exact" else "int8")
            return y
        except ValueError as e:  # the op names the culprit first: "quantized_matmul: scales must be ..."
            words = str(e).split(": ", 1)[-1].split()
            culprit = words[0] if words and words[0] in _ARGUMENTS else "x"
            raise InvalidOptionError(str(e), option=culprit) from None
    return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size, bits=bits)
