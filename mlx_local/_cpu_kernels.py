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
x86-64), 4-, 5- and 8-bit layers go to them instead, from one row (decoding)
up to :func:`native_row_limit` rows (chat turns, short and medium prompts):
SIMD, threaded over the cores, each unpacked weight reused for up to 8 rows
at once, exact float32 by default (``MLX_LOCAL_NATIVE=int8``: int8
activations, faster, logits within about 1%). Beyond that limit a prompt
chunk is dequantized for BLAS: the dequantizing (about 4 ns a weight here,
whatever the row count) is then paid back by BLAS's faster multiply-adds.
The limit was measured (``benchmarks/kernels.py layers``, results in
``benchmarks/results/kernels*.json``): dequantize + BLAS time over the native
kernel's, 4-bit g64, medians of 5 interleaved runs on the loaded 2-core
machine (the ratios are noisy, about +-30%):

=====================  =====  =====  =====  =====  =====  ======  ======
layer (K x N)           rows:    64    128    256    512    1024    2048
=====================  =====  =====  =====  =====  =====  ======  ======
SmolLM2 q/o 576x576    exact  0.56   1.35   1.73   1.10    0.55    0.63
SmolLM2 up 576x1536    exact  2.17   1.27   0.98   1.31    0.68    0.67
SmolLM2 down 1536x576  exact  1.89   0.83   0.75   0.52    0.53    0.50
Qwen3 q 1024x2048      exact  3.92   2.17   2.36   0.98    0.70    0.95
Qwen3 up 1024x3072     exact  4.80   2.39   1.55   1.15    1.19    0.76
Qwen3 o 2048x1024      exact  2.23   1.57   0.81   0.58    0.46    0.47
Qwen3 down 3072x1024   exact  1.97   1.22   0.74   0.61    0.52    0.57
Qwen3 up 1024x3072     int8   9.80   3.82   2.25   1.81    1.46    0.96
Qwen3 down 3072x1024   int8   6.13   2.40   1.57   1.31    1.10    1.12
=====================  =====  =====  =====  =====  =====  ======  ======

Dequantizing costs the same at 4 and 8 bits and about four times more at 5
bits (MLX's 5-bit unpacking), which moves the 5-bit break-even up as much
(a 5-bit layer stays native up to 2048 rows). The break-even depends on the
input width K, not on N: while 8 rows of x
(8 x K floats) fit the 32 KB L1 cache (K <= 1024) the native kernel runs
near BLAS's speed and wins up to ~512 rows (exact) / ~1024 (int8); wider
layers (K > 1024, the MLP's down projection, Qwen3's o_proj) break even
near 200 / 512 rows. :func:`native_row_limit` encodes that; near the limit
both ways cost about the same, and the native one allocates no float copy
of the layer. :func:`native_status` says which kernels run.
"""

from __future__ import annotations

import os
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import _native
from .errors import InvalidOptionError

__all__ = ["optimize_for_cpu", "swap_classes", "native_status", "set_native_mode", "native_row_limit", "native_mode", "PREFILL_ROWS", "SPLIT_ROWS"]

#: Without the native kernels: with at least this many input rows, dequantize and use BLAS.
PREFILL_ROWS = 2
#: Layers with at least this many output rows are split over two streams when decoding (MLX's kernel).
SPLIT_ROWS = 512
#: Inputs up to this wide keep 8 rows of x in L1 (32 KB): the native kernel's fast case (see the table above).
_NARROW_K = 1024
#: (exact, int8) row limits of the native kernel for narrow and wide inputs, from the table above.
_LIMITS = {"exact": (512, 192), "int8": (1024, 512)}
#: mx.dequantize's cost per weight relative to 4 bits (one thread, 576x1536: 3.6 ms at 4 and 8 bits, 16 ms at 5).
_DEQUANT_COST = {4: 1, 5: 4, 8: 1}

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


def native_mode() -> str:
    """The mode the native kernels run in: ``"exact"``, ``"int8"``, or ``"off"`` (also when they are not loaded)."""
    return _mode if _native_on() else "off"


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


def native_row_limit(in_features: int, bits: int, mode: str = "exact") -> int:
    """Up to how many input rows the native kernel beats dequantize + BLAS on a layer (measured, see above).

    ``mode`` is the native mode, ``"exact"`` or ``"int8"``. The native kernel runs at about the same
    speed at 4, 5 and 8 bits, but MLX dequantizes 5 bits four times slower: the break-even moves up as much.
    """
    narrow, wide = _LIMITS["int8" if mode == "int8" else "exact"]
    return (narrow if in_features <= _NARROW_K else wide) * _DEQUANT_COST.get(bits, 1)


def _qmm(x: mx.array, layer: Any) -> mx.array:
    """``x @ W.T`` for a quantized layer's W, the fastest way on the CPU (the one place that decides)."""
    biases = layer.get("biases")
    rows = _rows(x)
    k = x.shape[-1]
    if (
        biases is not None
        and _native.supports(layer.bits, layer.group_size, k)
        and rows <= native_row_limit(k, layer.bits, _mode)
        and _native_on()
    ):
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


def swap_classes(module: nn.Module, classes: dict[type, type]) -> int:
    """Give each submodule whose exact type is a key of ``classes`` the class it maps to, in place; how many."""
    swapped = 0
    for _, m in module.named_modules():
        cls = classes.get(type(m))
        if cls is not None:
            m.__class__ = cls
            swapped += 1
    return swapped


def optimize_for_cpu(module: nn.Module) -> int:
    """Swap ``module``'s affine quantized layers for the CPU versions, in place.

    Returns how many layers were swapped.
    """
    swapped = swap_classes(module, {nn.QuantizedLinear: CPUQuantizedLinear, nn.QuantizedEmbedding: CPUQuantizedEmbedding})
    from ._cpu_fused import install  # fused RMSNorm, RoPE and attention (issue 14's floor)

    install(module)
    return swapped
