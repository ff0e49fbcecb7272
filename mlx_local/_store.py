"""The models on this machine: download, list, remove; and the catalog beside them.

Three places hold models:

- the Hugging Face cache (``$HF_HOME/hub``), where :func:`pull` and
  ``Model.load`` download repos;
- the models folder (``$MLX_LOCAL_MODELS``, default
  ``~/.cache/mlx_local/models``), where ``convert`` and ``Model.save`` put
  models given a bare name, and from which ``Model.load(name)`` loads them;
- the import cache (``~/.cache/mlx_local/imports``), where GGUF files are
  imported once.

:func:`local_models` lists all three, :func:`remove` deletes one of them and
nothing else, and :func:`models` shows the catalog with what is downloaded
and what fits this machine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import _assets as assets
from . import _catalog as catalog
from . import _hub as hub
from ._catalog import CatalogEntry
from ._device import DeviceInfo, device_info
from ._fileio import storage_errors
from ._memory import DEFAULT_CONTEXT, MemoryEstimate
from ._sources import DEFAULT_ASSET, DEFAULT_ENTRY, DEFAULT_MODEL, default_imports, imports_dir, locate, models_dir
from ._units import format_bytes
from .errors import InvalidModelError, InvalidOptionError, ModelNotFoundError

__all__ = ["LocalModel", "CatalogModel", "Removed", "pull", "local_models", "remove", "models"]

#: What a :class:`LocalModel` can be. ``"embedded"`` (the default model's GGUF,
#: shipped by a package asset) appears only in a catalog row's ``local``
#: (:func:`models`): it is managed with ``python -m mlx_local assets``, not
#: listed by :func:`local_models` nor deleted by :func:`remove`.
#: Where a model on disk is: the HF cache, the models folder, the import cache, or inside the package.
LocalKind = Literal["downloaded", "converted", "imported", "embedded"]
KINDS: tuple[LocalKind, ...] = ("downloaded", "converted", "imported", "embedded")


@dataclass(frozen=True)
class LocalModel:
    """A model on disk.

    Attributes:
        name: the catalog name if it is a catalog model, else the repo id or folder name.
        kind: ``"downloaded"`` (Hugging Face cache), ``"converted"`` (models
            folder), ``"imported"`` (GGUF import cache) or, in a catalog
            row only, ``"embedded"`` (the default model's GGUF file).
        path: the model folder (for a download: its newest snapshot).
        size: bytes on disk (for a download: every revision kept).
        repo_id: the Hugging Face repo, for downloads.
        complete: whether config.json and every weight file are whole.
        entry: the catalog entry, when there is one.
    """

    name: str
    kind: LocalKind
    path: Path
    size: int
    repo_id: str | None = None
    complete: bool = True
    entry: CatalogEntry | None = field(default=None, repr=False)
    _root: Path | None = field(default=None, repr=False, compare=False)  # what remove() deletes

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "size": self.size,
                "repo_id": self.repo_id, "complete": self.complete}

    def __str__(self) -> str:
        state = "" if self.complete else ", incomplete: pull it again to finish"
        return f"{self.name} ({self.kind}, {format_bytes(self.size)}{state}) at {self.path}"


@dataclass(frozen=True)
class Removed:
    """What :func:`remove` deleted, and how many bytes that freed."""

    models: tuple[LocalModel, ...]
    freed: int

    def __str__(self) -> str:
        names = ", ".join(f"{m.name} ({m.kind})" for m in self.models)
        return f"Removed {names}: {format_bytes(self.freed)} freed."


def _folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _complete(folder: Path) -> bool:
    from ._loading import check_weights, read_config

    try:
        read_config(folder)
        check_weights(folder)
    except (InvalidModelError, OSError):
        return False
    return True


def _downloads() -> list[LocalModel]:
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(constants.HF_HUB_CACHE)  # its default is frozen at import
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        if not (newest.snapshot_path / "config.json").exists():
            continue  # not a model folder (a GGUF-only repo, a dataset-like repo...)
        entry = catalog.find(repo.repo_id)
        partial = any(f.file_path.parent.parent == repo.repo_path for f in info.incomplete_files)
        found.append(
            LocalModel(
                name=entry.name if entry else repo.repo_id,
                kind="downloaded",
                path=newest.snapshot_path,
                size=repo.size_on_disk + sum(
                    f.size_on_disk for f in info.incomplete_files if f.file_path.parent.parent == repo.repo_path
                ),
                repo_id=repo.repo_id,
                complete=not partial and _complete(newest.snapshot_path),
                entry=entry,
                _root=repo.repo_path,
            )
        )
    return found


def _folders(root: Path, kind: LocalKind) -> list[LocalModel]:
    if not root.is_dir():
        return []
    found = []
    embedded = default_imports() if kind == "imported" else set()
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or not (folder / "config.json").is_file():
            continue
        entry = catalog.find(DEFAULT_ENTRY) if folder.name in embedded else None  # an import of the default
        found.append(
            LocalModel(folder.name, kind, folder, _folder_size(folder), complete=_complete(folder), entry=entry,
                       _root=folder)
        )
    return found


def local_models() -> list[LocalModel]:
    """Every model on disk: downloaded, converted, and imported from GGUF, with sizes.

    Each is listed by a name ``Model.load`` and :func:`remove` take. Imports
    of the embedded default model carry its catalog entry (``smollm2-135m``).
    """
    return _downloads() + _folders(models_dir(), "converted") + _folders(imports_dir(), "imported")


def _embedded(entry: CatalogEntry) -> list[LocalModel]:
    """The embedded default's GGUF file, if ``entry`` is its catalog entry and the file is there (no fetching)."""
    if entry.name != DEFAULT_ENTRY:
        return []
    try:
        gguf = assets.path(DEFAULT_ASSET)
    except ModelNotFoundError:
        return []
    return [LocalModel(DEFAULT_MODEL, "embedded", gguf, gguf.stat().st_size, entry=entry)]


def pull(
    name_or_repo: str, *, revision: str | None = None, quantized: bool = True, progress: hub.Progress = None
) -> LocalModel:
    """Download a model (a catalog name or a repo id), only the files it needs.

    Shows progress bars (``progress=False`` for none); an interrupted
    download resumes where it stopped when pulled again; a model already
    downloaded is only checked for updates.

    Args:
        name_or_repo: a catalog name (``"qwen3-0.6b"``) or a repo id.
        revision: branch, tag or commit.
        quantized: for a catalog name, the MLX 4-bit repo (default) or the original.
        progress: None (default): huggingface_hub's bars on a terminal;
            False: nothing; a callable ``progress("download", fraction)``
            (the convention of ``Model.load`` and ``convert``).

    Raises:
        GatedModelError: accept the licence first (the message says where).
        ModelNotFoundError: unknown name or repo, or the hub is out of reach.
        InvalidOptionError: a local path was given (there is nothing to pull).
    """
    if not isinstance(name_or_repo, str) or not name_or_repo.strip():
        raise InvalidOptionError("pull() needs a catalog name or a Hugging Face repo id.", option="name_or_repo")
    located = locate(name_or_repo, quantized=quantized, offline=False)
    if located.kind != "repo":
        raise InvalidOptionError(
            f"{name_or_repo!r} is a local {located.kind}, not something to download; load it directly.",
            option="name_or_repo",
        )
    assert located.repo is not None
    path = hub.download(located.repo, revision=revision, progress=progress)
    for m in _downloads():
        if m.repo_id == located.repo:
            return LocalModel(m.name, m.kind, path, m.size, m.repo_id, m.complete, m.entry, m._root)
    raise ModelNotFoundError(f"{located.repo} was downloaded but is not in the cache listing.", source=located.repo)


def _matches(m: LocalModel, key: str, path: Path | None) -> bool:
    if path is not None:
        return path in (m.path, m._root) or (m._root is not None and m._root in path.parents and m.kind == "downloaded")
    k = key.lower()
    return k in (m.name.lower(), (m.repo_id or "").lower()) or (m.entry is not None and k == m.entry.name)


def remove(name_or_path: str | os.PathLike[str]) -> Removed:
    """Delete a downloaded, converted or imported model and say how much space that freed.

    ``name_or_path`` is a name or repo id as :func:`local_models` lists it
    (a catalog name removes every download of that model), or the path of
    one of those models. Nothing outside the three model stores is ever
    deleted; each model folder is first renamed aside, so an interrupted
    removal never leaves a half model that looks whole.

    Raises:
        ModelNotFoundError: nothing on disk by that name or path; nothing deleted.
        StorageError: a folder could not be removed (permissions, read-only
            disk); the models removed before it are gone, it and the rest are whole.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise InvalidOptionError("remove() needs a model name, repo id or path.", option="name_or_path")
    key = str(name_or_path)
    given = Path(key).expanduser()
    path = given.resolve() if (isinstance(name_or_path, os.PathLike) or given.exists()) else None
    found = [m for m in local_models() if _matches(m, key, path)]
    if not found:
        known = ", ".join(sorted({m.name for m in local_models()})) or "none"
        raise ModelNotFoundError(
            f"{key!r} is not a downloaded, converted or imported model, so nothing was deleted. "
            f"On disk now: {known}.",
            source=key,
        )
    freed = 0
    for m in found:
        root = m._root or m.path
        aside = root.with_name(f".{root.name}.removing-{os.getpid()}")
        with storage_errors(root, f"remove {m.name}"):
            os.replace(root, aside)
        shutil.rmtree(aside, ignore_errors=True)
        if m.kind == "downloaded":
            shutil.rmtree(root.parent / ".locks" / root.name, ignore_errors=True)
        freed += m.size
    return Removed(tuple(found), freed)


# ------------------------------------------------------------- catalog view


@dataclass(frozen=True)
class CatalogModel:
    """A catalog entry with what this machine has of it and whether it fits.

    Attributes:
        entry: the catalog facts (lab, license, repos, ...).
        local: its copies on disk (4-bit and/or original; imports of it; for
            ``smollm2-135m``, the embedded GGUF file when it is there).
        memory: the estimate for the variant ``models()`` was asked about.
        fits: whether that estimate fits this machine's usable memory.
    """

    entry: CatalogEntry
    local: tuple[LocalModel, ...]
    memory: MemoryEstimate
    fits: bool

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def downloaded(self) -> bool:
        return any(m.complete for m in self.local)

    @property
    def size_on_disk(self) -> int:
        return sum(m.size for m in self.local)

    def as_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name, "display_name": e.display_name, "lab": e.lab, "family": e.family,
            "parameters": e.parameters, "context_length": e.context_length, "thinking": e.thinking,
            "license": e.license.id, "commercial": e.license.commercial, "conditions": e.license.conditions,
            "gated": e.gated, "repo": e.repo, "mlx_4bit_repo": e.mlx_4bit_repo, "size_4bit": e.size_4bit,
            "downloaded": self.downloaded, "paths": [str(m.path) for m in self.local],
            "size_on_disk": self.size_on_disk, "memory": self.memory.total, "fits": self.fits,
        }


def models(
    *,
    lab: str | None = None,
    license: str | None = None,
    thinking: bool | None = None,
    fits: bool | None = None,
    downloaded: bool | None = None,
    quantized: bool = True,
    context: int = DEFAULT_CONTEXT,
    device: DeviceInfo | None = None,
    licence: str | None = None,
) -> list[CatalogModel]:
    """The catalog joined with what is on disk and what fits this machine.

    Filters (None: no filter): ``lab`` (part of the lab's name, any case),
    ``license`` (license id such as ``"apache-2.0"``, or ``"commercial"`` for
    licenses allowing commercial use without conditions; ``licence=`` is
    accepted as an alias), ``thinking``,
    ``fits`` and ``downloaded``. Memory is estimated for the MLX 4-bit
    variant (``quantized=False``: the original) at ``context`` tokens,
    offline, from the downloaded files when there are some.
    """
    from ._memory import estimate_for_entry

    if licence is not None:
        if license is not None and license != licence:
            raise InvalidOptionError(
                f"license={license!r} and licence={licence!r} disagree; give one (licence is an alias).",
                option="license",
            )
        license = licence
    device = device or device_info()
    on_disk = local_models()
    rows = []
    for e in catalog.entries():
        if lab is not None and lab.lower() not in e.lab.lower():
            continue
        if license is not None:
            want = license.lower()
            if want == "commercial" and e.license.commercial != "yes":
                continue
            if want != "commercial" and want not in (e.license.id.lower(), e.license.name.lower()):
                continue
        if thinking is not None and e.thinks != thinking:
            continue
        local = tuple(m for m in on_disk if m.entry is e) + tuple(_embedded(e))
        est = estimate_for_entry(e, quantized=quantized, context=context)
        row = CatalogModel(e, local, est, est.total <= device.usable_memory)
        if fits is not None and row.fits != fits:
            continue
        if downloaded is not None and row.downloaded != downloaded:
            continue
        rows.append(row)
    return rows
