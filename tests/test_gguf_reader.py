"""The importer's own GGUF reader gives what ``gguf.GGUFReader`` gives, fast.

``_gguf_reader.read_gguf`` parses GGUF metadata itself (``GGUFReader`` takes seconds
on a real vocabulary: it makes one numpy view per array element). These tests
hold it to ``GGUFReader``: for the real SmolLM2 file and for small files
written with ``gguf.GGUFWriter`` (or byte by byte, for what the writer cannot
write), every metadata value equals ``GGUFReader(...).fields[key].contents()``
(same Python types too) and every tensor has the same name, shape, type,
offset, size and bytes. Broken files (cut anywhere, garbage, lying counts)
must raise ``InvalidModelError`` naming the file, never another exception.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES

import mlx_local  # noqa: F401  (first: it picks the BLAS before MLX is loaded)
from mlx_local._gguf_reader import read_gguf as _read
from mlx_local.errors import InvalidModelError

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


# ------------------------------------------------------------------ helpers


def _reference(path: Path) -> tuple[dict[str, Any], list[Any]]:
    reader = gguf.GGUFReader(str(path))
    metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return metadata, list(reader.tensors)


def _assert_same_value(ours: Any, ref: Any, where: str) -> None:
    """Equal, and of the same Python type (True is not 1, 1.0 is not 1)."""
    assert type(ours) is type(ref), f"{where}: {type(ours).__name__} != {type(ref).__name__}"
    if isinstance(ref, list):
        assert len(ours) == len(ref), f"{where}: {len(ours)} elements != {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same_value(a, b, f"{where}[{i}]")
    else:
        assert ours == ref, f"{where}: {ours!r} != {ref!r}"


def _assert_same_as_gguf_reader(path: Path) -> None:
    g = _read(path)
    metadata, tensors = _reference(path)
    assert list(g.metadata) == list(metadata)
    for key, value in metadata.items():
        _assert_same_value(g.metadata[key], value, key)
    assert [t.name for t in g.tensors] == [t.name for t in tensors]
    for ours, ref in zip(g.tensors, tensors):
        assert ours.tensor_type is ref.tensor_type, ours.name
        assert isinstance(ours.tensor_type, gguf.GGMLQuantizationType)
        assert ours.shape.tolist() == ref.shape.tolist(), ours.name
        assert (ours.n_elements, ours.n_bytes, ours.data_offset) == (ref.n_elements, ref.n_bytes, ref.data_offset)
        assert ours.data.dtype == ref.data.dtype and ours.data.shape == ref.data.shape, ours.name
        assert ours.data.tobytes() == ref.data.tobytes(), ours.name
        assert not ours.data.flags.writeable


def _assert_invalid(path: Path, match: str | None = None) -> InvalidModelError:
    with pytest.raises(InvalidModelError) as e:
        _read(path)
    assert path.name in str(e.value) and e.value.path == str(path)
    if match:
        assert re.search(match, str(e.value)), str(e.value)
    return e.value


def _k_blocks(rng: np.random.Generator, qtype: gguf.GGMLQuantizationType, shape: tuple[int, int]) -> np.ndarray:
    """Random Q6_K bytes whose float16 ``d`` (the last 2 bytes of a block) is finite."""
    assert qtype == T.Q6_K
    rows, cols = shape
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
    blocks = data.reshape(-1, type_size)
    blocks[:, -2:] = rng.uniform(-0.01, 0.01, size=(len(blocks), 1)).astype("<f2").view(np.uint8)
    return data


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _u64(len(raw)) + raw


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _s(key) + _u32(vtype) + payload


def _array(itype: int, n: int, payload: bytes = b"") -> bytes:
    return _u32(itype) + _u64(n) + payload


def _raw_gguf(
    path: Path,
    kvs: list[bytes],
    tensors: list[tuple[str, tuple[int, ...], int, int]] = (),  # type: ignore[assignment]
    data: bytes = b"",
    *,
    version: int = 3,
    counts: tuple[int, int] | None = None,
    alignment: int = 32,
) -> Path:
    """A GGUF file byte by byte; tensors are (name, GGUF-order dims, ggml type, offset)."""
    n_tensors, n_kv = counts or (len(tensors), len(kvs))
    out = b"GGUF" + _u32(version) + _u64(n_tensors) + _u64(n_kv) + b"".join(kvs)
    for name, dims, ggml_type, offset in tensors:
        out += _s(name) + _u32(len(dims)) + b"".join(_u64(d) for d in dims) + _u32(ggml_type) + _u64(offset)
    out += bytes(-len(out) % alignment) + data
    path.write_bytes(out)
    return path


# Every value type, as GGUFWriter writes them.
SCALARS = [
    ("t.u8", V.UINT8, 255), ("t.i8", V.INT8, -128), ("t.u16", V.UINT16, 65535), ("t.i16", V.INT16, -32768),
    ("t.u32", V.UINT32, 2**32 - 1), ("t.i32", V.INT32, -(2**31)), ("t.u64", V.UINT64, 2**64 - 1),
    ("t.i64", V.INT64, -(2**63)), ("t.f32", V.FLOAT32, 0.1), ("t.f32_inf", V.FLOAT32, float("-inf")),
    ("t.f64", V.FLOAT64, 1 / 3), ("t.bool_true", V.BOOL, True), ("t.bool_false", V.BOOL, False),
    ("t.string", V.STRING, "héllo wörld ✓ 🚀 中文"), ("t.string_nul", V.STRING, "a\x00b"),
]  # fmt: skip
ARRAYS = [
    ("a.u8", V.UINT8, [0, 1, 255]), ("a.i8", V.INT8, [-128, 0, 127]), ("a.u16", V.UINT16, [0, 65535]),
    ("a.i16", V.INT16, [-32768, 32767]), ("a.u32", V.UINT32, [0, 2**32 - 1]), ("a.i32", V.INT32, [-(2**31), 7]),
    ("a.u64", V.UINT64, [0, 2**64 - 1]), ("a.i64", V.INT64, [-(2**63), 2**63 - 1]),
    ("a.f32", V.FLOAT32, [0.1, -2.5, 1e30, float("inf")]), ("a.f64", V.FLOAT64, [0.1, -1e300]),
    ("a.bool", V.BOOL, [True, False, True]),
    ("a.string", V.STRING, ["", "ascii", "ünïcödé", "", "日本語", "👨‍👩‍👧", " Ġspace", "\n\t"]),
    ("a.one_string", V.STRING, ["only"]),
]  # fmt: skip


def _write_all_types(path: Path, *, alignment: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for key, vtype, value in SCALARS:
        w.add_key_value(key, value, vtype)
    for key, vtype, value in ARRAYS:
        w.add_key_value(key, value, V.ARRAY, sub_type=vtype)
    # Arrays of arrays (GGUFReader's contents() flattens them).
    w.add_key_value("n.ints", [[1, 2, 3], [4], [5, 6]], V.ARRAY)
    w.add_key_value("n.strings", [["a", "ü"], ["", "日本"]], V.ARRAY)
    w.add_key_value("n.deep", [[[1.5], [2.5, 3.5]], [[4.5]]], V.ARRAY)

    w.add_tensor("f32", rng.standard_normal((4, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((3, 8)).astype(np.float16))
    w.add_tensor("one_d", rng.standard_normal(5).astype(np.float32))
    w.add_tensor("three_d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    for name, qtype, shape in [("bf16", T.BF16, (2, 4)), ("q4_0", T.Q4_0, (2, 64)), ("q8_0", T.Q8_0, (3, 32))]:
        w.add_tensor(name, gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype), raw_dtype=qtype)
    w.add_tensor("q6_k", _k_blocks(rng, T.Q6_K, (2, 256)), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def all_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_all_types(tmp_path_factory.mktemp("gguf") / "all-types.gguf")


@pytest.fixture(scope="module")
def smollm2_layout(smollm2_gguf: Path) -> dict[str, int]:
    """Where things are in the SmolLM2 file, by GGUFReader."""
    reader = gguf.GGUFReader(str(smollm2_gguf))
    return {
        "tokens": reader.fields["tokenizer.ggml.tokens"].offset,
        "merges": reader.fields["tokenizer.ggml.merges"].offset,
        "first_info": reader.tensors[0].field.offset,
        "last_info": reader.tensors[-1].field.offset,
        "data": reader.data_offset,
        "data_end": max(t.data_offset + t.n_bytes for t in reader.tensors),
    }


# ------------------------------------------------------- same as GGUFReader


@pytest.mark.slow  # over 5 s on a loaded 2-core machine
def test_smollm2_same_as_gguf_reader(smollm2_gguf: Path) -> None:
    _assert_same_as_gguf_reader(smollm2_gguf)
    g = _read(smollm2_gguf)
    assert g.architecture == "llama" and len(g.metadata["tokenizer.ggml.tokens"]) == 49152
    assert all(isinstance(t, str) for t in g.metadata["tokenizer.ggml.merges"])


def test_every_value_and_tensor_type_same_as_gguf_reader(all_types: Path) -> None:
    _assert_same_as_gguf_reader(all_types)
    g = _read(all_types)
    for key, _, value in SCALARS + ARRAYS:
        if key == "t.f32":
            assert g.metadata[key] == float(np.float32(value))
        elif key not in ("a.f32",):
            assert g.metadata[key] == value, key
    assert g.metadata["n.ints"] == [1, 2, 3, 4, 5, 6]
    assert g.metadata["n.strings"] == ["a", "ü", "", "日本"]
    assert g.metadata["n.deep"] == [1.5, 2.5, 3.5, 4.5]


def test_tensors_are_as_the_importer_expects(all_types: Path) -> None:
    tensors = {t.name: t for t in _read(all_types).tensors}
    assert tensors["f32"].data.dtype == np.float32 and tensors["f32"].data.shape == (4, 8)
    assert tensors["f16"].data.dtype == np.float16 and tensors["f16"].data.shape == (3, 8)
    assert tensors["one_d"].shape.tolist() == [5] and tensors["one_d"].data.shape == (5,)
    assert tensors["three_d"].shape.tolist() == [4, 3, 2]  # GGUF order: innermost first
    assert tensors["i32"].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    for name, qtype, shape in [("q4_0", T.Q4_0, (2, 64)), ("q8_0", T.Q8_0, (3, 32)), ("q6_k", T.Q6_K, (2, 256)),
                               ("bf16", T.BF16, (2, 4))]:  # fmt: skip
        t = tensors[name]
        assert t.tensor_type is qtype and tuple(int(d) for d in reversed(t.shape)) == shape
        assert t.data.dtype == np.uint8 and t.data.shape == gguf.quants.quant_shape_to_byte_shape(shape, qtype)
        assert t.n_bytes == t.data.nbytes
        values = gguf.quants.dequantize(np.asarray(t.data), qtype)
        assert values.shape == shape and np.isfinite(values).all()


def test_custom_alignment(tmp_path: Path) -> None:
    path = _write_all_types(tmp_path / "aligned.gguf", alignment=256)
    _assert_same_as_gguf_reader(path)
    g = _read(path)
    assert g.metadata["general.alignment"] == 256
    assert all(t.data_offset % 256 == 0 for t in g.tensors)


def test_version_2_and_empty_arrays(tmp_path: Path) -> None:
    # GGUFWriter refuses empty arrays; llama.cpp's own writer does not.
    kvs = [_kv(f"empty.{t.name}", V.ARRAY, _array(t, 0)) for t in V]
    kvs += [
        _kv("general.architecture", V.STRING, _s("llama")),
        _kv("empty_string", V.STRING, _s("")),
        _kv("nested", V.ARRAY, _array(V.ARRAY, 2, _array(V.INT32, 1, struct.pack("<i", -3)) + _array(V.INT32, 0))),
        _kv("bool_2", V.BOOL, b"\x02"),  # any non-zero byte is true
        _kv("bools", V.ARRAY, _array(V.BOOL, 3, b"\x00\x07\x01")),
    ]
    data = np.arange(6, dtype=np.float32).tobytes()
    for version in (2, 3):
        path = _raw_gguf(tmp_path / f"v{version}.gguf", kvs, [("w", (3, 2), T.F32, 0)], data, version=version)
        _assert_same_as_gguf_reader(path)
        g = _read(path)
        assert g.metadata["empty.STRING"] == [] and g.metadata["empty_string"] == ""
        assert g.metadata["bool_2"] is True and g.metadata["bools"] == [False, True, True]
        assert g.tensors[0].data.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_no_tensors_and_no_metadata(tmp_path: Path) -> None:
    path = _raw_gguf(tmp_path / "bare.gguf", [])
    _assert_same_as_gguf_reader(path)
    assert _read(path).metadata == {} and _read(path).tensors == []


# ---------------------------------------------------------- broken files


@pytest.mark.slow  # over 5 s on a loaded 2-core machine
def test_every_cut_of_a_small_file_is_refused(all_types: Path, tmp_path: Path) -> None:
    full = all_types.read_bytes()
    g = _read(all_types)
    data_end = max(t.data_offset + t.n_bytes for t in g.tensors)
    assert data_end <= len(full)
    cut = tmp_path / "cut.gguf"
    for n in range(data_end):
        cut.write_bytes(full[:n])
        _assert_invalid(cut)
    # Only the padding after the last tensor may go.
    cut.write_bytes(full[:data_end])
    assert [t.name for t in _read(cut).tensors] == [t.name for t in g.tensors]


@pytest.mark.slow  # over 5 s on a loaded 2-core machine
@pytest.mark.parametrize(
    "where, delta",
    [("header", 10), ("header", 20), ("kv", 200), ("tokens", 100_000), ("merges", 7), ("first_info", 5),
     ("last_info", 30), ("data", 0), ("data", 4_900_000), ("data_end", -1)],
)  # fmt: skip
def test_cuts_of_smollm2_are_refused(
    smollm2_gguf: Path, smollm2_layout: dict[str, int], tmp_path: Path, where: str, delta: int
) -> None:
    n = smollm2_layout.get(where, 0) + delta
    cut = tmp_path / f"smollm2-cut-{where}.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(n))
    _assert_invalid(cut, r"truncated or corrupt|past the end")


@pytest.mark.parametrize("seed", range(20))
def test_garbage_after_the_magic_is_refused(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    garbage = rng.integers(0, 256, size=int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
    path = tmp_path / "garbage.gguf"
    for head in (b"GGUF", b"GGUF" + _u32(3), b"GGUF" + _u32(3) + _u64(seed % 3) + _u64(1 + seed % 5)):
        path.write_bytes(head + garbage)
        _assert_invalid(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    _assert_invalid(_write(tmp_path / "empty.gguf", b""))
    _assert_invalid(_write(tmp_path / "short.gguf", b"GGUF\x03\x00"))
    _assert_invalid(_write(tmp_path / "text.gguf", b"this is not a model at all, but long enough"), "magic")
    _assert_invalid(tmp_path / "missing.gguf")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_corrupted_bytes_read_or_raise_invalid_model_error(all_types: Path, tmp_path: Path) -> None:
    """Random byte changes: the file reads, or InvalidModelError; nothing else."""
    full = bytearray(all_types.read_bytes())
    data_start = min(t.data_offset for t in _read(all_types).tensors)
    rng = np.random.default_rng(1)
    path = tmp_path / "mutant.gguf"
    refused = 0
    for _ in range(400):
        mutant = bytearray(full)
        for pos in rng.integers(4, data_start, size=int(rng.integers(1, 4))):  # header, metadata, tensor infos
            mutant[pos] = int(rng.integers(0, 256))
        path.write_bytes(mutant)
        try:
            _read(path)
        except InvalidModelError as e:
            assert path.name in str(e)
            refused += 1
    assert refused > 50


LIES = {
    "n_kv": lambda: dict(kvs=[], counts=(0, 2**63)),
    "n_tensors": lambda: dict(kvs=[], counts=(2**40, 0)),
    "array_length": lambda: dict(kvs=[_kv("a", V.ARRAY, _array(V.UINT8, 2**60, b"\x01"))]),
    "string_array_length": lambda: dict(kvs=[_kv("a", V.ARRAY, _array(V.STRING, 2**40, _s("x")))]),
    "string_length": lambda: dict(kvs=[_kv("a", V.STRING, _u64(2**62) + b"abc")]),
    "string_in_array_length": lambda: dict(kvs=[_kv("a", V.ARRAY, _array(V.STRING, 2, _s("x") + _u64(2**63) + b"y"))]),
    "key_length": lambda: dict(kvs=[_u64(2**64 - 1) + b"key"]),
    "nested_array_length": lambda: dict(kvs=[_kv("a", V.ARRAY, _array(V.ARRAY, 1, _array(V.INT64, 2**61)))]),
    "deep_nesting": lambda: dict(kvs=[_kv("a", V.ARRAY, _array(V.ARRAY, 1) * 5000 + _array(V.UINT8, 0))]),
    # (a tensor info written by hand: name, n_dims, the first of 2**31 dimensions)
    "n_dims": lambda: dict(kvs=[_s("w") + _u32(2**31) + _u64(1)], counts=(1, 0)),
    "tensor_size": lambda: dict(kvs=[], tensors=[("w", (2**40, 2**20), T.F32, 0)], data=bytes(64)),
    "tensor_offset": lambda: dict(kvs=[], tensors=[("w", (4,), T.F32, 2**62)], data=bytes(64)),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_counts_larger_than_the_file_are_refused(tmp_path: Path, lie: str) -> None:
    _assert_invalid(_raw_gguf(tmp_path / f"{lie}.gguf", **LIES[lie]()))


BAD = {
    "unknown_value_type": ([_kv("a", 13, b"\x00" * 8)], [], "unknown value type 13"),
    "unknown_array_type": ([_kv("a", V.ARRAY, _array(99, 1, b"\x00" * 8))], [], "unknown value type 99"),
    "duplicate_key": ([_kv("a", V.UINT8, b"\x01"), _kv("a", V.UINT8, b"\x02")], [], "'a' appears twice"),
    "reserved_key": ([_kv("GGUF.kv_count", V.UINT8, b"\x01")], [], "appears twice"),
    "bad_utf8_key": ([_kv(b"\xff\xfe", V.UINT8, b"\x01")], [], "UTF-8"),
    "bad_utf8_string": ([_kv("a", V.STRING, _s(b"ok\xc3("))], [], "UTF-8"),
    "bad_utf8_in_array": ([_kv("a", V.ARRAY, _array(V.STRING, 2, _s("fine") + _s(b"\x80")))], [], r"'a'\[1\].*UTF-8"),
    "alignment_type": ([_kv("general.alignment", V.UINT64, _u64(32))], [], "alignment"),
    "alignment_zero": ([_kv("general.alignment", V.UINT32, _u32(0))], [], "alignment"),
    "alignment_odd": ([_kv("general.alignment", V.UINT32, _u32(48))], [], "alignment"),
    "unknown_tensor_type": ([], [("w", (4,), 99, 0)], "unknown type 99"),
    "duplicate_tensor": ([], [("w", (4,), T.F32, 0), ("w", (4,), T.F32, 32)], "'w' appears twice"),
    "partial_block": ([], [("w", (48, 2), T.Q4_0, 0)], "whole Q4_0 blocks"),
    "scalar_block": ([], [("w", (), T.Q8_0, 0)], "whole Q8_0 blocks"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_files_are_refused(tmp_path: Path, case: str) -> None:
    kvs, tensors, match = BAD[case]
    path = _raw_gguf(tmp_path / f"{case}.gguf", kvs, tensors, bytes(256))
    _assert_invalid(path, match)


def test_big_endian_and_old_versions_are_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("w", np.ones((2, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf.GGUFReader(str(path)).endianess == gguf.GGUFEndian.BIG
    _assert_invalid(path, "big-endian")
    _assert_invalid(_raw_gguf(tmp_path / "v1.gguf", [], version=1), "version 1")
    _assert_invalid(_raw_gguf(tmp_path / "v7.gguf", [], version=7), "version 7")
