"""A GGUF file's metadata and tensors, read from a memory map.

:func:`read_gguf` gives what ``gguf.GGUFReader`` gives (metadata values, and
each tensor's type, shape and a read-only view of its bytes), in a fraction
of the time, and checks every count and length against the file's size, so a
corrupt file fails with an :class:`~mlx_local.errors.InvalidModelError` that
says where, never an IndexError or a huge allocation. What the tensors mean
is :mod:`mlx_local._gguf_import`'s business.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidModelError, StorageError

__all__ = ["Gguf", "GgufTensor", "read_gguf"]


@dataclass
class Gguf:
    """The parts of a GGUF file the importer needs."""

    path: Path
    metadata: dict[str, Any]
    tensors: list[GgufTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file, with the attributes of ``gguf.ReaderTensor``
    the importer uses, and the same values ``GGUFReader`` gives."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray  # uint64, GGUF order (innermost dimension first)
    n_elements: int
    n_bytes: int
    data_offset: int  # from the start of the file
    # Read-only view of the file: F32/F16/F64/I* as their dtype in numpy
    # order, every other type as uint8 (rows, bytes per row).
    data: np.ndarray


class _Malformed(ValueError):
    """What is wrong with a GGUF file, and where."""


class _Unsupported(Exception):
    """A well-formed GGUF file this reader does not handle (its message says so in full)."""


_GGUF_VERSIONS = (2, 3)
_GGUF_DEFAULT_ALIGNMENT = 32
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32, _GGUF_BOOL = 8, 9, 4, 7
#: GGUF scalar value types: struct format of one value, numpy dtype of an array.
_GGUF_SCALARS = {
    0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
    4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "<u1"),
    10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8"),
}  # fmt: skip
#: Fewest bytes one array element of each type takes (string: its length; array: type and length).
_GGUF_MIN_SIZE = {t: struct.calcsize(f) for t, (f, _) in _GGUF_SCALARS.items()} | {_GGUF_STRING: 8, _GGUF_ARRAY: 12}
#: Arrays in arrays deeper than this are refused (real files nest at most once).
_GGUF_MAX_NESTING = 8
#: GGML types GGUFReader gives as typed arrays (F32, F16, F64, I8..I64); the rest are uint8 blocks.
_GGUF_NUMPY_TYPES = {0: "<f4", 1: "<f2", 28: "<f8", 24: "<i1", 25: "<i2", 26: "<i4", 27: "<i8"}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_ARRAY_HEADER = struct.Struct("<IQ")  # element type, length
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, offset in the data section


class _GgufParser:
    """GGUF versions 2 and 3, little-endian, parsed from a read-only memory map.

    Metadata values are what ``gguf.GGUFReader(...).fields[key].contents()``
    gives (arrays of arrays flattened, as there), but arrays are read whole:
    numbers with numpy, strings in one tight loop, instead of one numpy view
    per element. Every count and length is checked against the file's size
    before it is used, so a corrupt file fails with a ``_Malformed`` that says
    where, never an IndexError or a huge allocation.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # (numpy cannot map an empty file; parse() rejects it as too short)
        self.map: np.ndarray = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.empty(0, np.uint8)
        self.buf = memoryview(self.map.data)
        self.size = len(self.buf)

    def need(self, off: int, n: int, what: str) -> None:
        if off + n > self.size:
            raise _Malformed(
                f"{what} runs past the end of the file (needs {n} bytes at offset {off}, file is {self.size} bytes)"
            )

    def string(self, off: int, what: str) -> tuple[str, int]:
        self.need(off, 8, what)
        (n,) = _U64.unpack_from(self.buf, off)
        self.need(off + 8, n, what)
        try:
            return str(self.buf[off + 8 : off + 8 + n], "utf-8"), off + 8 + n
        except UnicodeDecodeError as e:
            raise _Malformed(f"{what} at offset {off} is not valid UTF-8 ({e.reason})") from None

    def value(self, off: int, vtype: int, what: str) -> tuple[Any, int]:
        if vtype in _GGUF_SCALARS:
            n = _GGUF_MIN_SIZE[vtype]
            self.need(off, n, what)
            return struct.unpack_from(_GGUF_SCALARS[vtype][0], self.buf, off)[0], off + n
        if vtype == _GGUF_STRING:
            return self.string(off, what)
        if vtype == _GGUF_ARRAY:
            out: list[Any] = []
            return out, self.array(off, what, out, 1)
        raise _Malformed(f"{what} has an unknown value type {vtype}")

    def array(self, off: int, what: str, out: list[Any], depth: int) -> int:
        """Append the elements of the array at ``off`` to ``out``; return the offset after it."""
        if depth > _GGUF_MAX_NESTING:
            raise _Malformed(f"{what} nests arrays more than {_GGUF_MAX_NESTING} deep")
        self.need(off, 12, what)
        itype, n = _ARRAY_HEADER.unpack_from(self.buf, off)
        off += 12
        if itype not in _GGUF_MIN_SIZE:
            raise _Malformed(f"{what} is an array of an unknown value type {itype}")
        if n * _GGUF_MIN_SIZE[itype] > self.size - off:
            raise _Malformed(f"{what} claims {n} elements, more than the rest of the file holds")
        if itype in _GGUF_SCALARS:
            dtype = np.dtype(_GGUF_SCALARS[itype][1])
            end = off + n * dtype.itemsize
            values = np.frombuffer(self.buf[off:end], dtype)
            out.extend((values != 0 if itype == _GGUF_BOOL else values).tolist())
            return int(end)
        if itype == _GGUF_STRING:
            return self.strings(off, n, what, out)
        for _ in range(n):
            off = self.array(off, what, out, depth + 1)
        return off

    def strings(self, off: int, n: int, what: str, out: list[Any]) -> int:
        # The hot loop of a vocabulary (150k-260k tokens): keep it lean.
        buf, size, unpack, append = self.buf, self.size, _U64.unpack_from, out.append
        i = 0
        try:
            for i in range(n):  # noqa: B007 (i names the element at fault below)
                (length,) = unpack(buf, off)
                end = off + 8 + length
                if end > size:
                    break
                append(str(buf[off + 8 : end], "utf-8"))
                off = end
            else:
                return off
        except struct.error:
            pass
        except UnicodeDecodeError as e:
            raise _Malformed(f"{what}[{i}] at offset {off} is not valid UTF-8 ({e.reason})") from None
        raise _Malformed(f"{what}[{i}] runs past the end of the file (offset {off}, file is {size} bytes)")

    def parse(self) -> tuple[dict[str, Any], list[GgufTensor]]:
        import gguf

        buf, size = self.buf, self.size
        if bytes(buf[:4]) != b"GGUF":
            raise _Malformed("it does not start with the GGUF magic number")
        if size < 24:
            raise _Malformed(f"it is {size} bytes long, too short for a GGUF header")
        (version,) = _U32.unpack_from(buf, 4)
        if version not in _GGUF_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in _GGUF_VERSIONS:
                raise _Unsupported(
                    f"{self.path} is a big-endian GGUF file, which is not supported: "
                    "use the model's usual (little-endian) GGUF file."
                )
            if version == 1:
                raise _Unsupported(
                    f"{self.path} is a GGUF version 1 file, which is not supported: "
                    "use a file made by a current llama.cpp (GGUF version 2 or 3)."
                )
            raise _Malformed(f"unknown GGUF version {version}")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        off = 24
        # Each metadata entry takes at least 13 bytes, each tensor info 24.
        if n_kv * 13 + n_tensors * 24 > size - off:
            raise _Malformed(
                f"its header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file holds"
            )

        metadata: dict[str, Any] = {}
        seen = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}  # GGUFReader's own field names
        alignment = _GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key, off = self.string(off, f"metadata key #{i}")
            self.need(off, 4, f"metadata {key!r}")
            (vtype,) = _U32.unpack_from(buf, off)
            value, off = self.value(off + 4, vtype, f"metadata {key!r}")
            if key in seen:
                raise _Malformed(f"metadata key {key!r} appears twice")
            seen.add(key)
            if key == "general.alignment":
                if vtype != _GGUF_UINT32 or value <= 0 or value & (value - 1):
                    raise _Malformed(f"general.alignment must be a power of two stored as uint32, not {value!r}")
                alignment = value
            if not key.startswith("GGUF."):
                metadata[key] = value

        infos = []
        for i in range(n_tensors):
            name, off = self.string(off, f"tensor info #{i}")
            self.need(off, 4, f"tensor info {name!r}")
            (n_dims,) = _U32.unpack_from(buf, off)
            self.need(off + 4, 8 * n_dims + 12, f"tensor info {name!r}")
            dims = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
            raw_type, rel_offset = _TENSOR_TAIL.unpack_from(buf, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            infos.append((name, dims, raw_type, rel_offset))
        data_start = off + -off % alignment

        tensors: list[GgufTensor] = []
        names: set[str] = set()
        for name, dims, raw_type, rel_offset in infos:
            if name in names:
                raise _Malformed(f"tensor {name!r} appears twice")
            names.add(name)
            try:
                qtype = gguf.GGMLQuantizationType(raw_type)
                block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise _Malformed(f"tensor {name!r} has an unknown type {raw_type}") from None
            n_elements = math.prod(dims)
            n_bytes = n_elements * type_size // block_size
            data_offset = data_start + rel_offset
            if data_offset + n_bytes > size:
                raise _Malformed(
                    f"tensor {name!r} runs past the end of the file (its data ends at byte {data_offset + n_bytes}, "
                    f"the file has {size})"
                )
            np_shape = tuple(reversed(dims))
            dtype = _GGUF_NUMPY_TYPES.get(int(qtype))
            if dtype is None:  # a block format: rows of raw bytes, as GGUFReader gives them
                if not np_shape or np_shape[-1] % block_size:
                    raise _Malformed(
                        f"tensor {name!r} of shape {list(dims)} is not made of whole {qtype.name} blocks"
                    )
                np_shape, dtype = (*np_shape[:-1], np_shape[-1] // block_size * type_size), "<u1"
            data = self.map[data_offset : data_offset + n_bytes].view(np.dtype(dtype)).reshape(np_shape)
            shape = np.array(dims, dtype=np.uint64)
            tensors.append(GgufTensor(name, qtype, shape, n_elements, n_bytes, data_offset, data))
        return metadata, tensors


def read_gguf(path: Path) -> Gguf:
    """The metadata and tensors of a GGUF file, as ``gguf.GGUFReader`` gives them (see ``_GgufParser``).

    Raises:
        InvalidModelError: the file is not a GGUF file this reader handles, or is truncated or corrupt.
        StorageError: the file could not be read (permissions, I/O error).
    """
    try:
        metadata, tensors = _GgufParser(path).parse()
    except _Unsupported as e:
        raise InvalidModelError(str(e), path=str(path)) from None
    except _Malformed as e:  # our message says it all: no internal exception chained to what users see
        raise InvalidModelError(_unreadable(path, e), path=str(path)) from None
    except (FileNotFoundError, IsADirectoryError) as e:
        raise InvalidModelError(_unreadable(path, e), path=str(path)) from None
    except OSError as e:  # permissions, I/O errors: the file may be fine
        raise StorageError(f"Could not read {path}: {e.strerror or e}.", path=str(path)) from e
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, EOFError, struct.error, OverflowError) as e:
        # Not foreseen by the parser (a bug, or a file stranger than expected): keep the cause for a report.
        raise InvalidModelError(_unreadable(path, e), path=str(path)) from e
    return Gguf(path=path, metadata=metadata, tensors=tensors)


def _unreadable(path: Path, e: Exception) -> str:
    return (
        f"{path} is not a readable GGUF file ({e}). It may be truncated or corrupt: "
        "download it again and check its size and checksum."
    )

