"""The native CPU kernels (issue 14): numbers against a float64 reference, the loader's checks, the fallback.

On Linux x86-64 the install builds them (setup.py, ./setup.sh); a missing build
fails these tests there, unless MLX_LOCAL_NATIVE=off says to run without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_local
from mlx_local import _cpu_kernels, _native

from conftest import native_module

ROOT = Path(__file__).resolve().parents[1]
LIB = Path(mlx_local.__file__).parent / "_native_lib"
RECORD = LIB / "_native_build.json"




def _quantized(n: int, k: int, bits: int, group_size: int, scale_dtype=mx.float32, seed: int = 0):
    w = mx.random.normal((n, k), key=mx.random.key(seed))
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    return q, s.astype(scale_dtype), b.astype(scale_dtype)


def _reference(x: mx.array, q: mx.array, s: mx.array, b: mx.array, bits: int, group_size: int) -> np.ndarray:
    """x @ W.T in float64, W unpacked from MLX's packing by numpy (not by MLX)."""
    packed = np.asarray(q).view(np.uint8).reshape(q.shape[0], -1)  # a little-endian bit stream
    stream = np.unpackbits(packed, axis=1, bitorder="little").reshape(q.shape[0], -1, bits)
    ints = (stream * (1 << np.arange(bits))).sum(-1).astype(np.float64)
    scales = np.repeat(np.asarray(s.astype(mx.float32), dtype=np.float64), group_size, axis=1)
    biases = np.repeat(np.asarray(b.astype(mx.float32), dtype=np.float64), group_size, axis=1)
    xf = np.asarray(x.astype(mx.float32), dtype=np.float64)
    return xf @ (scales * ints + biases).T


def _rel_err(y: mx.array, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(y.astype(mx.float32), dtype=np.float64) - ref).max() / np.abs(ref).max())


#: Row counts through every path of the kernels: one row, blocks of 8, 4 and 2 rows, a last single row.
ROWS = (1, 2, 3, 7, 8, 9, 16, 33, 64)


@pytest.mark.parametrize("scale_dtype", [mx.float32, mx.bfloat16, mx.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 5, 8])
def test_kernels_match_a_float64_reference(ext, bits, group_size, scale_dtype):
    q, s, b = _quantized(136, 512, bits, group_size, scale_dtype)  # 136 = 2 tiles of 64 + 8, 34 blocks of 4 rows
    for rows in ROWS:
        x = mx.random.normal((rows, 512), key=mx.random.key(rows))
        ref = _reference(x, q, s, b, bits, group_size)
        exact = _native.quantized_matmul(x, q, s, b, group_size=group_size, bits=bits, mode="exact")
        int8 = _native.quantized_matmul(x, q, s, b, group_size=group_size, bits=bits, mode="int8")
        assert exact.shape == int8.shape == (rows, 136)
        assert exact.dtype == mx.quantized_matmul(x, q, s, b, group_size=group_size, bits=bits).dtype
        assert _rel_err(exact, ref) < 1e-5, rows
        assert _rel_err(int8, ref) < 2e-2, rows  # int8 activations per 32: about 0.5% here
        # the exact mode is MLX's own result within float32 rounding
        mlx_result = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=group_size, bits=bits)
        atol = 2e-6 * float(np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(exact), np.asarray(mlx_result), rtol=0, atol=atol, err_msg=f"{rows} rows")
        # the int8 mode computes each row as if it came alone: the same integer dots, the same roundings
        for i in (0, rows - 1):
            alone = _native.quantized_matmul(x[i : i + 1], q, s, b, group_size=group_size, bits=bits, mode="int8")
            assert np.array_equal(np.asarray(int8[i : i + 1]), np.asarray(alone)), (rows, i)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_wide_inputs_done_in_chunks_give_the_one_pass_result(ext, bits):
    q, s, b = _quantized(72, 1152, bits, 128)  # K > 1024: chunks of 512, the last one of 128
    for rows in (2, 9, 16):
        x = mx.random.normal((rows, 1152), key=mx.random.key(rows))
        ref = _reference(x, q, s, b, bits, 128)
        assert _rel_err(_native.quantized_matmul(x, q, s, b, group_size=128, bits=bits, mode="exact"), ref) < 1e-5
        int8 = _native.quantized_matmul(x, q, s, b, group_size=128, bits=bits, mode="int8")
        assert _rel_err(int8, ref) < 2e-2
        # the single-row kernel makes one pass over K: the same sums in the same order
        alone = _native.quantized_matmul(x[-1:], q, s, b, group_size=128, bits=bits, mode="int8")
        assert np.array_equal(np.asarray(int8[-1:]), np.asarray(alone)), rows


@pytest.mark.parametrize("x_dtype", [mx.bfloat16, mx.float16], ids=["bf16", "f16"])
def test_half_precision_inputs_give_half_precision_outputs(ext, x_dtype):
    q, s, b = _quantized(64, 256, 4, 64, x_dtype)
    x = mx.random.normal((2, 256), key=mx.random.key(3)).astype(x_dtype)
    y = _native.quantized_matmul(x, q, s, b, group_size=64, bits=4)
    assert y.dtype == x_dtype
    assert _rel_err(y, _reference(x, q, s, b, 4, 64)) < 1e-2  # the output's own rounding


def test_strided_and_batched_inputs(ext):
    q, s, b = _quantized(96, 256, 4, 32)
    cases = {
        "every other column": mx.random.normal((3, 512), key=mx.random.key(1))[:, ::2],
        "transposed": mx.random.normal((256, 4), key=mx.random.key(2)).T,
        "batched": mx.random.normal((2, 3, 256), key=mx.random.key(3)),
        "a single vector": mx.random.normal((256,), key=mx.random.key(4)),
    }
    for name, x in cases.items():
        y = _native.quantized_matmul(x, q, s, b, group_size=32, bits=4)
        assert y.shape == (*x.shape[:-1], 96), name
        ref = _reference(x.reshape(-1, 256), q, s, b, 4, 32).reshape(*x.shape[:-1], 96)
        assert _rel_err(y, ref) < 1e-5, name
    # weights that are a strided view (every other output row) are made contiguous by the op
    qb, sb, bb = _quantized(192, 256, 8, 64)
    x = mx.random.normal((2, 256), key=mx.random.key(5))
    y = _native.quantized_matmul(x, qb[::2], sb[::2], bb[::2], group_size=64, bits=8)
    assert _rel_err(y, _reference(x, qb[::2], sb[::2], bb[::2], 8, 64)) < 1e-5


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_every_instruction_set_of_this_cpu_gives_the_same_int8_result(ext, bits):
    q, s, b = _quantized(72, 256, bits, 32)
    x = mx.random.normal((3, 256), key=mx.random.key(7))
    isas = ext.available_isas().split()
    assert "avx2" in isas and ext.best_isa() in isas
    results = {isa: np.asarray(ext.quantized_matmul(x, q, s, b, 32, bits, "int8", isa)) for isa in isas}
    for isa, y in results.items():  # the same integer dot products, by maddubs or by vpdpbusd
        assert np.array_equal(y, results["avx2"]), isa


def test_threads_split_the_work_without_changing_the_result(ext):
    q, s, b = _quantized(4096, 1024, 4, 64)  # 2 MB of weights: worth the threads
    x = mx.random.normal((2, 1024), key=mx.random.key(6))
    before = ext.num_threads()
    try:
        ext.set_num_threads(1)
        one = np.asarray(_native.quantized_matmul(x, q, s, b, group_size=64, bits=4))
        ext.set_num_threads(ext.pool_size())
        many = np.asarray(_native.quantized_matmul(x, q, s, b, group_size=64, bits=4))
    finally:
        ext.set_num_threads(before)
    assert np.array_equal(one, many)  # each output column is computed the same way by whichever thread
    assert _rel_err(mx.array(many), _reference(x, q, s, b, 4, 64)) < 1e-5


def test_what_the_kernels_do_not_cover_goes_to_mlx(ext):
    for bits, group_size, k in [(6, 32, 256), (4, 32, 96), (3, 64, 128)]:
        q, s, b = _quantized(40, k, bits, group_size)
        x = mx.random.normal((2, k), key=mx.random.key(bits))
        y = _native.quantized_matmul(x, q, s, b, group_size=group_size, bits=bits)
        assert np.array_equal(np.asarray(y), np.asarray(mx.quantized_matmul(x, q, s, b, group_size=group_size, bits=bits)))


def test_bad_inputs_are_clear_errors(ext):
    q, s, b = _quantized(64, 256, 4, 64)
    x = mx.zeros((1, 256))
    with pytest.raises(mlx_local.InvalidOptionError, match="scales must be float \\[64, 4\\], got shape \\(64, 3\\)"):
        _native.quantized_matmul(x, q, s[:, :3], b, group_size=64, bits=4)
    with pytest.raises(
        mlx_local.InvalidOptionError, match="w of shape \\(64, 32\\) does not hold 4-bit rows of x's last dimension 128"
    ):
        _native.quantized_matmul(mx.zeros((1, 128)), q, s, b, group_size=64, bits=4)
    with pytest.raises(mlx_local.InvalidOptionError, match="w must be a 2-D uint32 array"):
        _native.quantized_matmul(x, q.astype(mx.int32), s, b, group_size=64, bits=4)
    with pytest.raises(mlx_local.InvalidOptionError, match="mode must be one of 'exact', 'int8', not 'fast'"):
        _native.quantized_matmul(x, q, s, b, group_size=64, bits=4, mode="fast")
    with pytest.raises(mlx_local.InvalidOptionError, match="native mode must be"):
        _cpu_kernels.set_native_mode("on")


@pytest.mark.parametrize("mode", ["exact", "int8"])
def test_layers_take_the_native_kernel_up_to_the_measured_row_limit_then_blas(ext, mode):
    import mlx.nn as nn

    previous = _cpu_kernels.set_native_mode(mode)
    try:
        for k in (256, 1088):  # a narrow and a wide input (K > 1024 breaks even sooner)
            layer = nn.QuantizedLinear(k, 64, bias=False, group_size=64, bits=4)
            assert _cpu_kernels.optimize_for_cpu(layer) == 1
            limit = _cpu_kernels.native_row_limit(k, 4, mode)
            assert limit >= 128 and (k <= 1024 or limit < _cpu_kernels.native_row_limit(256, 4, mode))
            assert _cpu_kernels.native_row_limit(k, 5, mode) > limit  # MLX dequantizes 5 bits slower
            for rows in (1, 9, limit, limit + 1):
                x = mx.random.normal((1, rows, k), key=mx.random.key(rows))
                native = _native.quantized_matmul(x, layer.weight, layer.scales, layer.biases, group_size=64, bits=4, mode=mode)
                blas = x @ mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=4).T
                y = np.asarray(layer(x))
                assert np.array_equal(y, np.asarray(native if rows <= limit else blas)), (k, rows)
    finally:
        _cpu_kernels.set_native_mode(previous)


def test_native_status_says_which_kernels_run(ext):
    previous = _cpu_kernels.set_native_mode("exact")
    try:
        assert _cpu_kernels.native_status() == f"native AVX2 float32, {ext.num_threads()} thread{'s' * (ext.num_threads() != 1)}"
        _cpu_kernels.set_native_mode("int8")
        names = {"avx2": "AVX2", "avx512vnni": "AVX-512 VNNI", "avxvnni": "AVX-VNNI"}
        assert _cpu_kernels.native_status().startswith(f"native {names[ext.best_isa()]} int8, ")
        _cpu_kernels.set_native_mode("off")
        assert _cpu_kernels.native_status() == "off: set_native_mode('off')"
    finally:
        _cpu_kernels.set_native_mode(previous)


# ------------------------------------------------------------------ the loader


def _copy_build(tmp_path: Path) -> Path:
    native_module()
    folder = tmp_path / "lib"
    shutil.copytree(LIB, folder)
    return folder


def _edit_record(folder: Path, **changes) -> None:
    record = json.loads((folder / "_native_build.json").read_text())
    record.update(changes)
    (folder / "_native_build.json").write_text(json.dumps(record))


def test_a_build_for_another_mlx_is_refused(tmp_path):
    folder = _copy_build(tmp_path)
    _edit_record(folder, mlx="0.31.0")
    native = _native.probe(folder)
    assert native.module is None
    assert native.reason == f"refused: built for mlx 0.31.0, this is mlx {mx.__version__} (rebuild: ./setup.sh)"


def test_a_changed_or_foreign_abi_module_is_refused(tmp_path):
    import hashlib

    folder = _copy_build(tmp_path)
    so = folder / json.loads(RECORD.read_text())["file"]
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(data)
    assert _native.probe(folder).reason == f"refused: {so.name} changed since it was built (SHA-256 differs)"
    # another nanobind ABI (as nanobind 2.x would give), with a record that matches the file
    so.write_bytes((LIB / so.name).read_bytes().replace(b"_a1_v22", b"_a1_v15"))
    _edit_record(folder, sha256=hashlib.sha256(so.read_bytes()).hexdigest())
    native = _native.probe(folder)
    assert native.module is None and native.reason.startswith("refused: nanobind ABI nanobind_")
    assert "_v15 does not match mlx's core.so" in native.reason


def test_no_build_or_a_failed_build_says_why(tmp_path):
    folder = _copy_build(tmp_path)
    (folder / "_native_build.json").unlink()
    assert _native.probe(folder).reason == "not built: no build record (installed without the build step?)"
    (folder / "_native_build.json").write_text(json.dumps({"built": False, "reason": "cmake not found"}))
    assert _native.probe(folder).reason == "not built: cmake not found"


def _run(code: str, **env: str) -> str:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_a_good_copy_loads_and_off_means_off(tmp_path):
    folder = _copy_build(tmp_path)
    loaded = _run(f"from mlx_local import _native; n = _native.probe({str(folder)!r}); print(n.reason or 'loaded', n.isa)")
    assert loaded.startswith("loaded avx")
    # MLX_LOCAL_NATIVE=off: the module is never imported, and the layers compute as before (MLX's kernel)
    code = """
import sys
import mlx.core as mx, mlx.nn as nn
from mlx_local import _cpu_kernels, _native
layer = nn.QuantizedLinear(256, 64, bias=False, group_size=64, bits=4)
x = mx.random.normal((1, 256))
expected = mx.quantized_matmul(x, layer.weight, layer.scales, layer.biases, group_size=64, bits=4)
assert _cpu_kernels.optimize_for_cpu(layer) == 1
assert mx.array_equal(layer(x), expected).item()
print(_cpu_kernels.native_status(), "|", _native.load().reason, "|", any("_native_ext" in m for m in sys.modules))
"""
    assert _run(code, MLX_LOCAL_NATIVE="off") == "off: MLX_LOCAL_NATIVE=off | off: MLX_LOCAL_NATIVE=off | False"


# ------------------------------------------------------------- the real model

EVAL_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Within fifty "
    "years printers were at work in more than two hundred towns across Europe, and the price of books fell "
    "so far that ordinary merchants could own them. Scholars argue about how much the press changed the way "
    "people thought, but few doubt that it spread new ideas faster than any invention before it."
)


def _logits(model: mlx_local.Model, ids: list[int], chunk: int = 8) -> np.ndarray:
    """Next-token log-probabilities at every position, fed `chunk` tokens at a time (so the native path runs)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model.module)
    out = []
    for i in range(0, len(ids), chunk):
        logits = model.module(mx.array([ids[i : i + chunk]]), cache=cache)[0].astype(mx.float32)
        out.append(np.asarray(logits - mx.logsumexp(logits, axis=-1, keepdims=True)))
    return np.concatenate(out)


@pytest.mark.slow
def test_smollm2_greedy_tokens_are_the_pure_mlx_ones_and_int8_agrees(ext, smollm2, record_property):
    previous = _cpu_kernels.set_native_mode("exact")
    try:
        prompt = "Explain in two sentences why the sky is blue."
        exact = smollm2.generate(prompt, max_tokens=40, temperature=0.0)
        ids = smollm2.tokenizer.encode(EVAL_TEXT)
        lp_exact = _logits(smollm2, ids)
        _cpu_kernels.set_native_mode("int8")
        lp_int8 = _logits(smollm2, ids)
        _cpu_kernels.set_native_mode("off")
        pure = smollm2.generate(prompt, max_tokens=40, temperature=0.0)
        lp_pure = _logits(smollm2, ids)
    finally:
        _cpu_kernels.set_native_mode(previous)
    assert len(exact.token_ids) >= 20
    assert exact.token_ids == pure.token_ids
    assert np.abs(lp_exact - lp_pure).max() < 1e-3
    kl = float(np.mean(np.sum(np.exp(lp_pure) * (lp_pure - lp_int8), axis=-1)))
    top1 = float(np.mean(lp_pure.argmax(-1) == lp_int8.argmax(-1)))
    record_property("int8_mean_kl", kl)
    record_property("int8_top1_agreement", top1)
    print(f"\nint8 vs pure MLX over {len(ids)} tokens: mean KL {kl:.5f}, top-1 agreement {top1:.3f}")
    assert kl < 0.01 and top1 > 0.9
