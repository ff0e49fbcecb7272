"""The types mlx_local's functions return, for annotations and ``isinstance``.

>>> from mlx_local.types import Chunk, Result
>>> def show(result: Result) -> None: ...

Nothing here needs constructing by hand except :class:`GenerationOptions`
(options can always be passed as keyword arguments instead) and
:class:`PromptCache` (to share KV caches with a bound of your own).
"""

from __future__ import annotations

from ._catalog import CatalogEntry, License
from ._device import DeviceInfo
from ._generation import Chunk, ChunkKind, FinishReason, GenerationOptions, Result, Stats, TokenLogprob
from ._memory import MemoryEstimate
from ._prompt_cache import PromptCache
from ._quality import Quality
from ._reply import Reply
from ._report import Candidate, CandidateStatus, ConversionReport
from ._runtime import Runtime
from ._store import CatalogModel, LocalKind, LocalModel, Removed
from ._template import ThinkingSupport

__all__ = [
    "Candidate",
    "CandidateStatus",
    "CatalogEntry",
    "CatalogModel",
    "Chunk",
    "ChunkKind",
    "ConversionReport",
    "DeviceInfo",
    "FinishReason",
    "GenerationOptions",
    "License",
    "LocalKind",
    "LocalModel",
    "MemoryEstimate",
    "PromptCache",
    "Quality",
    "Removed",
    "Reply",
    "Result",
    "Runtime",
    "Stats",
    "ThinkingSupport",
    "TokenLogprob",
]
