"""Hugging Face repo ids to local model folders, through huggingface_hub.

The local cache is always tried first and without any network access; the hub
is asked only for what is not there. ``offline=True`` (or ``HF_HUB_OFFLINE=1``)
never touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["MODEL_FILES", "is_offline", "resolve_repo"]

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


def is_offline(offline: bool | None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` is set to a true value."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(repo_id: str) -> str:
    return (
        f"Download it once while online (`hf download {repo_id}`, or "
        f"`Model.load({repo_id!r}, offline=False)`), or pass a local folder or .gguf file instead."
    )


def resolve_repo(repo_id: str, *, revision: str | None, offline: bool | None) -> Path:
    """The local folder of ``repo_id`` at ``revision``, downloading only if needed.

    Raises:
        ModelNotFoundError: not cached and offline, the hub out of reach, the
            repo or revision does not exist, or the repo is gated.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = repo_id + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, local_files_only=True)
        if (Path(path) / "config.json").is_file():
            return Path(path)
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither an existing path nor a valid Hugging Face repo id ({e}).",
            source=repo_id,
        ) from e
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    if is_offline(offline):
        raise ModelNotFoundError(
            f"{label} is not in the local Hugging Face cache and offline mode is on "
            f"(offline=True or HF_HUB_OFFLINE=1), so it was not downloaded. {_how_to_get(repo_id)}",
            source=repo_id,
        )
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, etag_timeout=5)
        )
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} and log in "
            "(`hf auth login`) before downloading it.",
            source=repo_id,
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"There is no Hugging Face repo {repo_id!r} (or it is private). Check the spelling.",
            source=repo_id,
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"{repo_id} has no revision {revision!r}. Check the branch, tag or commit.", source=repo_id
        ) from e
    except (LocalEntryNotFoundError, OSError) as e:
        raise ModelNotFoundError(
            f"{label} is not in the local Hugging Face cache and the hub could not be reached "
            f"({type(e).__name__}). {_how_to_get(repo_id)}",
            source=repo_id,
        ) from e
