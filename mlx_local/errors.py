"""Every error mlx_local raises on purpose.

The tree is small, and each class also derives from the built-in exception a
caller would already catch, so ``except LookupError`` or ``except ValueError``
keep working::

    MLXLocalError                       base of everything below
    ├── ModelNotFoundError (LookupError)     no such path / repo / file / name, or
    │   │                                    not downloaded and offline
    │   ├── GatedModelError                  the repo wants its license accepted first
    │   └── HubUnreachableError (ConnectionError)  not on disk, and the hub could
    │                                        not be reached (a server answers 503)
    ├── InvalidModelError (ValueError)       it exists but is not a usable model:
    │   │                                    bad config.json, truncated weights,
    │   │                                    corrupt GGUF, tokenizer that won't load
    │   └── UnsupportedArchitectureError     a well-formed model whose architecture
    │                                        mlx-lm (or our GGUF importer) lacks
    ├── InsufficientMemoryError (MemoryError) the model would not fit in this
    │                                        machine's memory (checked before loading)
    ├── InvalidOptionError (ValueError)      a bad argument: empty prompt,
    │                                        max_tokens=-1, top_p=1.5, ...
    ├── OutputError (ValueError)             the answer cannot be given as asked:
    │                                        structured output cut by max_tokens
    ├── StorageError (OSError)               a file or folder could not be read,
    │                                        written or removed: disk full,
    │                                        permissions (the path is named)
    ├── ChatError (ValueError)               a chat cannot do what was asked:
    │                                        undo() with nothing to undo, a file
    │                                        that is not a saved chat
    └── DistributedError (RuntimeError)      the ranks of a distributed model cannot
                                             go on together: a rank died, different
                                             model files, different requests

Every message names the thing at fault (path, repo id, file, architecture or
option) and says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "GatedModelError",
    "HubUnreachableError",
    "StorageError",
    "InsufficientMemoryError",
    "InvalidModelError",
    "InvalidOptionError",
    "OutputError",
    "ChatError",
    "DistributedError",
    "MLXLocalError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
]


class MLXLocalError(Exception):
    """Base class of every error raised by mlx_local."""


class ModelNotFoundError(MLXLocalError, LookupError):
    """The model named by ``source`` is not there, or cannot be fetched.

    Attributes:
        source: the path, repo id or name that was asked for.
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class GatedModelError(ModelNotFoundError):
    """The hub will serve the model only once its licence is accepted.

    Attributes:
        source: the repo id.
        url: where to accept the licence.
    """

    def __init__(self, message: str, *, source: str, url: str) -> None:
        super().__init__(message, source=source)
        self.url = url


class HubUnreachableError(ModelNotFoundError, ConnectionError):
    """The model is not on disk and the Hugging Face hub could not be reached.

    Unlike its parent, this says nothing about whether the repo exists: try
    again once online, or work offline with what is cached.

    Attributes:
        source: the repo id.
    """


class StorageError(MLXLocalError, OSError):
    """A file or folder could not be read, written or removed (disk full, permissions, ...).

    Nothing half-written is left behind where the operation promised
    atomicity. ``__cause__`` holds the original ``OSError``.

    Attributes:
        path: the file or folder at fault.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class InsufficientMemoryError(MLXLocalError, MemoryError):
    """The model needs more memory than this machine offers (``force=True`` loads it anyway).

    Attributes:
        required: bytes the model is estimated to need.
        available: bytes usable on this device.
        suggestion: a catalog name that would fit, or None.
    """

    def __init__(self, message: str, *, required: int, available: int, suggestion: str | None) -> None:
        super().__init__(message)
        self.required = required
        self.available = available
        self.suggestion = suggestion


class InvalidModelError(MLXLocalError, ValueError):
    """The model exists but cannot be used as it is.

    Attributes:
        path: the file or folder at fault.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedArchitectureError(InvalidModelError):
    """The model is well formed but its architecture is not supported.

    Attributes:
        path: the model file or folder.
        architecture: the architecture (``model_type`` or GGUF architecture).
    """

    def __init__(self, message: str, *, path: str, architecture: str) -> None:
        super().__init__(message, path=path)
        self.architecture = architecture


class InvalidOptionError(MLXLocalError, ValueError):
    """An argument has a value that cannot work.

    Attributes:
        option: the name of the argument at fault.
    """

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


class OutputError(MLXLocalError, ValueError):
    """The answer cannot be given as asked, e.g. ``.parsed`` of a reply cut by ``max_tokens`` inside its JSON.

    Attributes:
        text: the text the model did write.
    """

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message)
        self.text = text


class ChatError(MLXLocalError, ValueError):
    """A chat cannot do what was asked; the chat is left as it was.

    Attributes:
        path: the chat file at fault, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class DistributedError(MLXLocalError, RuntimeError):
    """The ranks of a distributed model cannot go on together.

    A rank died or lost its network, the ranks hold different model files,
    or they were asked to generate different things.

    Attributes:
        rank: this process's rank.
    """

    def __init__(self, message: str, *, rank: int) -> None:
        super().__init__(message)
        self.rank = rank
