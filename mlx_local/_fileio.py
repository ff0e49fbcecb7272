"""Small file helpers shared across the package: digests, atomic writes, staged folders.

Every folder the package writes (``Model.save``, a GGUF import, ``convert``,
an asset fetch) is written through :func:`staged_folder`: the work happens in
a hidden ``.<name>.partial-<pid>-*`` folder beside the destination, which is
renamed into place only once complete. An exception (``KeyboardInterrupt``
included) removes the stage; a killed process leaves it behind, and the next
write to the same destination removes it (see :func:`clear_stale`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InvalidOptionError, MLXLocalError, StorageError

__all__ = [
    "DestinationExists",
    "Stage",
    "clear_stale",
    "copy_model_folder",
    "pid_alive",
    "replace_dir",
    "sha256_of",
    "staged_folder",
    "storage_errors",
    "write_text_atomic",
]

_PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)-")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def storage_errors(path: Path | str, doing: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permissions, ...) into a :class:`StorageError`.

    ``doing`` completes the sentence "Could not ... at <path>" (e.g. ``"save
    the model"``). The error's ``path`` is the file the system named (the
    culprit), else ``path``; ``__cause__`` is the ``OSError``. Our own errors
    pass through unchanged (some, like ``HubUnreachableError``, are OSErrors too).
    """
    try:
        yield
    except MLXLocalError:
        raise
    except OSError as e:
        culprit = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else str(path)
        where = f"{path}" if culprit == str(path) else f"{path} ({culprit})"
        reason = e.strerror or str(e) or type(e).__name__
        raise StorageError(
            f"Could not {doing} at {where}: {reason}. Check the free space and the permissions of that "
            "folder; nothing half-written was left in its place.",
            path=culprit,
        ) from e


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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale(dest: Path) -> None:
    """Remove the stages that killed writes to ``dest`` left behind (their process is gone).

    A write killed in the instant between moving an existing ``dest`` aside
    and renaming its result into place left the old ``dest`` in its stage as
    ``previous``: that is put back first. Stages of live processes (another
    write in progress) are left alone.
    """
    if not dest.parent.is_dir():
        return
    for p in sorted(dest.parent.glob(f".{glob_escape(dest.name)}.partial-*")):
        m = _PARTIAL.match(p.name)
        if not m or m["name"] != dest.name or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        if (p / "previous").is_dir() and not dest.exists() and not dest.is_symlink():
            os.replace(p / "previous", dest)
        shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


class DestinationExists(FileExistsError):
    """The destination of a staged write exists, and replacing it was not asked for."""


class Stage:
    """A write in progress: see :func:`staged_folder`.

    Attributes:
        dest: where the result goes.
        work: the hidden stage folder (scratch space; removed at the end).
        folder: ``work / "new"``, the folder that becomes ``dest`` unless
            :meth:`commit` is given another one.
        committed: whether the result is in place.
    """

    def __init__(self, dest: Path, work: Path, overwrite: bool) -> None:
        self.dest = dest
        self.work = work
        self.folder = work / "new"
        self.folder.mkdir()
        self.overwrite = overwrite
        self.committed = False

    def commit(self, folder: Path | None = None) -> None:
        """Rename ``folder`` (default :attr:`folder`), complete, into place at ``dest``.

        An existing ``dest`` is replaced only with ``overwrite``, and kept (moved
        into the stage as ``previous``) until the new one is in place.

        Raises:
            DestinationExists: ``dest`` exists (it may have appeared meanwhile) and
                ``overwrite`` is false.
        """
        folder = self.folder if folder is None else folder
        if (self.dest.exists() or self.dest.is_symlink()) and not self.overwrite:
            raise DestinationExists(f"{self.dest} already exists")
        replace_dir(folder, self.dest, self.work / "previous")
        self.committed = True


@contextmanager
def staged_folder(dest: Path, *, overwrite: bool = False, commit: bool = True) -> Iterator[Stage]:
    """Write a folder that appears at ``dest`` only once complete.

    Yields a :class:`Stage`; write into ``stage.folder`` (or anywhere in
    ``stage.work`` and pass the folder to ``stage.commit``). When the block
    ends normally the result is renamed into place (``commit=False``: only if
    the block called ``stage.commit()``). Whatever happens, the stage is
    removed at the end; an exception (``KeyboardInterrupt`` included) leaves
    ``dest`` as it was. Stale stages of dead processes are cleared first.
    """
    clear_stale(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-{os.getpid()}-"))
    try:
        stage = Stage(dest, work, overwrite)
        yield stage
        if commit and not stage.committed:
            stage.commit()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def copy_model_folder(src: Path, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Copy the model folder ``src`` to ``dest``, which appears only when complete (``Model.save``)."""

    dest = Path(dest).expanduser().resolve()
    with storage_errors(dest, "save the model"):
        clear_stale(dest)  # (first: a dest moved aside by a killed save is put back)
        if dest.exists() and not overwrite:
            raise InvalidOptionError(f"{dest} already exists; pass overwrite=True to replace it.", option="dest")
        if dest == src or src in dest.parents:
            raise InvalidOptionError(f"{dest} is inside the model's own folder {src}.", option="dest")
        with staged_folder(dest, overwrite=overwrite) as stage:
            shutil.copytree(src, stage.folder, dirs_exist_ok=True)
    return dest
