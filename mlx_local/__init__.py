"""mlx_local: run open-weight language models locally, on MLX.

>>> import mlx_local
>>> model = mlx_local.Model.load()          # the embedded default, SmolLM2-135M-Instruct
>>> print(model.generate("What is the capital of France?").text)

The top level holds what you call and what you catch; the types the calls
return live in :mod:`mlx_local.types`, the whole exception tree in
:mod:`mlx_local.errors`. Importing this package first lets it choose the
CPU's BLAS before MLX loads (see ``mlx_local._runtime``).
"""

from . import _runtime

_runtime.prepare()  # before anything below imports mlx

from ._chat import Chat  # noqa: E402
from ._convert import convert  # noqa: E402
from ._device import device_info  # noqa: E402
from ._memory import estimate_memory  # noqa: E402
from ._model import DEFAULT_MODEL, Model  # noqa: E402
from ._serve import create_app, serve  # noqa: E402
from ._store import local_models, models, pull, remove  # noqa: E402
from ._version import __version__  # noqa: E402
from .errors import (  # noqa: E402
    ChatError,
    InsufficientMemoryError,
    InvalidModelError,
    InvalidOptionError,
    MLXLocalError,
    ModelNotFoundError,
    OutputError,
    StorageError,
)

__all__ = [
    "DEFAULT_MODEL",
    "Chat",
    "ChatError",
    "InsufficientMemoryError",
    "InvalidModelError",
    "InvalidOptionError",
    "MLXLocalError",
    "Model",
    "ModelNotFoundError",
    "OutputError",
    "StorageError",
    "__version__",
    "convert",
    "create_app",
    "device_info",
    "estimate_memory",
    "local_models",
    "models",
    "pull",
    "remove",
    "serve",
]
