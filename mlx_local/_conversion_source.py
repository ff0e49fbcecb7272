"""What a conversion starts from: the source resolved to a model folder, and its record.

A GGUF source is converted from its float32 import (exact values). That
import is a working copy, not something the user asked to keep: unless the
import cache already holds one (``Model.load(gguf, gguf_weights="float")``,
reused as it is), it is made under ``$MLX_LOCAL_HOME/tmp``, kept for the next
conversion of the same file in this process (trying several settings is the
common case) and deleted when another source needs one or the process ends;
a killed process's copy is removed by the next conversion. (It used to stay
in the import cache: a hidden 517 MB beside the 119 MB import of the default
model.)
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fileio import pid_alive, sha256_of

__all__ = [
    "Source",
    "check_model",
    "clean_stale_scratch",
    "default_name",
    "describe",
    "fingerprint",
    "is_quantized",
    "read_json",
    "resolve",
    "source_dtype",
]


@dataclass
class Source:
    """A conversion's source: as given, its kind, the model folder to read, and the original file or folder."""

    given: str
    kind: str  # gguf | repo | folder
    folder: Path  # the model folder (a GGUF's float import)
    original: Path | None  # the GGUF file or the given folder


def default_name(source: Any, bits: int | None, group_size: int, recipe: str | None) -> str:
    """``qwen3-0.6b-4bit-g64``, ``smollm2-135m-auto``, ... for a conversion into the models folder."""
    if source is None:
        stem = "smollm2-135m"
    else:
        stem = Path(str(source)).name
        stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    settings = recipe or (f"{bits}bit-g{group_size}" if bits else "float")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stem}-{settings}").lower()


def resolve(source: Any, revision: str | None, offline: bool | None) -> Source:
    """What ``source`` (as ``convert`` takes it) names, as a model folder in float where it can be."""
    from ._sources import local_folder, locate

    located = locate(source, offline=offline)
    given = located.name if source is None else str(source)
    if located.kind in ("default", "gguf"):
        from ._sources import embedded_gguf

        gguf = embedded_gguf(offline) if located.kind == "default" else located.path
        assert gguf is not None
        return Source(given, "gguf", _float_import(gguf), None if source is None else gguf)
    folder = local_folder(located, revision=revision, offline=offline, gguf_weights="float")
    if located.kind == "folder":
        return Source(given, "folder", folder, folder)
    return Source(located.repo or given, "repo", folder, None)


def describe(src: Source, revision: str | None) -> tuple[dict[str, Any], int]:
    """The provenance record of the source, and its size in bytes."""
    if src.kind == "gguf":
        record = read_json(src.folder / "mlx_local.json").get("source", {})
        size = int(record.get("size") or (src.original.stat().st_size if src.original else 0))
        return {"type": "gguf", **record}, size
    if src.kind == "folder":
        files = sorted(src.folder.glob("model*.safetensors"))
        prov: dict[str, Any] = {"type": "folder", "path": str(src.folder), "files": {f.name: sha256_of(f) for f in files}}
        upstream = read_json(src.folder / "mlx_local.json")
        if upstream:
            prov["upstream"] = upstream.get("source", upstream)
        return prov, _folder_bytes(src.folder)
    prov = {"type": "repo", "repo_id": src.given, "revision": revision}
    if src.folder.parent.name == "snapshots":
        prov["commit"] = src.folder.name
    return prov, _folder_bytes(src.folder)


def _folder_bytes(folder: Path) -> int:
    from ._loading import check_safetensors

    return sum(check_safetensors(f) for f in sorted(folder.glob("model*.safetensors")))


def read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model(folder: Path) -> dict[str, Any]:
    from ._loading import _model_classes, check_weights, read_config

    config = read_config(folder)
    _model_classes(config, folder)
    check_weights(folder)
    return config


def is_quantized(config: dict[str, Any]) -> bool:
    return bool(config.get("quantization") or config.get("quantization_config"))


def fingerprint(folder: Path) -> tuple[Any, ...]:
    """Names, sizes and modification times of a folder's files (what identifies its contents, cheaply)."""
    return tuple(
        (p.name, st.st_size, st.st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file() and (st := p.stat())
    )


def clean_stale_scratch(scratch: Path) -> None:
    """Remove the scratch files (references, float imports) of dead processes."""
    if not scratch.is_dir():
        return
    for p in [*scratch.glob("mlx_local-reference-*-*"), *scratch.glob("mlx_local-float-*-*")]:
        pid = p.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def source_dtype(config: dict[str, Any]) -> str:
    from ._loading import model_dtype

    return model_dtype(config)



# The float import of the latest GGUF converted from: {(path, size, mtime): folder}, at most one.
_float_imports: dict[tuple[str, int, int], Path] = {}
_cleanup_registered = False


def _float_import(gguf: Path) -> Path:
    """A float32 import of ``gguf`` to convert from (see the module docstring)."""
    global _cleanup_registered
    from ._assets import home
    from ._gguf_import import cached_import_folder, import_gguf

    cached = cached_import_folder(gguf, weights="float")
    if (cached / "config.json").is_file():
        return cached
    st = gguf.stat()
    key = (str(gguf.resolve()), st.st_size, st.st_mtime_ns)
    folder = _float_imports.get(key)
    if folder is not None and (folder / "config.json").is_file():
        return folder
    _drop_float_imports()
    scratch = home() / "tmp"
    clean_stale_scratch(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"mlx_local-float-{os.getpid()}-", dir=scratch))
    if not _cleanup_registered:
        atexit.register(_drop_float_imports)
        _cleanup_registered = True
    _float_imports[key] = work / "model"
    import_gguf(gguf, work / "model", weights="float")
    return work / "model"


def _drop_float_imports() -> None:
    for folder in _float_imports.values():
        shutil.rmtree(folder.parent, ignore_errors=True)
    _float_imports.clear()
