"""Fused RMSNorm, RoPE and attention for MLX's CPU backend (issue 14's "floor").

On the CPU, ``mx.fast.rms_norm``, ``mx.fast.rope`` and
``mx.fast.scaled_dot_product_attention`` have no kernels of their own: each
runs as MLX's composed fallback, a handful of scalar ops, and each op costs
a dispatch. Measured per decoded token on SmolLM2-135M 4-bit (30 layers), the
norms took about 5 ms and the attention 9 ms of the ~27 ms that remained
after the matrix products; and the attention fallback materialises every
score of a long prompt (a 4096-token prompt: 9 x 2048 x 4096 floats per
layer and chunk).

With mlx_local's native kernels loaded (:mod:`mlx_local._native`), a model
prepared by :func:`install` computes each of them as one native op, threaded
over the cores: RMSNorm over rows; RoPE with its angles computed once per
position; attention tiled (blocks of queries against blocks of keys, online
softmax, blocks past the causal limit skipped), never the full score matrix;
for one query (decoding), the keys split over the threads. Everything else
runs as before: other masks, attention sinks, quantized KV caches, array
offsets (batched caches) or shapes the kernels do not take go to the mlx-lm
code they replace. ``MLX_LOCAL_NATIVE=off`` (or ``set_native_mode("off")``)
turns them off with the matmul kernels; ``MLX_LOCAL_FUSED=off`` (or
:func:`set_fused`) only these.

Layers are swapped per model (``nn.RMSNorm``, ``nn.RoPE``, mlx-lm's
gemma RMSNorm and Llama-3 RoPE become subclasses, as
:mod:`mlx_local._cpu_kernels` does for the quantized layers); attention is
mlx-lm's ``scaled_dot_product_attention``, which every architecture we ship
(llama, qwen2, qwen3, gemma3, phi3, mistral) imports from
``mlx_lm.models.base``: it is replaced there and in the model modules
already imported, by a function that calls the original for anything but
the CPU with the kernels on.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

from . import _cpu_kernels, _native

__all__ = ["install", "set_fused", "fused_on", "scaled_dot_product_attention", "attention_rows"]

_FLOATS = (mx.float32, mx.bfloat16, mx.float16)


def _env_on() -> bool:
    return os.environ.get("MLX_LOCAL_FUSED", "").strip().lower() != "off"


_enabled = _env_on()


def set_fused(enabled: bool) -> bool:
    """Use the fused kernels (when the native kernels are on); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def _ext() -> Any:
    """The native module when the fused kernels should run, else None."""
    if not _enabled or _cpu_kernels._mode == "off":
        return None
    return _native.load().module


def fused_on() -> bool:
    """True if the fused kernels run on this process's CPU now."""
    ext = _ext()
    return ext is not None and hasattr(ext, "sdpa")


# ------------------------------------------------------------------ layers


class CPURMSNorm(nn.RMSNorm):  # type: ignore[misc]
    def __call__(self, x: mx.array) -> mx.array:
        ext = _ext()
        if ext is not None and x.dtype in _FLOATS:
            y: mx.array = ext.rms_norm(x, self["weight"], self.eps)
            return y
        out: mx.array = super().__call__(x)
        return out


class _OnePlusRMSNorm(nn.Module):  # type: ignore[misc]
    """The ``x * rsqrt(mean(x^2) + eps) * (1 + weight)`` norm of gemma models (a base for swapped classes)."""

    def __call__(self, x: mx.array) -> mx.array:
        ext = _ext()
        if ext is not None and x.dtype in _FLOATS:
            y: mx.array = ext.rms_norm(x, 1.0 + self["weight"], self.eps)
            return y
        out: mx.array = mx.fast.rms_norm(x, 1.0 + self["weight"], self.eps)
        return out


class CPURoPE(nn.RoPE):  # type: ignore[misc]
    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        ext = _ext()
        if ext is not None and type(offset) is int and x.ndim == 4 and x.dtype in _FLOATS:
            y: mx.array = ext.rope(x, self.dims, self.traditional, float(self.base), float(self.scale), offset)
            return y
        out: mx.array = super().__call__(x, offset)
        return out


class _FreqsRoPE(nn.Module):  # type: ignore[misc]
    """RoPE from precomputed frequencies (mlx-lm's Llama-3 RoPE; a base for swapped classes)."""

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        ext = _ext()
        if ext is not None and type(offset) is int and x.ndim == 4 and x.dtype in _FLOATS:
            y: mx.array = ext.rope(x, self.dims, self.traditional, None, 1.0, offset, self._freqs)
            return y
        out: mx.array = mx.fast.rope(
            x, self.dims, traditional=self.traditional, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )
        return out


_subclasses: dict[type, type] = {}


def _swapped(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s ``__call__`` (one subclass per class, made once)."""
    if cls not in _subclasses:
        _subclasses[cls] = type(f"CPU{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _subclasses[cls]


def _swap_layers(module: nn.Module) -> int:
    from mlx_lm.models import rope_utils

    gemma_norms = tuple(
        sys.modules[name].RMSNorm
        for name in ("mlx_lm.models.gemma3_text", "mlx_lm.models.gemma2", "mlx_lm.models.gemma")
        if name in sys.modules and hasattr(sys.modules[name], "RMSNorm")
    )
    swapped = 0
    for _, m in module.named_modules():
        cls = type(m)
        if cls is nn.RMSNorm:
            m.__class__ = CPURMSNorm
        elif cls is nn.RoPE:
            m.__class__ = CPURoPE
        elif cls in gemma_norms and "weight" in m and hasattr(m, "eps"):
            m.__class__ = _swapped(cls, _OnePlusRMSNorm)
        elif cls is rope_utils.Llama3RoPE:
            m.__class__ = _swapped(cls, _FreqsRoPE)
        else:
            continue
        swapped += 1
    return swapped


# ------------------------------------------------------------------ attention

_original: Callable[..., mx.array] | None = None
_SDPA = "scaled_dot_product_attention"  # the name the model modules import from mlx_lm.models.base


def _sdpa_ext(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, mask: Any, sinks: Any) -> Any:
    """The native module if its attention kernel computes this attention, else None."""
    ext = _ext()
    if (
        ext is not None
        and sinks is None
        and not hasattr(cache, "bits")
        and (mask is None or isinstance(mask, mx.array) or (isinstance(mask, str) and mask == "causal"))
        and queries.ndim == 4
        and keys.ndim == 4
        and values.ndim == 4
        and queries.shape[-1] % 16 == 0
        and keys.shape[-1] == queries.shape[-1] == values.shape[-1]
        and queries.shape[1] % keys.shape[1] == 0
        and queries.dtype in _FLOATS
        and mx.default_device() == mx.cpu
    ):
        return ext
    return None


def _fused_sdpa(ext: Any, queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Any, flat: bool) -> mx.array:
    if isinstance(mask, mx.array):
        y: mx.array = ext.sdpa(queries, keys, values, float(scale), False, mask, flat)
    else:
        y = ext.sdpa(queries, keys, values, float(scale), mask is not None, None, flat)
    return y


def _original_sdpa() -> Callable[..., mx.array]:
    if _original is None:  # not installed: mlx-lm's own
        from mlx_lm.models import base

        return base.scaled_dot_product_attention  # type: ignore[no-any-return]
    return _original


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: Any,
    sinks: Any = None,
) -> mx.array:
    """mlx-lm's ``scaled_dot_product_attention``, by the fused kernel where it applies."""
    ext = _sdpa_ext(queries, keys, values, cache, mask, sinks)
    if ext is not None:
        return _fused_sdpa(ext, queries, keys, values, scale, mask, False)
    return _original_sdpa()(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)


def attention_rows(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float, mask: Any) -> mx.array:
    """The attention as ``[B, L, heads * head_dim]``: mlx-lm's SDPA, then its ``transpose(0, 2, 1, 3).reshape``.

    The fused kernel writes that layout itself (one op instead of three).
    """
    ext = _sdpa_ext(queries, keys, values, cache, mask, None)
    if ext is not None:
        return _fused_sdpa(ext, queries, keys, values, scale, mask, True)
    B, _, L, _ = queries.shape
    out = _original_sdpa()(queries, keys, values, cache=cache, scale=scale, mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(B, L, -1)


def _patch_attention() -> None:
    global _original
    from mlx_lm.models import base

    if _original is None:
        _original = base.scaled_dot_product_attention
    base.scaled_dot_product_attention = scaled_dot_product_attention
    for name, mod in list(sys.modules.items()):
        if name.startswith("mlx_lm.models.") and getattr(mod, _SDPA, None) is _original:
            setattr(mod, _SDPA, scaled_dot_product_attention)


def install(module: nn.Module) -> int:
    """Prepare ``module`` (an mlx-lm model on the CPU) for the fused kernels; returns the layers swapped.

    Does nothing without the native kernels (or with them off). The swapped
    layers and the attention check at every call whether the kernels are on,
    so :func:`set_fused` and ``set_native_mode`` take effect at the next step.
    """
    ext = _native.load().module
    if ext is None or not hasattr(ext, "sdpa"):
        return 0
    _patch_attention()
    from ._cpu_blocks import swap_blocks  # q/k/v and gate/up as one native op each

    return _swap_layers(module) + swap_blocks(module)
