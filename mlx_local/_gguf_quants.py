"""Convert GGUF block-quantized tensors to MLX affine quantization, losslessly.

Several GGUF block formats are already affine quantizations with groups of 32
values, ``w = scale * q + bias`` with an unsigned integer ``q``, which is
exactly what ``mx.dequantize(..., mode="affine")`` computes. For those formats
the integers are repacked and the scales and biases rewritten, with no
dequantize / requantize round trip and therefore no added error:

==========  ======================  ====  ================  =================
GGUF type   GGUF formula            bits  MLX scale         MLX bias
==========  ======================  ====  ================  =================
Q4_0        ``d * (q - 8)``         4     ``d``             ``-8 d``
Q4_1        ``d * q + m``           4     ``d``             ``m``
Q5_0        ``d * (q - 16)``        5     ``d``             ``-16 d``
Q5_1        ``d * q + m``           5     ``d``             ``m``
Q8_0        ``d * q`` (int8 q)      8     ``d``             ``-128 d``
Q4_K        ``d*sc * q - dmin*m``   4     ``d * sc``        ``-(dmin * m)``
Q5_K        ``d*sc * q - dmin*m``   5     ``d * sc``        ``-(dmin * m)``
==========  ======================  ====  ================  =================

(Q8_0 stores ``q + 128``.) For the K-quants, each 256-value super-block holds
eight 32-value sub-blocks, each with its own 6-bit ``sc`` and ``m``, so every
sub-block becomes one MLX group.

Exactness: ``d``, ``dmin`` and ``m`` are float16, so every scale and bias is a
product of an 11-bit significand and an integer of at most 8 bits (``sc`` and
``m`` are 6-bit), which float32 (24-bit significand) holds exactly; so does
``scale * q`` for any ``q`` below 2**8. Both the GGUF reference and MLX
therefore compute each weight with a single rounding of the same exact value
(with or without a fused multiply-add), and the results are equal bit for bit,
except that a zero weight may come out as ``+0.0`` where the reference has
``-0.0`` (e.g. ``d * (8 - 8)`` with ``d < 0``).

MLX's packing, found with ``mx.dequantize``: the ``bits``-bit integers of a row
form one little-endian bit stream (value ``i`` occupies bits ``i*bits`` to
``i*bits + bits - 1``), read as little-endian ``uint32`` words. For 5 bits a
value can straddle two words.
"""

from __future__ import annotations

from typing import Callable

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES

from .errors import InvalidOptionError

__all__ = ["EXACT_BITS", "GROUP_SIZE", "to_mlx_affine"]

_T = gguf.GGMLQuantizationType

EXACT_BITS: dict[gguf.GGMLQuantizationType, int] = {
    _T.Q4_0: 4,
    _T.Q4_1: 4,
    _T.Q5_0: 5,
    _T.Q5_1: 5,
    _T.Q8_0: 8,
    _T.Q4_K: 4,
    _T.Q5_K: 5,
}
"""GGUF types with an exact MLX affine form, mapped to MLX's ``bits``."""

GROUP_SIZE = 32
"""MLX ``group_size`` of every conversion."""

# Values decoded per chunk of rows: bounds the temporary memory (a few tens of
# MiB) whatever the tensor size.
_CHUNK_VALUES = 1 << 22

# (blocks uint8 (n, type_size)) -> (q uint8 (n, block_size),
#                                   scales, biases float32 (n, block_size // 32))
_Decoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 in two bytes per row -> float32 column (n, 1)."""
    return raw.view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) packed bytes -> (n, 2k): all low nibbles, then all high nibbles."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) with bit i << 4."""
    out: np.ndarray = np.unpackbits(qh, axis=-1, bitorder="little") << np.uint8(4)
    return out


def _q4_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])
    return _nibbles(b[:, 2:18]), d, d * np.float32(-8)


def _q4_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _nibbles(b[:, 4:20]), _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _q5_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, 6:22]) | _high_bits(b[:, 2:6])
    return q, d, d * np.float32(-16)


def _q5_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = _nibbles(b[:, 8:24]) | _high_bits(b[:, 4:8])
    return q, _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _q8_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(b[:, 0:2])
    # int8 two's complement x -> unsigned x + 128 is a flip of the sign bit.
    return b[:, 2:34] ^ np.uint8(0x80), d, d * np.float32(-128)


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scales and biases (n, 8) of Q4_K / Q5_K super-blocks.

    Bytes 4..15 hold eight 6-bit scales ``sc`` and mins ``m``:
    bytes 0-3 ``sc[0:4]`` (low 6 bits) and the top 2 bits of ``sc[4:8]``,
    bytes 4-7 likewise for ``m``, bytes 8-11 the low 4 bits of ``sc[4:8]``
    (low nibble) and of ``m[4:8]`` (high nibble).
    """
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    s = b[:, 4:16].reshape(-1, 3, 4)
    lo_sc, lo_m, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)], axis=-1)
    m = np.concatenate([lo_m & 0x3F, (hi >> 4) | ((lo_m >> 2) & 0x30)], axis=-1)
    # Both products are exact in float32 (11-bit significand times 6-bit int).
    return d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


def _k_low(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 256): each 32-byte chunk gives two sub-blocks."""
    qs = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    out: np.ndarray = (qs & np.uint8(0x0F)).reshape(-1, 256)
    return out


def _q4_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (_k_low(b[:, 16:144]), *_k_scales(b))


def _q5_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Bit j of qh[l] is the fifth bit of value l of sub-block j.
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qh = ((b[:, 16:48].reshape(-1, 1, 32) >> shifts) & np.uint8(1)) << np.uint8(4)
    return (_k_low(b[:, 48:176]) | qh.reshape(-1, 256), *_k_scales(b))


_DECODERS: dict[gguf.GGMLQuantizationType, _Decoder] = {
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q8_0: _q8_0,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
}


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack (rows, cols) uint8 values of ``bits`` bits the way MLX does.

    The row is a little-endian bit stream read as little-endian uint32 words;
    returns bytes (rows, cols * bits // 8) to be viewed as ``<u4``.
    """
    rows = q.shape[0]
    if bits == 8:
        return q
    if bits == 4:
        out: np.ndarray = q[:, 0::2] | (q[:, 1::2] << np.uint8(4))
        return out
    # General case: 8 values fill exactly ``bits`` bytes, so build them in a
    # uint64 and keep its low ``bits`` bytes.
    shifts = np.arange(0, 8 * bits, bits, dtype=np.uint64)
    words = np.bitwise_or.reduce(q.reshape(rows, -1, 8).astype(np.uint64) << shifts, axis=-1)
    packed: np.ndarray = words.astype("<u8").view(np.uint8).reshape(rows, -1, 8)[..., :bits].reshape(rows, -1)
    return packed


def to_mlx_affine(
    data: np.ndarray, qtype: gguf.GGMLQuantizationType, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repack GGUF quantized weight bytes as MLX affine-quantized arrays.

    Args:
        data: The raw blocks, as ``GGUFReader`` gives them in ``tensor.data``:
            uint8 of shape ``(rows, bytes_per_row)``. The same bytes in
            another row-major shape (e.g. flat) are accepted too, except a
            2-D array of another shape, which is taken as a mistake.
        qtype: The GGUF type of ``data``; one of ``EXACT_BITS``.
        shape: The weight's logical ``(rows, cols)``. GGUF lists dimensions
            innermost first, so for a reader tensor this is
            ``tuple(reversed(tensor.shape))``.

    Returns:
        ``(wq, scales, biases)``: uint32 ``(rows, cols * bits // 32)`` and
        float32 ``(rows, cols // 32)`` twice, for ``mx.dequantize`` /
        ``nn.QuantizedLinear`` with ``group_size=GROUP_SIZE`` and
        ``bits=EXACT_BITS[qtype]``. They dequantize to exactly what
        ``gguf.quants.dequantize(data, qtype)`` gives (up to the sign of zero).

    Raises:
        InvalidOptionError: (a ``ValueError``) if ``qtype`` has no exact MLX
            form (convert it with ``gguf.quants.dequantize`` and
            ``mx.quantize`` instead), if ``data`` is not uint8, or if ``shape``
            does not fit the block size or the size of ``data``.

    >>> wq, scales, biases = to_mlx_affine(t.data, t.tensor_type, tuple(reversed(t.shape)))
    >>> w = mx.dequantize(mx.array(wq), mx.array(scales), mx.array(biases),
    ...                   group_size=GROUP_SIZE, bits=EXACT_BITS[t.tensor_type])
    """
    qtype = gguf.GGMLQuantizationType(qtype)
    if qtype not in EXACT_BITS:
        supported = ", ".join(t.name for t in EXACT_BITS)
        raise InvalidOptionError(
            f"GGUF type {qtype.name} has no exact MLX affine form (supported: {supported}); "
            "dequantize it with gguf.quants.dequantize and requantize with mx.quantize instead",
            option="qtype",
        )
    bits = EXACT_BITS[qtype]
    block_size, type_size = GGML_QUANT_SIZES[qtype]

    if len(shape) != 2:
        raise InvalidOptionError(f"shape must be (rows, cols), got {shape}", option="shape")
    rows, cols = int(shape[0]), int(shape[1])
    if rows <= 0 or cols <= 0 or cols % block_size:
        raise InvalidOptionError(
            f"shape {shape} does not fit {qtype.name}: cols must be a positive multiple "
            f"of its block size {block_size}",
            option="shape",
        )
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise InvalidOptionError(
            f"data must be the raw uint8 blocks, got dtype {data.dtype}", option="data"
        )
    row_bytes = cols // block_size * type_size
    if data.size != rows * row_bytes or (data.ndim == 2 and data.shape != (rows, row_bytes)):
        raise InvalidOptionError(
            f"data of shape {data.shape} does not hold a {qtype.name} tensor of shape "
            f"{shape}: expected {rows} rows of {row_bytes} bytes (is shape reversed? "
            "GGUFReader lists dimensions innermost first)",
            option="shape",
        )
    data = data.reshape(rows, row_bytes)

    decode = _DECODERS[qtype]
    groups = cols // GROUP_SIZE
    wq = np.empty((rows, cols * bits // 32), dtype=np.uint32)
    scales = np.empty((rows, groups), dtype=np.float32)
    biases = np.empty((rows, groups), dtype=np.float32)
    step = max(1, _CHUNK_VALUES // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        blocks = np.ascontiguousarray(data[r0:r1]).reshape(-1, type_size)
        q, s, b = decode(blocks)
        wq[r0:r1] = np.ascontiguousarray(_pack(q.reshape(r1 - r0, cols), bits)).view("<u4")
        scales[r0:r1] = s.reshape(r1 - r0, groups)
        biases[r0:r1] = b.reshape(r1 - r0, groups)
    return wq, scales, biases
