"""The fused attention projections and MLP of mlx_local._cpu_blocks (issue 14's node count).

The native ops against the unfused native matmuls (bit for bit: the same row
kernels) and against float64 references; whole models (tiny quantized llama,
qwen3 and qwen2-style biases, SmolLM2) giving the very logits of the unfused
path while running fewer ops; the paths where the fused classes must step
aside (other quantizations, rows above the native limit, the switches off).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_local
from mlx_local import _cpu_blocks, _cpu_fused, _cpu_kernels


def _weights(n: int, k: int, bits: int, seed: int, group: int = 64) -> tuple[mx.array, ...]:
    w = mx.random.normal((n, k), key=mx.random.key(seed)) * 0.1
    return tuple(mx.quantize(w, group_size=group, bits=bits))


def _dequantized(q: tuple[mx.array, ...], bits: int, group: int = 64) -> np.ndarray:
    return np.asarray(mx.dequantize(*q, group_size=group, bits=bits), dtype=np.float64)


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("mode", ["f32", "int8"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 1), (2, 9)])
def test_multi_is_the_separate_matmuls_bit_for_bit(ext, bits, mode, shape):
    b, length, k = shape[0], shape[1], 256
    x = mx.random.normal((b, length, k), key=mx.random.key(7))
    heads, d = (4, 2, 2), 32
    projections = [_weights(h * d, k, bits, seed=i) for i, h in enumerate(heads)]
    bias = [mx.random.normal((heads[0] * d,), key=mx.random.key(9)), None, None]
    outs = ext.quantized_matmul_multi(
        x, [p[0] for p in projections], [p[1] for p in projections], [p[2] for p in projections], bias,
        list(heads), 64, bits, mode,
    )  # fmt: skip
    for i, (p, h) in enumerate(zip(projections, heads)):
        alone = ext.quantized_matmul(x, *p, 64, bits, mode)
        if bias[i] is not None:
            alone = alone + bias[i]
        expected = alone.reshape(b, length, h, d).transpose(0, 2, 1, 3)
        assert outs[i].shape == (b, h, length, d)
        assert mx.array_equal(outs[i], expected).item(), f"projection {i}"
    # and the numbers themselves: float64 x @ W.T (exact mode: float32 rounding only)
    ref = np.asarray(x, dtype=np.float64) @ _dequantized(projections[1], bits).T
    got = np.asarray(outs[1].transpose(0, 2, 1, 3).reshape(b, length, -1), dtype=np.float64)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < (1e-5 if mode == "f32" else 0.05)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("length,offset", [(1, 17), (6, 0), (3, 40)])
@pytest.mark.parametrize("kind", ["base", "freqs", "norms"])
def test_multi_rope_epilogue_is_the_norms_and_rope_ops_bit_for_bit(ext, traditional, length, offset, kind):
    x = mx.random.normal((2, length, 128), key=mx.random.key(3))
    heads, d = (4, 2, 2), 32
    p = [_weights(h * d, 128, 4, seed=10 + i) for i, h in enumerate(heads)]
    plain = ext.quantized_matmul_multi(x, [q[0] for q in p], [q[1] for q in p], [q[2] for q in p], [None] * 3,
                                       list(heads), 64, 4, "f32")  # fmt: skip
    freqs = mx.random.uniform(shape=(12,), key=mx.random.key(4)) * 100 + 1
    norms = [mx.random.uniform(shape=(d,), key=mx.random.key(5 + i)) + 0.5 for i in range(2)]
    extra: dict[str, object] = {"rope_freqs": freqs} if kind == "freqs" else {"rope_base": 10000.0, "rope_scale": 0.5}
    if kind == "norms":
        extra.update(qk_norms=norms, norm_eps=[1e-6, 1e-5])
    fused = ext.quantized_matmul_multi(x, [q[0] for q in p], [q[1] for q in p], [q[2] for q in p], [None] * 3,
                                       list(heads), 64, 4, "f32", rope_dims=24, rope_traditional=traditional,
                                       rope_offset=offset, **extra)  # fmt: skip
    for i in range(2):
        y = ext.rms_norm(plain[i], norms[i], [1e-6, 1e-5][i]) if kind == "norms" else plain[i]
        if kind == "freqs":
            expected = ext.rope(y, 24, traditional, None, 1.0, offset, freqs)
        else:
            expected = ext.rope(y, 24, traditional, 10000.0, 0.5, offset)
        assert fused[i].shape == expected.shape
        assert mx.array_equal(fused[i], expected).item(), i
    assert mx.array_equal(fused[2], plain[2]).item()


def test_multi_flat_outputs_and_strided_input(ext):
    """heads 0: plain [..., N] outputs; a transposed (non-contiguous) x is read as its values."""
    x = mx.random.normal((5, 3, 128), key=mx.random.key(1)).transpose(1, 0, 2)
    p = [_weights(96, 128, 4, seed=2), _weights(64, 128, 4, seed=3)]
    outs = ext.quantized_matmul_multi(x, [q[0] for q in p], [q[1] for q in p], [q[2] for q in p], [None, None],
                                      [0, 0], 64, 4, "f32")  # fmt: skip
    for q, y in zip(p, outs):
        assert y.shape == (3, 5, q[0].shape[0])
        assert mx.array_equal(y, ext.quantized_matmul(mx.contiguous(x), *q, 64, 4, "f32")).item()


@pytest.mark.parametrize("mode", ["f32", "int8"])
@pytest.mark.parametrize("rows", [1, 7])
def test_swiglu_is_mlx_lms_gate_up_and_silu_multiply_bit_for_bit(ext, mode, rows):
    from mlx_lm.models.activations import swiglu

    x = mx.random.normal((1, rows, 192), key=mx.random.key(4)) * 3
    g, u = _weights(384, 192, 4, seed=5), _weights(384, 192, 4, seed=6)
    y = ext.quantized_swiglu(x, *g, *u, 64, 4, mode)
    expected = swiglu(ext.quantized_matmul(x, *g, 64, 4, mode), ext.quantized_matmul(x, *u, 64, 4, mode))
    assert y.shape == (1, rows, 384)
    assert mx.array_equal(y, expected).item()


@pytest.mark.parametrize("mode", ["f32", "int8"])
@pytest.mark.parametrize("rows", [1, 5])
def test_residual_is_the_add_and_the_norm_bit_for_bit(ext, mode, rows):
    x = mx.random.normal((1, rows, 256), key=mx.random.key(1))
    residual = mx.random.normal((1, rows, 128), key=mx.random.key(2))
    weight = mx.random.uniform(shape=(128,), key=mx.random.key(3)) + 0.5
    p = _weights(128, 256, 5, seed=4)
    h, hn = ext.quantized_matmul_residual(x, *p, residual, weight, 1e-5, 64, 5, mode)
    expected = residual + ext.quantized_matmul(x, *p, 64, 5, mode)
    assert mx.array_equal(h, expected).item()
    assert mx.array_equal(hn, ext.rms_norm(expected, weight, 1e-5)).item()
    (alone,) = ext.quantized_matmul_residual(x, *p, residual.transpose(0, 1, 2), None, 0.0, 64, 5, mode)
    assert mx.array_equal(alone, expected).item()
    # a strided residual is read as its values
    wide = mx.random.normal((1, rows, 256), key=mx.random.key(5))
    (strided,) = ext.quantized_matmul_residual(x, *p, wide[..., ::2], None, 0.0, 64, 5, mode)
    assert mx.array_equal(strided, mx.contiguous(wide[..., ::2]) + ext.quantized_matmul(x, *p, 64, 5, mode)).item()


def test_attention_rows_is_the_transposed_attention(ext):
    q = mx.random.normal((2, 3, 4, 32), key=mx.random.key(1)).transpose(0, 2, 1, 3)
    k = mx.random.normal((2, 2, 9, 32), key=mx.random.key(2))
    v = mx.random.normal((2, 2, 9, 32), key=mx.random.key(3))
    for mask in (None, "causal"):
        rows = _cpu_fused.attention_rows(q, k, v, None, 0.2, mask)
        y = _cpu_fused.scaled_dot_product_attention(q, k, v, None, 0.2, mask)
        assert rows.shape == (2, 3, 128)
        assert mx.array_equal(rows, y.transpose(0, 2, 1, 3).reshape(2, 3, -1)).item()


def test_ops_name_bad_arguments(ext):
    x = mx.zeros((1, 1, 128))
    g = _weights(64, 128, 4, seed=0)
    with pytest.raises(ValueError, match="quantized_matmul_multi: heads"):
        ext.quantized_matmul_multi(x, [g[0]], [g[1]], [g[2]], [None], [3], 64, 4, "f32")
    with pytest.raises(ValueError, match="quantized_swiglu: the gate and up"):
        ext.quantized_swiglu(x, *g, *_weights(128, 128, 4, seed=1), 64, 4, "f32")
    with pytest.raises(ValueError, match="quantized_swiglu: w of shape"):
        ext.quantized_swiglu(mx.zeros((1, 64)), *g, *g, 64, 4, "f32")
    with pytest.raises(ValueError, match="quantized_matmul_residual: residual must"):
        ext.quantized_matmul_residual(x, *g, mx.zeros((1, 2, 64)), None, 0.0, 64, 4, "f32")


# ------------------------------------------------------------------ models


def _ops(model: mlx_local.Model, ids: list[int]) -> collections.Counter[str]:
    """The ops of one decoding step after a prompt of ``ids`` (names from MLX's graph export)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model.module)
    mx.eval(model.module(mx.array([ids]), cache=cache))
    y = model.module(mx.array([[ids[-1]]]), cache=cache)
    path = Path(f"/tmp/mlx_local_blocks_{id(model)}.dot")
    mx.export_to_dot(str(path), y)
    labels = re.findall(r'label\s*=\s*"([^"]*)"', path.read_text())
    path.unlink()
    return collections.Counter(label.split()[0] for label in labels)


def _logits(model: mlx_local.Model, ids: list[int], blocks: bool) -> np.ndarray:
    """Log-probabilities of a prefill, then three decoding steps, with the fused blocks on or off."""
    from mlx_lm.models.cache import make_prompt_cache

    previous, _cpu_blocks._enabled = _cpu_blocks._enabled, blocks
    try:
        cache = make_prompt_cache(model.module)
        out = []
        for part in (ids[:-3], ids[-3:-2], ids[-2:-1], ids[-1:]):
            out.append(np.asarray(model.module(mx.array([part]), cache=cache)[0]))
        return np.concatenate(out)
    finally:
        _cpu_blocks._enabled = previous


def _quantized_tiny(tmp_path: Path, arch: str, bias: bool = False, **config: object) -> mlx_local.Model:
    """A tiny model quantized to 4 bits; ``bias``: q, k and v with biases, as qwen2's."""
    from tiny_models import write_tiny_model

    model = mlx_local.Model.load(write_tiny_model(tmp_path / arch, arch, **config))
    if bias:
        for i, layer in enumerate(model.module.model.layers):
            for j, p in enumerate((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)):
                p.bias = mx.random.normal((p.weight.shape[0],), key=mx.random.key(10 * i + j))
    nn.quantize(model.module, group_size=64, bits=4)
    _cpu_kernels.optimize_for_cpu(model.module)
    return model


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,bias,config", [("llama", False, {}), ("qwen3", False, {}), ("llama", True, {"rope_scaling": LLAMA3_ROPE})]
)
def test_tiny_models_give_the_unfused_logits_with_fewer_ops(ext, tmp_path, arch, bias, config):
    model = _quantized_tiny(tmp_path, arch, bias, **config)
    kinds = {type(m).__name__ for _, m in model.module.named_modules()}
    assert {"CPUAttention", "CPUMLP"} <= kinds, kinds
    ids = [(i * 37) % 1000 + 10 for i in range(12)]
    for mode in ("exact", "int8"):
        previous = _cpu_kernels.set_native_mode(mode)
        try:
            fused, plain = _logits(model, ids, True), _logits(model, ids, False)
        finally:
            _cpu_kernels.set_native_mode(previous)
        assert np.array_equal(fused, plain), f"{mode}: {np.abs(fused - plain).max()}"
    ops = _ops(model, ids)
    layers = model.module.args.num_hidden_layers
    assert ops["MLXLocalQuantizedMulti"] == ops["MLXLocalQuantizedSwiGLU"] == layers, ops
    assert ops["MLXLocalQuantizedResidual"] == 2 * layers and ops["MLXLocalRoPE"] == 0, ops
    _cpu_blocks._enabled = False
    try:
        plain_ops = _ops(model, ids)
    finally:
        _cpu_blocks._enabled = True
    assert plain_ops["Add"] - ops["Add"] >= 2 * layers  # the residual adds (and q, k, v biases)
    assert sum(ops.values()) < sum(plain_ops.values()) - 10 * layers, (ops, plain_ops)


@pytest.mark.slow
def test_fused_blocks_step_aside(ext, tmp_path):
    """Mixed quantizations, rows above the native limit, MLX_LOCAL_FUSED=off: mlx-lm's own code, same numbers."""
    model = _quantized_tiny(tmp_path, "llama")
    ids = [(i * 37) % 1000 + 10 for i in range(8)]
    layer = model.module.model.layers[0]
    # one projection at 8 bits: that layer's attention runs unfused, the other's fused
    w = mx.dequantize(layer.self_attn.k_proj.weight, layer.self_attn.k_proj.scales, layer.self_attn.k_proj.biases,
                      group_size=64, bits=4)  # fmt: skip
    k8 = nn.QuantizedLinear.from_linear(nn.Linear(64, w.shape[0], bias=False), group_size=64, bits=8)
    k8.weight, k8.scales, k8.biases = mx.quantize(w, group_size=64, bits=8)
    k8.__class__ = _cpu_kernels.CPUQuantizedLinear
    layer.self_attn.k_proj = k8
    assert np.array_equal(_logits(model, ids, True), _logits(model, ids, False))
    layers = model.module.args.num_hidden_layers
    assert _ops(model, ids)["MLXLocalQuantizedMulti"] == layers - 1
    # the switches: no fused op at all
    previous = _cpu_fused.set_fused(False)
    try:
        assert _ops(model, ids)["MLXLocalQuantizedMulti"] == 0
    finally:
        _cpu_fused.set_fused(previous)
    # a prompt above the native row limit: dequantize + BLAS, as before
    limit = _cpu_kernels.native_row_limit(64, 4, _cpu_kernels.native_mode())
    long_ids = [(i * 13) % 1000 + 10 for i in range(limit + 4)]
    assert np.array_equal(_logits(model, long_ids, True), _logits(model, long_ids, False))


def test_sharded_projections_are_not_fused(ext, tmp_path):
    """A distributed model's sharded layers (not CPUQuantizedLinear) keep mlx-lm's attention and MLP code."""
    model = _quantized_tiny(tmp_path, "llama")
    for layer in model.module.model.layers:
        for p in (layer.self_attn.q_proj, layer.mlp.gate_proj):
            p.__class__ = nn.QuantizedLinear  # as the sharded classes: another type than CPUQuantizedLinear
    ops = _ops(model, [11, 12, 13, 14])
    assert ops["MLXLocalQuantizedMulti"] == ops["MLXLocalQuantizedSwiGLU"] == 0


@pytest.mark.slow
def test_smollm2_greedy_tokens_are_the_unfused_ones(ext, smollm2):
    ids = smollm2.tokenizer.encode("The history of the printing press begins in the fifteenth century, when")
    for mode in ("exact", "int8"):
        previous = _cpu_kernels.set_native_mode(mode)
        try:
            fused, plain = _logits(smollm2, ids, True), _logits(smollm2, ids, False)
            _cpu_blocks._enabled = True
            a = smollm2.generate("Name three colours.", max_tokens=16, temperature=0.0).token_ids
            _cpu_blocks._enabled = False
            b = smollm2.generate("Name three colours.", max_tokens=16, temperature=0.0).token_ids
        finally:
            _cpu_blocks._enabled = True
            _cpu_kernels.set_native_mode(previous)
        assert np.array_equal(fused, plain), mode
        assert a == b and len(a) >= 5, mode
