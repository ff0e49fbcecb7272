"""GGUF block quants repacked for MLX must dequantize exactly as gguf does.

Every check compares against ``gguf.quants.dequantize``, the independent
reference, on real block bytes: made by ``gguf.quants.quantize`` where gguf can
quantize, and random but valid super-blocks for the K-quants.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import mlx.core as mx  # noqa: E402  (after mlx_local on purpose)
import mlx.nn as nn  # noqa: E402
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES

# mlx_local first: it picks the BLAS before MLX is loaded.
from mlx_local import _gguf_quants as gguf_quants
from mlx_local._gguf_quants import EXACT_BITS, GROUP_SIZE, to_mlx_affine
from mlx_local.errors import InvalidOptionError

T = gguf.GGMLQuantizationType
SIMPLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_QUANTS = [T.Q4_K, T.Q5_K]
SIMPLE_SHAPES = [(64, 256), (3, 512), (192, 576), (1, 32)]
K_SHAPES = [(64, 256), (3, 512), (192, 768)]


def _weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Float weights with per-row scale and offset, a zero row and a constant row."""
    rows, cols = shape
    w = rng.normal(size=shape) * rng.uniform(1e-3, 2.0, size=(rows, 1))
    w += rng.normal(size=(rows, 1)) * 0.1
    w[0] = 0.0
    if rows > 2:
        w[1] = 0.25
    return w.astype(np.float32)


def _k_blocks(
    rng: np.random.Generator, qtype: gguf.GGMLQuantizationType, shape: tuple[int, int], extreme: bool = False
) -> np.ndarray:
    """Random Q4_K/Q5_K bytes with finite float16 ``d`` and ``dmin``.

    With ``extreme``, ``d`` and ``dmin`` are any finite float16 (subnormals,
    65504, both signs); otherwise typical magnitudes.
    """
    rows, cols = shape
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
    blocks = data.reshape(-1, type_size)
    if extreme:
        bits = rng.integers(0, 1 << 16, size=(len(blocks), 2), dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/nan exponent -> finite
        # smallest subnormal, largest finite, smallest normal / largest subnormal, zeros
        edges = np.array([[0x0001, 0x8001], [0x7BFF, 0xFBFF], [0x0400, 0x03FF], [0x0000, 0x8000]])
        bits[: len(edges)] = edges[: len(bits)]
        blocks[:, 0:4] = bits.astype("<u2").view(np.uint8)
    else:
        sign = rng.choice([-1, 1], size=(len(blocks), 2), p=[0.1, 0.9])
        d = rng.uniform(1e-4, 5e-3, size=(len(blocks), 2)) * sign
        blocks[:, 0:4] = d.astype("<f2").view(np.uint8)
    return data


def _gguf_data(qtype: gguf.GGMLQuantizationType, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if qtype in K_QUANTS:
        return _k_blocks(rng, qtype, shape)
    return gguf.quants.quantize(_weights(rng, shape), qtype)


def _reference(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    ref = gguf.quants.dequantize(data, qtype)
    assert ref.dtype == np.float32 and np.isfinite(ref).all()
    return ref


def _mlx_dequantize(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], bits: int) -> np.ndarray:
    wq, scales, biases = (mx.array(a) for a in arrays)
    return np.array(mx.dequantize(wq, scales, biases, group_size=GROUP_SIZE, bits=bits))


def _assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal bit patterns, except that -0.0 and +0.0 count as the same."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.float32
    a = (actual + np.float32(0)).view(np.uint32)  # x + 0 turns -0 into +0 only
    e = (expected + np.float32(0)).view(np.uint32)
    bad = np.flatnonzero(a != e)
    assert bad.size == 0, (
        f"{bad.size} of {a.size} values differ; first at {np.unravel_index(bad[0], a.shape)}: "
        f"{actual.flat[bad[0]]!r} != {expected.flat[bad[0]]!r}"
    )


def test_exact_types_and_bits() -> None:
    assert EXACT_BITS == {T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q8_0: 8, T.Q4_K: 4, T.Q5_K: 5}
    assert GROUP_SIZE == 32


@pytest.mark.parametrize("shape", SIMPLE_SHAPES, ids=str)
@pytest.mark.parametrize("qtype", SIMPLE, ids=lambda t: t.name)
def test_simple_quants_dequantize_bitwise(qtype: gguf.GGMLQuantizationType, shape: tuple[int, int]) -> None:
    data = _gguf_data(qtype, shape)
    bits = EXACT_BITS[qtype]
    wq, scales, biases = to_mlx_affine(data, qtype, shape)

    # Same shapes and dtypes as MLX's own quantizer gives.
    mq, ms, mb = mx.quantize(mx.zeros(shape), group_size=GROUP_SIZE, bits=bits)
    assert (wq.shape, wq.dtype) == (tuple(mq.shape), np.uint32)
    assert scales.shape == biases.shape == tuple(ms.shape) == tuple(mb.shape)
    assert scales.dtype == biases.dtype == np.float32

    _assert_bitwise_equal(_mlx_dequantize((wq, scales, biases), bits), _reference(data, qtype))


@pytest.mark.parametrize("shape", K_SHAPES, ids=str)
@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quants_dequantize_bitwise(qtype: gguf.GGMLQuantizationType, shape: tuple[int, int]) -> None:
    # d*sc and dmin*m are exact in float32 (11-bit float16 significand times a
    # 6-bit integer), and so is d*sc*q; gguf and MLX both round the final
    # subtraction once, so no ulp allowance is needed.
    data = _gguf_data(qtype, shape)
    wq, scales, biases = to_mlx_affine(data, qtype, shape)
    assert wq.dtype == np.uint32 and wq.shape == (shape[0], shape[1] * EXACT_BITS[qtype] // 32)
    _assert_bitwise_equal(_mlx_dequantize((wq, scales, biases), EXACT_BITS[qtype]), _reference(data, qtype))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quants_exact_for_any_finite_float16_scales(qtype: gguf.GGMLQuantizationType) -> None:
    data = _k_blocks(np.random.default_rng(7), qtype, (96, 512), extreme=True)
    wq, scales, biases = to_mlx_affine(data, qtype, (96, 512))
    _assert_bitwise_equal(_mlx_dequantize((wq, scales, biases), EXACT_BITS[qtype]), _reference(data, qtype))


@pytest.mark.parametrize("qtype", SIMPLE + K_QUANTS, ids=lambda t: t.name)
def test_quantized_linear_matches_dequantized_matmul(qtype: gguf.GGMLQuantizationType) -> None:
    shape = (192, 768) if qtype in K_QUANTS else (192, 576)
    rows, cols = shape
    data = _gguf_data(qtype, shape, seed=3)
    w = _reference(data, qtype).astype(np.float64)
    wq, scales, biases = to_mlx_affine(data, qtype, shape)

    layer = nn.QuantizedLinear(cols, rows, bias=False, group_size=GROUP_SIZE, bits=EXACT_BITS[qtype])
    layer.weight, layer.scales, layer.biases = mx.array(wq), mx.array(scales), mx.array(biases)
    x = np.random.default_rng(4).normal(size=(5, cols)).astype(np.float32)
    out = np.array(layer(mx.array(x)), dtype=np.float64)

    expected = x.astype(np.float64) @ w.T
    # float32 accumulation: error well below 1e-5 of sum |x| |w| per output.
    tolerance = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 1e-30
    assert out.shape == expected.shape
    assert (np.abs(out - expected) <= tolerance).all(), np.max(np.abs(out - expected) / tolerance)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q5_1], ids=lambda t: t.name)
def test_row_chunks_are_stitched_correctly(
    qtype: gguf.GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (37, 512)
    data = _gguf_data(qtype, shape, seed=5)
    monkeypatch.setattr(gguf_quants, "_CHUNK_VALUES", 3 * 512)  # 3 rows per chunk, ragged end
    result = to_mlx_affine(data, qtype, shape)
    _assert_bitwise_equal(_mlx_dequantize(result, EXACT_BITS[qtype]), _reference(data, qtype))


def test_reads_tensors_from_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    written = {
        "q4_0": (T.Q4_0, _gguf_data(T.Q4_0, (48, 320), seed=11)),
        "q5_k": (T.Q5_K, _gguf_data(T.Q5_K, (16, 512), seed=12)),
        "q8_0": (T.Q8_0, _gguf_data(T.Q8_0, (8, 64), seed=13)),
    }
    writer = gguf.GGUFWriter(path, "llama")
    for name, (qtype, data) in written.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(path)
    assert {t.name for t in reader.tensors} == set(written)
    for tensor in reader.tensors:
        qtype, data = written[tensor.name]
        shape = tuple(int(n) for n in reversed(tensor.shape))
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert shape == (data.shape[0], data.shape[1] // type_size * block_size)
        result = to_mlx_affine(tensor.data, tensor.tensor_type, shape)  # type: ignore[arg-type]
        _assert_bitwise_equal(_mlx_dequantize(result, EXACT_BITS[qtype]), _reference(data, qtype))


UNSUPPORTED = [T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_NL, T.F16, T.F32, T.BF16]


@pytest.mark.parametrize("qtype", UNSUPPORTED, ids=lambda t: t.name)
def test_unsupported_type_is_rejected(qtype: gguf.GGMLQuantizationType) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = np.zeros((4, 256 // block_size * type_size), dtype=np.uint8)
    with pytest.raises(ValueError, match=qtype.name) as info:
        to_mlx_affine(data, qtype, (4, 256))
    assert isinstance(info.value, InvalidOptionError) and info.value.option == "qtype"


@pytest.mark.parametrize(
    ("qtype", "shape"),
    [
        (T.Q4_0, (65, 256)),  # one row too many
        (T.Q4_0, (64, 288)),  # one block per row too many
        (T.Q4_0, (128, 128)),  # same byte count, other row layout
        (T.Q4_0, (256, 64)),  # the GGUF (reversed) order by mistake
        (T.Q4_0, (64, 250)),  # not a multiple of the block size
        (T.Q4_K, (64, 288)),
        (T.Q8_0, (64,)),
        (T.Q8_0, (64, 256, 1)),
    ],
    ids=str,
)
def test_mismatched_shape_is_rejected(qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    data = _gguf_data(qtype, (64, 256))
    with pytest.raises(ValueError):
        to_mlx_affine(data, qtype, shape)  # type: ignore[arg-type]


def test_k_quant_rows_must_be_whole_super_blocks() -> None:
    data = gguf.quants.quantize(np.ones((4, 576), np.float32), T.Q4_0)
    with pytest.raises(ValueError, match="256"):
        to_mlx_affine(data, T.Q4_K, (4, 576))


def test_flat_bytes_are_accepted_but_not_other_dtypes() -> None:
    data = _gguf_data(T.Q5_0, (6, 64))
    expected = to_mlx_affine(data, T.Q5_0, (6, 64))
    for got, want in zip(to_mlx_affine(data.ravel(), T.Q5_0, (6, 64)), expected):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="uint8"):
        to_mlx_affine(data.view(np.int8), T.Q5_0, (6, 64))
