"""Faster quantized layers for MLX's CPU backend.

MLX's CPU quantized matmul is a plain loop: fine for one token, very slow for
many. Measured on SmolLM2-135M's 576x1536 4-bit projection on the 2-core dev
machine (float32, OpenBLAS loaded):

=========================  ==========
38 rows, quantized_matmul  30.0 ms
38 rows, dequantize + BLAS  2.7 ms
1 row, quantized_matmul     0.85 ms
1 row, dequantize + BLAS    1.5 ms
=========================  ==========

So on the CPU the quantized layers are swapped for subclasses that dequantize
the weight for one BLAS matmul when several rows come at once (prompt
processing), and keep MLX's quantized kernel, split over two CPU streams for
large layers, for single-token decoding. The weights themselves are not
touched: memory stays that of the quantized model, and saving, loading and
``mlx_lm`` see ordinary ``QuantizedLinear`` parameters.

With mlx_local's native kernels loaded (:mod:`mlx_local._native`, Linux
x86-64), products of up to :data:`NATIVE_ROWS` rows (decoding, short prompts)
of 4-, 5- and 8-bit layers go to them instead: SIMD, threaded over the cores,
exact float32 by default (``MLX_LOCAL_NATIVE=int8``: int8 activations, faster,
logits within about 1%). :func:`native_status` says which kernels run.
"""

from __future__ import annotations

import os
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import _native
from .errors import InvalidOptionError

__all__ = ["optimize_for_cpu", "native_status", "set_native_mode", "PREFILL_ROWS", "SPLIT_ROWS", "NATIVE_ROWS"]

#: With at least this many input rows, dequantize and use BLAS.
PREFILL_ROWS = 2
#: Layers with at least this many output rows are split over two streams when decoding.
SPLIT_ROWS = 512
#: Products of at most this many rows use the native kernels, when they are loaded.
NATIVE_ROWS = 8

_ISA_NAMES = {"avx2": "AVX2", "avx512vnni": "AVX-512 VNNI", "avxvnni": "AVX-VNNI"}


def _mode_from_env() -> str:
    value = os.environ.get("MLX_LOCAL_NATIVE", "").strip().lower()
    return value if value in ("off", "int8", "exact") else "exact"


#: "exact", "int8" or "off" (see set_native_mode)
_mode = _mode_from_env()


def set_native_mode(mode: str) -> str:
    """Use the native kernels in ``mode``: ``"exact"`` (float32), ``"int8"`` or ``"off"``; returns the previous mode.

    Takes effect at the next forward pass of every optimized model.
    """
    global _mode
    if mode not in ("exact", "int8", "off"):
        raise InvalidOptionError(f"native mode must be 'exact', 'int8' or 'off', not {mode!r}", option="mode")
    previous, _mode = _mode, mode
    return previous


def _native_on() -> bool:
    return _mode != "off" and _native.load().module is not None


def native_status() -> str:
    """Which quantized matmul kernels run on the CPU, in a few words.

    E.g. ``"native AVX2 float32, 2 threads"``, ``"native AVX-512 VNNI int8, 2 threads"``,
    ``"off: MLX_LOCAL_NATIVE=off"`` or ``"not built: cmake not found ..."``.
    """
    if _mode == "off":
        return "off: MLX_LOCAL_NATIVE=off" if _mode_from_env() == "off" else "off: set_native_mode('off')"
    native = _native.load()
    if native.module is None:
        return native.reason
    isa = "AVX2" if _mode == "exact" else _ISA_NAMES.get(native.isa, native.isa)
    kind = "float32" if _mode == "exact" else "int8"
    return f"native {isa} {kind}, {native.threads} thread{'s' if native.threads != 1 else ''}"


_streams: tuple[Any, Any] | None = None


def _two_streams() -> tuple[Any, Any]:
    global _streams
    if _streams is None:
        _streams = (mx.new_stream(mx.cpu), mx.new_stream(mx.cpu))
    return _streams


def _rows(x: mx.array) -> int:
    n = 1
    for d in x.shape[:-1]:
        n *= d
    return n


def _qmm(x: mx.array, layer: Any) -> mx.array:
    """``x @ W.T`` for a quantized layer's W, the fastest way on the CPU."""
    biases = layer.get("biases")
    rows = _rows(x)
    if rows <= NATIVE_ROWS and biases is not None and _native.supports(layer.bits, layer.group_size, x.shape[-1]) and _native_on():
        return _native.quantized_matmul(
            x, layer.weight, layer.scales, biases, group_size=layer.group_size, bits=layer.bits, mode=_mode
        )
    if rows >= PREFILL_ROWS:
        w = mx.dequantize(layer.weight, layer.scales, biases, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
        return x @ w.T

    def part(sl: slice, stream: Any = None) -> mx.array:
        return mx.quantized_matmul(
            x,
            layer.weight[sl],
            layer.scales[sl],
            None if biases is None else biases[sl],
            transpose=True,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
            stream=stream,
        )

    n = layer.weight.shape[0]
    if n >= SPLIT_ROWS:
        s1, s2 = _two_streams()
        half = n // 2
        return mx.concatenate([part(slice(0, half), s1), part(slice(half, n), s2)], axis=-1)
    return part(slice(0, n))


class CPUQuantizedLinear(nn.QuantizedLinear):  # type: ignore[misc]
    def __call__(self, x: mx.array) -> mx.array:
        if self.mode != "affine":
            out: mx.array = super().__call__(x)
            return out
        y = _qmm(x, self)
        if "bias" in self:
            y = y + self["bias"]
        return y


class CPUQuantizedEmbedding(nn.QuantizedEmbedding):  # type: ignore[misc]
    def as_linear(self, x: mx.array) -> mx.array:
        if self.mode != "affine":
            out: mx.array = super().as_linear(x)
            return out
        return _qmm(x, self)


def optimize_for_cpu(module: nn.Module) -> int:
    """Swap ``module``'s affine quantized layers for the CPU versions, in place.

    Returns how many layers were swapped.
    """
    swapped = 0
    for _, m in module.named_modules():
        if type(m) is nn.QuantizedLinear:
            m.__class__ = CPUQuantizedLinear
            swapped += 1
        elif type(m) is nn.QuantizedEmbedding:
            m.__class__ = CPUQuantizedEmbedding
            swapped += 1
    from ._cpu_fused import install  # fused RMSNorm, RoPE and attention (issue 14's floor)

    install(module)
    return swapped
