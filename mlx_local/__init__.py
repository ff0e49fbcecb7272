"""mlx_local: run open-weight language models locally, on MLX.

>>> import mlx_local
>>> model = mlx_local.Model.load()          # the embedded default, SmolLM2-135M-Instruct
>>> print(model.generate("What is the capital of France?").text)

Importing this package first lets it choose the CPU's BLAS before MLX loads
(see :mod:`mlx_local._runtime`).
"""

from . import _runtime

_runtime.prepare()  # before anything below imports mlx

from ._version import __version__  # noqa: E402
from ._chat import Chat, Reply  # noqa: E402
from ._convert import Candidate, ConversionReport, convert  # noqa: E402
from ._catalog import CatalogEntry  # noqa: E402
from .errors import (  # noqa: E402
    ChatError,
    GatedModelError,
    InsufficientMemoryError,
    InvalidModelError,
    InvalidOptionError,
    MLXLocalError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from ._generation import Chunk, GenerationOptions, Result, Stats  # noqa: E402
from ._device import DeviceInfo, device_info  # noqa: E402
from ._memory import MemoryEstimate, estimate_memory  # noqa: E402
from ._model import DEFAULT_MODEL, Model  # noqa: E402
from ._quality import Quality  # noqa: E402
from ._runtime import Runtime  # noqa: E402
from ._store import CatalogModel, LocalModel, Removed, local_models, models, pull, remove  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "Candidate",
    "CatalogEntry",
    "CatalogModel",
    "Chat",
    "ChatError",
    "Chunk",
    "ConversionReport",
    "DeviceInfo",
    "GatedModelError",
    "GenerationOptions",
    "InsufficientMemoryError",
    "InvalidModelError",
    "InvalidOptionError",
    "LocalModel",
    "MLXLocalError",
    "MemoryEstimate",
    "Model",
    "ModelNotFoundError",
    "Quality",
    "Removed",
    "Reply",
    "Result",
    "Runtime",
    "Stats",
    "UnsupportedArchitectureError",
    "__version__",
    "convert",
    "device_info",
    "estimate_memory",
    "local_models",
    "models",
    "pull",
    "remove",
]
