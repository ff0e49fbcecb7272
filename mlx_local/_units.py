"""Byte counts for people: ``format_bytes`` to show them, ``parse_bytes`` to read them."""

from __future__ import annotations

import re

__all__ = ["format_bytes", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def format_bytes(n: float) -> str:
    """``1.3 GB``, ``85 MB``, ``512 B`` (decimal units, as disk sizes)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{1 if abs(n) < 10 * size else 0}f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512 MiB"``, ``"1e9"`` -> bytes.

    Raises:
        ValueError: ``text`` is not a size; the message shows how to write one.
    """
    m = re.fullmatch(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 8GB, 512MB or 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
