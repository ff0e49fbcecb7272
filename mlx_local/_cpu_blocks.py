"""Decoder blocks with fewer ops per decoded token on MLX's CPU backend (issue 14).

Each MLX op costs about 15-20 us of dispatch on the CPU (allocation,
scheduling, a thread wake-up), and a small model's decoding step is mostly
ops: SmolLM2-135M had 1273 per token. With the native kernels on
(:mod:`mlx_local._native`), the classes swapped in here build each layer from
six native ops plus mlx-lm's KV cache update:

- ``quantized_matmul_multi``: q, k and v of one input, each output already in
  the ``[B, heads, L, head_dim]`` layout mlx-lm's reshape + transpose gives,
  with q and k normed (qwen3's per-head RMSNorm) and rotated (RoPE) in the
  epilogue;
- the attention kernel writing ``[B, L, heads * head_dim]`` directly;
- ``quantized_matmul_residual``: o_proj plus the residual add, with the
  ``post_attention_layernorm`` of the sum as a second output; down_proj
  plus the residual add;
- ``quantized_swiglu``: gate and up with ``silu(gate) * up`` in the epilogue;
- the next block's input RMSNorm.

Measured per decoded token: SmolLM2-135M 1273 ops -> 341, the Qwen3-0.6B
shape 1267 -> 341. The row kernels, the activation preparation, the norm,
RoPE and SiLU code are those of the unfused ops, so every value is the one
the unfused path computes, bit for bit, in exact and int8 modes alike.

They apply when the fused kernels are on (:func:`mlx_local._cpu_fused.fused_on`,
so ``MLX_LOCAL_NATIVE=off`` and ``MLX_LOCAL_FUSED=off`` give the plain
graphs), the input is float32 and the projections are all
:class:`~mlx_local._cpu_kernels.CPUQuantizedLinear` (so not the sharded
layers of a distributed model), quantized alike (affine, same bits and group
size, supported by the native kernel) with no more rows than its native row
limit; RoPE goes into the epilogue for ``nn.RoPE`` and Llama-3 frequencies
with an integer cache offset (not batched caches). Anything else runs
mlx-lm's own code for that part.

The classes are swapped per model, by exact type: the Attention, MLP and
TransformerBlock of mlx-lm's ``llama`` (also Mistral and SmolLM2), ``qwen2``
and ``qwen3``. gemma3 (GELU MLP, scaled queries, sandwich norms) and phi3
(already fused ``qkv_proj`` / ``gate_up_proj``) differ and are left as they are.
"""

from __future__ import annotations

import sys
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import _cpu_fused, _cpu_kernels, _native

__all__ = ["swap_blocks", "FusedAttention", "FusedQKNormAttention", "FusedMLP", "FusedBlock"]

#: mlx-lm model modules whose Attention / MLP have the llama shape (q/k/v/o, gate/up/down)
_LLAMA_LIKE = ("mlx_lm.models.llama", "mlx_lm.models.qwen2")
_QK_NORM = ("mlx_lm.models.qwen3",)


#: False: the swapped classes run mlx-lm's code (for comparisons; the switches users have are _cpu_fused's)
_enabled = True


def _ext() -> Any:
    """The native module when the fused blocks should run, else None."""
    ext = _cpu_fused._ext() if _enabled else None
    return ext if ext is not None and hasattr(ext, "quantized_swiglu") else None


def _alike(x: mx.array, layers: tuple[Any, ...]) -> bool:
    """True if the native kernel takes ``x`` times each of ``layers``, all quantized alike."""
    first = layers[0]
    if x.dtype != mx.float32 or type(first) is not _cpu_kernels.CPUQuantizedLinear or first.mode != "affine":
        return False
    bits, group = first.bits, first.group_size
    for layer in layers[1:]:
        if (
            type(layer) is not _cpu_kernels.CPUQuantizedLinear
            or layer.bits != bits
            or layer.group_size != group
            or layer.mode != "affine"
        ):
            return False
    k = x.shape[-1]
    return (
        all("biases" in layer for layer in layers)
        and _native.supports(bits, group, k)
        and _cpu_kernels._rows(x) <= _cpu_kernels.native_row_limit(k, bits, _cpu_kernels._mode)
    )


def _mode() -> str:
    return "f32" if _cpu_kernels._mode == "exact" else "int8"


def _rope_args(attn: Any, cache: Any) -> dict[str, Any] | None:
    """The RoPE (and qwen3 head norms) of q and k as arguments of the native op, or None if it cannot do them."""
    rope, offset = attn.rope, 0 if cache is None else cache.offset
    if type(offset) is not int:  # batched caches: an array of offsets
        return None
    if type(rope) is _cpu_fused.CPURoPE:
        args: dict[str, Any] = {"rope_base": float(rope.base), "rope_scale": float(rope.scale)}
    elif isinstance(rope, _cpu_fused._FreqsRoPE):
        args = {"rope_freqs": rope._freqs}
    else:
        return None
    args.update(rope_dims=rope.dims, rope_traditional=bool(rope.traditional), rope_offset=offset)
    if attn.qk_norms:
        norms = (attn.q_norm, attn.k_norm)
        if any(type(n) is not _cpu_fused.CPURMSNorm or n["weight"].dtype != mx.float32 for n in norms):
            return None
        args.update(qk_norms=[n["weight"] for n in norms], norm_eps=[float(n.eps) for n in norms])
    return args


def _projections(ext: Any, x: mx.array, attn: Any, rope: dict[str, Any] | None) -> list[mx.array] | None:
    """q, k, v as ``[B, heads, L, head_dim]`` (one native op; with ``rope``, q and k rotated), or None."""
    layers = (attn.q_proj, attn.k_proj, attn.v_proj)
    if x.ndim != 3 or not _alike(x, layers):
        return None
    first = layers[0]
    outs: list[mx.array] = ext.quantized_matmul_multi(
        x,
        [p["weight"] for p in layers],
        [p["scales"] for p in layers],
        [p["biases"] for p in layers],
        [p["bias"] if "bias" in p else None for p in layers],
        [attn.n_heads, attn.n_kv_heads, attn.n_kv_heads],
        first.group_size,
        first.bits,
        _mode(),
        **(rope or {}),
    )
    return outs


def _qkv_rows(ext: Any, x: mx.array, attn: Any, mask: Any, cache: Any) -> mx.array | None:
    """mlx-lm's attention up to o_proj's input ``[B, L, heads * head_dim]``, or None where the native op does not apply."""
    rope = _rope_args(attn, cache)
    qkv = _projections(ext, x, attn, rope)
    if qkv is None:
        return None
    queries, keys, values = qkv
    if rope is None:
        if attn.qk_norms:  # qwen3; over head_dim: the same on [B, heads, L, D] as on [B, L, heads, D]
            queries, keys = attn.q_norm(queries), attn.k_norm(keys)
        offset = 0 if cache is None else cache.offset
        queries, keys = attn.rope(queries, offset=offset), attn.rope(keys, offset=offset)
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    return _cpu_fused.attention_rows(queries, keys, values, cache, attn.scale, mask)


def _residual(ext: Any, x: mx.array, layer: Any, residual: mx.array, norm: Any) -> tuple[mx.array, mx.array | None]:
    """``residual + layer(x)`` and, if ``norm`` is given, ``norm`` of it: one native op where it applies."""
    fits_norm = norm is not None and type(norm) is _cpu_fused.CPURMSNorm and norm["weight"].dtype == mx.float32
    if "bias" not in layer and residual.dtype == mx.float32 and _alike(x, (layer,)):
        outs = ext.quantized_matmul_residual(
            x, layer["weight"], layer["scales"], layer["biases"], residual,
            norm["weight"] if fits_norm else None, float(norm.eps) if fits_norm else 0.0,
            layer.group_size, layer.bits, _mode(),
        )  # fmt: skip
        h = outs[0]
        return h, (outs[1] if fits_norm else None if norm is None else norm(h))
    h = residual + layer(x)
    return h, None if norm is None else norm(h)


class FusedAttention(nn.Module):  # type: ignore[misc]
    """llama / qwen2 / qwen3 attention with q, k and v as one native op (a base for swapped classes)."""

    qk_norms = False  # qwen3's RMSNorm of each query and key head

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        ext = _ext()
        rows = None if ext is None else _qkv_rows(ext, x, self, mask, cache)
        if rows is None:
            out: mx.array = super().__call__(x, mask, cache)
            return out
        y: mx.array = self.o_proj(rows)
        return y

    def with_residual(self, ext: Any, x: mx.array, mask: Any, cache: Any, residual: mx.array, norm: Any) -> tuple[mx.array, mx.array]:
        """``h = residual + self(x, mask, cache)`` and ``norm(h)``, o_proj, the add and the norm as one op."""
        rows = _qkv_rows(ext, x, self, mask, cache)
        if rows is None:
            h = residual + super().__call__(x, mask, cache)
            return h, norm(h)
        h, hn = _residual(ext, rows, self.o_proj, residual, norm)
        assert hn is not None
        return h, hn


class FusedQKNormAttention(FusedAttention):
    """qwen3 attention (RMSNorm of each query and key head) with q, k and v as one native op."""

    qk_norms = True


class FusedMLP(nn.Module):  # type: ignore[misc]
    """The gated MLP ``down(silu(gate(x)) * up(x))`` with gate, up and the SiLU-multiply as one native op."""

    def __call__(self, x: mx.array) -> mx.array:
        ext = _ext()
        gate, up = self.gate_proj, self.up_proj
        if ext is None or "bias" in gate or "bias" in up or not _alike(x, (gate, up)):
            out: mx.array = super().__call__(x)
            return out
        h = ext.quantized_swiglu(
            x, gate["weight"], gate["scales"], gate["biases"], up["weight"], up["scales"], up["biases"],
            gate.group_size, gate.bits, _mode(),
        )  # fmt: skip
        y: mx.array = self.down_proj(h)
        return y

    def with_residual(self, ext: Any, x: mx.array, residual: mx.array) -> mx.array:
        """``residual + self(x)``, down_proj and the add as one op."""
        gate, up = self.gate_proj, self.up_proj
        if "bias" in gate or "bias" in up or not _alike(x, (gate, up)):
            out: mx.array = residual + self(x)
            return out
        h = ext.quantized_swiglu(
            x, gate["weight"], gate["scales"], gate["biases"], up["weight"], up["scales"], up["biases"],
            gate.group_size, gate.bits, _mode(),
        )  # fmt: skip
        return _residual(ext, h, self.down_proj, residual, None)[0]


class FusedBlock(nn.Module):  # type: ignore[misc]
    """mlx-lm's decoder block ``h = x + attn(norm1(x)); h + mlp(norm2(h))`` with the adds and norm2 in the matmuls."""

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        ext = _ext()
        attn, mlp = self.self_attn, self.mlp
        if ext is None or not isinstance(attn, FusedAttention) or not isinstance(mlp, FusedMLP):
            out: mx.array = super().__call__(x, mask, cache)
            return out
        h, hn = attn.with_residual(ext, self.input_layernorm(x), mask, cache, x, self.post_attention_layernorm)
        return mlp.with_residual(ext, hn, h)


_subclasses: dict[type, type] = {}


def _swapped(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s ``__call__`` in front (one subclass per class, made once)."""
    if cls not in _subclasses:
        _subclasses[cls] = type(f"CPU{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _subclasses[cls]


def _classes() -> dict[type, type]:
    """mlx-lm's classes that have the shapes above -> the mixin to put in front of each."""
    table: dict[type, type] = {}
    for name in _LLAMA_LIKE + _QK_NORM:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        attention, mlp, block = (getattr(mod, n, None) for n in ("Attention", "MLP", "TransformerBlock"))
        if isinstance(attention, type):
            table[attention] = FusedQKNormAttention if name in _QK_NORM else FusedAttention
        if isinstance(mlp, type):
            table[mlp] = FusedMLP
        if isinstance(block, type):
            table[block] = FusedBlock
    return table


def _fits(m: nn.Module, mixin: type) -> bool:
    """True if ``m`` has the attributes the mixin's ``__call__`` uses."""
    if mixin is FusedMLP:
        return all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj"))
    if mixin is FusedBlock:
        return all(hasattr(m, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))
    names: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "rope", "n_heads", "n_kv_heads", "scale")
    if mixin is FusedQKNormAttention:
        names += ("q_norm", "k_norm")
    return all(hasattr(m, a) for a in names)


def swap_blocks(module: nn.Module) -> int:
    """Give ``module``'s llama-shaped attention and MLP layers the fused classes, in place; how many."""
    table = _classes()
    swapped = 0
    for _, m in module.named_modules():
        mixin = table.get(type(m))
        if mixin is not None and _fits(m, mixin):
            m.__class__ = _swapped(type(m), mixin)
            swapped += 1
    return swapped
