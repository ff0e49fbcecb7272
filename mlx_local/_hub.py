"""Hugging Face repo ids to local model folders, through huggingface_hub.

The local cache is always tried first and without any network access; the hub
is asked only for what is not there. ``offline=True`` (or ``HF_HUB_OFFLINE=1``)
never touches the network. Downloads fetch only the files a model needs, show
huggingface_hub's progress bars, and resume where an interrupted one stopped
(huggingface_hub keeps the partial file and asks for the rest).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from .errors import GatedModelError, HubUnreachableError, ModelNotFoundError, StorageError

__all__ = ["MODEL_FILES", "Progress", "is_offline", "resolve_repo", "download", "cached_folder", "hub_errors"]

# What a model needs, and nothing else (no PyTorch .bin, no GGUF siblings).
MODEL_FILES = [
    "*.json",
    "*.safetensors",
    "*.jinja",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "tokenizer*",
]

# OSErrors of the local disk (the cache), not of the network.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def is_offline(offline: bool | None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` is set to a true value."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(repo_id: str) -> str:
    return (
        f"Download it once while online (`mlx_local.pull({repo_id!r})` "
        f"or `hf download {repo_id}`), or pass a local folder or .gguf file instead."
    )


def _gated_message(repo_id: str) -> tuple[str, str]:
    from . import _catalog as catalog

    url = f"https://huggingface.co/{repo_id}"
    entry = catalog.find(repo_id)
    licence = f"the {entry.license.name}" if entry else "its licence"
    read = f" (terms: {entry.license.url})" if entry and entry.license.url else ""
    return (
        f"{repo_id} is gated: accept {licence} at {url}{read} with your Hugging Face account, "
        "then log in here with `hf auth login` (or set HF_TOKEN) and try again.",
        url,
    )


def _root_cause(e: BaseException) -> str:
    """``"Type: message"`` of the innermost exception that led to ``e`` (what went wrong on the wire)."""
    seen = {id(e)}
    while True:
        inner = e.__cause__ or e.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        e = inner
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions about ``repo_id`` into ours, with what to do.

    A repo or revision that does not exist is a :class:`ModelNotFoundError`
    (a server would answer 404); a hub out of reach (connection refused, no
    DNS, timeouts, server errors) is a :class:`HubUnreachableError` (503),
    which says nothing about whether the repo exists.

    Ours are raised ``from None``: the message says what happened and what to
    do (for an unreachable hub, with the root cause, e.g. "ConnectError:
    [Errno 111] Connection refused"), and a script's traceback stays a dozen
    lines instead of a hundred of httpcore, httpx and huggingface_hub. The
    original exception, with its whole chain and traceback, is still there
    for a bug report as ``error.__context__`` (only its printing is
    suppressed). A disk error while downloading keeps its ``OSError`` as
    ``__cause__``.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (  # type: ignore[attr-defined]
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        HTTPError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = repo_id + (f"@{revision}" if revision else "")
    try:
        yield
    except GatedRepoError:
        message, url = _gated_message(repo_id)
        raise GatedModelError(message, source=repo_id, url=url) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"There is no Hugging Face repo {repo_id!r} (or it is private: log in with `hf auth login`). "
            "Check the spelling.",
            source=repo_id,
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} has no revision {revision!r}. Check the branch, tag or commit.", source=repo_id
        ) from None
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither an existing path nor a valid Hugging Face repo id ({e}).", source=repo_id
        ) from None
    except (NotASafetensorsRepoError, EntryNotFoundError) as e:
        if isinstance(e, LocalEntryNotFoundError):
            raise HubUnreachableError(
                f"{label} is not in the local Hugging Face cache and the hub could not be reached "
                f"({_root_cause(e)}). {_how_to_get(repo_id)}",
                source=repo_id,
            ) from None
        raise ModelNotFoundError(
            f"{label} has no safetensors weights or config.json, so it is not a model mlx_local can load "
            "(for a repo of .gguf files, download the file and pass its path).",
            source=repo_id,
        ) from None
    except (HTTPError, OSError) as e:
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:  # writing the cache, not reaching the hub
            raise StorageError(
                f"Could not store {label} in the Hugging Face cache ({e.filename or constants.HF_HUB_CACHE}): "
                f"{e.strerror}. Free some space or fix the permissions, then try again.",
                path=str(e.filename or constants.HF_HUB_CACHE),
            ) from e
        status = getattr(getattr(e, "response", None), "status_code", None)
        what = f"{label} could not be fetched from the hub ({_root_cause(e)}). {_how_to_get(repo_id)}"
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
            raise ModelNotFoundError(what, source=repo_id) from e  # the hub answered: it refuses this repo
        # Connection refused, no DNS, timeouts, 5xx, 429: says nothing about the repo.
        raise HubUnreachableError(what, source=repo_id) from None


def cached_folder(repo_id: str, *, revision: str | None = None) -> Path | None:
    """The complete local snapshot of ``repo_id`` (config.json and weights), or None. No network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None
    except HFValidationError:
        with hub_errors(repo_id, revision):
            raise
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return None


#: The one progress convention of load, pull and convert: None (the default:
#: downloads show huggingface_hub's bars on a terminal), False (nothing), or a
#: callable ``progress(stage, fraction)``.
Progress = Union[Callable[[str, float], None], bool, None]


def _tqdm_class(progress: Progress) -> Any:
    if progress is None or progress is True:
        return None  # huggingface_hub's own bars (terminal or notebook)
    import io

    from tqdm.auto import tqdm

    if progress is False:

        class Silent(tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        return Silent
    report = progress

    class Reporting(tqdm):  # type: ignore[misc, valid-type]
        """Counts like a bar, draws nothing, and tells ``progress("download", fraction)``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"], kwargs["file"] = False, io.StringIO()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown: bool | None = super().update(n)
            if self.total:
                report("download", min(1.0, self.n / self.total))
            return shown

    return Reporting


def download(repo_id: str, *, revision: str | None = None, progress: Progress = None) -> Path:
    """Download (or update, or finish) the model files of ``repo_id``; return the snapshot folder.

    Raises:
        GatedModelError: the licence must be accepted first.
        ModelNotFoundError: no such repo or revision.
        HubUnreachableError: the hub is out of reach.
    """
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision):
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=MODEL_FILES,
                etag_timeout=5,
                tqdm_class=_tqdm_class(progress),
            )
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{repo_id} has no config.json, so it is not a model mlx_local can load "
            "(for a repo of .gguf files, download the file and pass its path).",
            source=repo_id,
        )
    return path


def resolve_repo(repo_id: str, *, revision: str | None, offline: bool | None, progress: Progress = None) -> Path:
    """The local folder of ``repo_id`` at ``revision``, downloading only if needed.

    Raises:
        GatedModelError: the repo is gated and its licence not accepted.
        ModelNotFoundError: not cached and offline, or the repo or revision
            does not exist.
        HubUnreachableError: not cached, and the hub out of reach.
    """
    folder = cached_folder(repo_id, revision=revision)
    if folder is not None:
        return folder
    if is_offline(offline):
        label = repo_id + (f"@{revision}" if revision else "")
        raise ModelNotFoundError(
            f"{label} is not in the local Hugging Face cache and offline mode is on "
            f"(offline=True or HF_HUB_OFFLINE=1), so it was not downloaded. {_how_to_get(repo_id)}",
            source=repo_id,
        )
    return download(repo_id, revision=revision, progress=progress)
