"""Small file helpers shared across the package: digests and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["replace_dir", "sha256_of", "write_text_atomic"]


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(new: Path, dest: Path, aside: Path) -> None:
    """Move the complete folder ``new`` to ``dest`` by rename.

    An existing ``dest`` is first renamed to ``aside`` and renamed back if the
    move fails; deleting ``aside`` afterwards is the caller's job.
    """
    if not dest.exists():
        os.replace(new, dest)
        return
    os.replace(dest, aside)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
