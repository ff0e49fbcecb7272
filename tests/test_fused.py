"""The fused CPU kernels of issue 14's floor: RMSNorm, RoPE, attention against float64 references; whole-model agreement.

The attention kernel is checked over head dims, GQA ratios, key lengths from
1 to 4097 (one query: decoding, its keys split over the threads; many:
the tiled prefill), the masks mlx-lm passes (none, "causal" with and without
an offset, bool windows, additive) and float32 / bfloat16 / float16 inputs,
with keys and values strided like mlx-lm's KV cache slices.
"""

from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np
import pytest

import mlx_local
from mlx_local import _cpu_fused, _cpu_kernels

# float32: the kernels compute in float32 (the reference in float64); others: the input's rounding
TOL = {mx.float32: 2e-5, mx.bfloat16: 2e-2, mx.float16: 3e-3}


def _f64(a: mx.array) -> np.ndarray:
    return np.asarray(a.astype(mx.float32), dtype=np.float64)


def _close(y: mx.array, ref: np.ndarray, dtype: mx.Dtype) -> float:
    err = float(np.abs(_f64(y) - ref).max() / max(np.abs(ref).max(), 1e-30))
    assert err < TOL[dtype], f"relative error {err:.3g}"
    return err


def _sdpa_reference(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: object) -> np.ndarray:
    qf, kf, vf = _f64(q), _f64(k), _f64(v)
    r = q.shape[1] // k.shape[1]
    kf, vf = np.repeat(kf, r, axis=1), np.repeat(vf, r, axis=1)
    s = qf @ kf.transpose(0, 1, 3, 2) * scale
    lq, lk = s.shape[-2:]
    if isinstance(mask, str):
        s = np.where(np.arange(lk)[None] <= np.arange(lk - lq, lk)[:, None], s, -np.inf)
    elif isinstance(mask, mx.array) and mask.dtype == mx.bool_:
        s = np.where(np.asarray(mask), s, -np.inf)
    elif isinstance(mask, mx.array):
        s = s + _f64(mask)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ vf


def _cache_like(b: int, h: int, n: int, d: int, dtype: mx.Dtype, seed: int) -> mx.array:
    """[b, h, n, d] as mlx-lm's KV cache hands it over: a slice of a longer buffer."""
    buf = mx.random.normal((b, h, n + 37, d), key=mx.random.key(seed)).astype(dtype)
    return buf[:, :, :n, :]


def _queries(b: int, h: int, n: int, d: int, dtype: mx.Dtype, seed: int) -> mx.array:
    """[b, h, n, d] as the models hand them over: projections [b, n, h, d] transposed."""
    return mx.random.normal((b, n, h, d), key=mx.random.key(seed)).astype(dtype).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("ratio", [1, 3, 4, 8])
@pytest.mark.parametrize("lk", [1, 2, 17, 300, 1000, pytest.param(4097, marks=pytest.mark.slow)])
def test_attention_one_query_over_the_cache(ext, d, ratio, lk):
    hkv = 2 if ratio == 8 else 3
    q = _queries(1, hkv * ratio, 1, d, mx.float32, 1)
    k, v = _cache_like(1, hkv, lk, d, mx.float32, 2), _cache_like(1, hkv, lk, d, mx.float32, 3)
    y = _cpu_fused.scaled_dot_product_attention(q, k, v, cache=None, scale=d**-0.5, mask=None)
    assert y.shape == q.shape and y.dtype == mx.float32
    _close(y, _sdpa_reference(q, k, v, d**-0.5, None), mx.float32)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize(
    "lq, lk, d, ratio",
    [
        (3, 3, 64, 3),
        (8, 40, 128, 4),
        (9, 9, 64, 1),
        (70, 70, 64, 3),
        (100, 357, 64, 3),
        pytest.param(130, 130, 128, 8, marks=pytest.mark.slow),
        pytest.param(200, 4097, 64, 3, marks=pytest.mark.slow),
    ],
)
def test_attention_causal_prefill_and_continuation(ext, dtype, lq, lk, d, ratio):
    """The tiled kernel, "causal" as mlx-lm passes it: the queries are the last lq of lk positions."""
    q = _queries(1, 3 * ratio, lq, d, dtype, 4)
    k, v = _cache_like(1, 3, lk, d, dtype, 5), _cache_like(1, 3, lk, d, dtype, 6)
    y = _cpu_fused.scaled_dot_product_attention(q, k, v, cache=None, scale=0.1, mask="causal")
    assert y.shape == q.shape and y.dtype == dtype
    _close(y, _sdpa_reference(q, k, v, 0.1, "causal"), dtype)


@pytest.mark.parametrize("lq", [1, 5, 40])
def test_attention_array_masks(ext, lq):
    """Bool masks (sliding windows, as mlx-lm's create_causal_mask makes them) and additive masks, broadcast."""
    lk = 90
    q = _queries(2, 8, lq, 64, mx.float32, 7)
    k, v = _cache_like(2, 4, lk, 64, mx.float32, 8), _cache_like(2, 4, lk, 64, mx.float32, 9)
    rows, cols = mx.arange(lk - lq, lk)[:, None], mx.arange(lk)[None]
    window = (rows >= cols) & (rows < cols + 24)
    additive = mx.random.normal((2, 1, lq, lk), key=mx.random.key(10))
    for mask in (window, additive):
        y = _cpu_fused.scaled_dot_product_attention(q, k, v, cache=None, scale=0.125, mask=mask)
        _close(y, _sdpa_reference(q, k, v, 0.125, mask), mx.float32)


def test_attention_falls_back_where_the_kernel_does_not_apply(ext):
    """Head dims the kernel does not take and attention sinks go to mlx-lm's code, with its results."""
    q, k, v = _queries(1, 4, 3, 40, mx.float32, 11), _cache_like(1, 2, 5, 40, mx.float32, 12), _cache_like(1, 2, 5, 40, mx.float32, 13)
    y = _cpu_fused.scaled_dot_product_attention(q, k, v, cache=None, scale=0.2, mask="causal")
    _close(y, _sdpa_reference(q, k, v, 0.2, "causal"), mx.float32)
    with pytest.raises(ValueError, match="multiple of 16"):
        ext.sdpa(q, k, v, 0.2, True)


def test_attention_op_names_bad_shapes(ext):
    q = mx.zeros((1, 3, 1, 64))
    with pytest.raises(ValueError, match="multiple of key heads"):
        ext.sdpa(q, mx.zeros((1, 2, 5, 64)), mx.zeros((1, 2, 5, 64)), 1.0)
    with pytest.raises(ValueError, match="k and v must be"):
        ext.sdpa(q, mx.zeros((1, 3, 5, 64)), mx.zeros((1, 3, 6, 64)), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        ext.sdpa(q, mx.zeros((1, 3, 5, 64)), mx.zeros((1, 3, 5, 64)), 1.0, False, mx.zeros((2, 7)))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 7, 1024), (2, 5, 9, 64), (4000, 64)])
def test_rms_norm(ext, dtype, shape):
    x = mx.random.normal(shape, key=mx.random.key(14)).astype(dtype) * 3
    w = mx.random.normal((shape[-1],), key=mx.random.key(15)).astype(dtype)
    xf = _f64(x)
    ref = xf / np.sqrt((xf**2).mean(-1, keepdims=True) + 1e-5) * _f64(w)
    y = ext.rms_norm(x, w, 1e-5)
    assert y.shape == x.shape and y.dtype == dtype
    _close(y, ref, dtype)
    # a strided view (the last axis not contiguous) gives the same
    xt = mx.random.normal(shape[::-1], key=mx.random.key(16)).astype(dtype).T
    xtf = _f64(xt)
    _close(ext.rms_norm(xt, w, 1e-5), xtf / np.sqrt((xtf**2).mean(-1, keepdims=True) + 1e-5) * _f64(w), dtype)


def _rope_reference(x: mx.array, dims: int, traditional: bool, inv_freq: np.ndarray, scale: float, offset: int) -> np.ndarray:
    xf = _f64(x)
    pos = (np.arange(x.shape[2]) + offset) * scale
    th = pos[:, None] * inv_freq[None]
    c, s = np.cos(th), np.sin(th)
    y = xf.copy()
    if traditional:
        x1, x2 = xf[..., 0:dims:2], xf[..., 1:dims:2]
        y[..., 0:dims:2], y[..., 1:dims:2] = x1 * c - x2 * s, x1 * s + x2 * c
    else:
        h = dims // 2
        x1, x2 = xf[..., :h], xf[..., h:dims]
        y[..., :h], y[..., h:dims] = x1 * c - x2 * s, x1 * s + x2 * c
    return y


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims, length, offset", [(64, 1, 0), (64, 1, 4095), (32, 9, 7), (128, 300, 0)])
def test_rope(ext, dtype, traditional, dims, length, offset):
    x = _queries(2, 3, length, max(dims, 64), dtype, 17)
    inv = 10000.0 ** (-np.arange(0, dims, 2) / dims)
    # as MLX, angles in float32: at position ~4096 they are ~2e-4 rad off the float64 ones
    tol = max(TOL[dtype], 1e-3 if offset + length > 256 else 0.0)
    y = ext.rope(x, dims, traditional, 10000.0, 1.0, offset)
    assert y.shape == x.shape and y.dtype == dtype
    ref = _rope_reference(x, dims, traditional, inv, 1.0, offset)
    assert np.abs(_f64(y) - ref).max() < tol * np.abs(ref).max()
    mlx = _f64(mx.fast.rope(x, dims, traditional=traditional, base=10000.0, scale=1.0, offset=offset))
    assert np.abs(_f64(y) - mlx).max() < tol * np.abs(ref).max()
    # precomputed frequencies (Llama-3's RoPE), and a position scale
    freqs = mx.array(1 / (inv * 0.5), dtype=mx.float32)
    yf = ext.rope(x, dims, traditional, None, 0.5, offset, freqs)
    ref = _rope_reference(x, dims, traditional, inv * 0.5, 0.5, offset)
    assert np.abs(_f64(yf) - ref).max() < tol * np.abs(ref).max()


def _log_probs(model: mlx_local.Model, ids: list[int]) -> np.ndarray:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model.module)
    out = []
    for part in (ids[:-3], ids[-3:-2], ids[-2:-1], ids[-1:]):  # a prefill, then decoding steps
        logits = model.module(mx.array([part]), cache=cache)[0].astype(mx.float32)
        out.append(np.asarray(logits - mx.logsumexp(logits, axis=-1, keepdims=True)))
    return np.concatenate(out)


@pytest.mark.slow
def test_smollm2_fused_gives_the_pure_mlx_tokens_and_logits(ext, smollm2):
    assert any(type(m).__name__.startswith("CPU") and "RMSNorm" in type(m).__name__ for _, m in smollm2.module.named_modules())
    prompt = "Name three colours."
    ids = smollm2.tokenizer.encode("The history of the printing press begins in the fifteenth century, when")
    previous = _cpu_fused.set_fused(True)
    try:
        fused = smollm2.generate(prompt, max_tokens=12, temperature=0.0)
        lp_fused = _log_probs(smollm2, ids)
        _cpu_fused.set_fused(False)
        pure = smollm2.generate(prompt, max_tokens=12, temperature=0.0)
        lp_pure = _log_probs(smollm2, ids)
    finally:
        _cpu_fused.set_fused(previous)
    assert len(fused.token_ids) >= 5
    assert fused.token_ids == pure.token_ids
    assert np.abs(lp_fused - lp_pure).max() < 2e-3


def test_native_off_turns_the_fused_kernels_off(ext):
    previous = _cpu_kernels.set_native_mode("off")
    try:
        assert not _cpu_fused.fused_on()
    finally:
        _cpu_kernels.set_native_mode(previous)
    assert _cpu_fused.fused_on() == (previous != "off")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_tiny_models_agree_with_and_without_the_fused_kernels(ext, arch, tmp_path):
    """Every architecture's norms, RoPE and attention (gemma3: sliding-window bool masks) through the fused path."""
    from tiny_models import write_tiny_model

    model = mlx_local.Model.load(write_tiny_model(tmp_path / arch, arch))
    kinds = {type(m).__name__ for _, m in model.module.named_modules()}
    assert {"CPURMSNorm", "CPURoPE"} <= kinds, kinds
    code = sys.modules[type(model.module).__module__]
    assert code.scaled_dot_product_attention is _cpu_fused.scaled_dot_product_attention
    ids = [(i * 37) % 1000 + 10 for i in range(24)]  # longer than gemma3's window of 8
    previous = _cpu_fused.set_fused(True)
    try:
        fused = _log_probs(model, ids)
        _cpu_fused.set_fused(False)
        pure = _log_probs(model, ids)
    finally:
        _cpu_fused.set_fused(previous)
    assert np.abs(fused - pure).max() < 1e-4
