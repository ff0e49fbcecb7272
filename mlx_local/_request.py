"""``Request``: one generation, prepared and checked, ready to run.

:meth:`Model.prepare <mlx_local.Model.prepare>` (stateless: a list of
messages) and :class:`~mlx_local.Chat` (a conversation) both build one; it
holds what the run needs: the prompt's token ids, the options with the
family's sampling applied, the logits processors (constraints, the thinking
budget, the caller's own), the tools. :meth:`Model.execute` runs it, and so
does the server's :class:`~mlx_local._worker.Worker`, one at a time or
batched with others. Its logits processors keep state: run a request once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._generation import GenerationOptions
from ._thinking import ThinkingBudget
from ._tools import Toolset

__all__ = ["Request"]


@dataclass
class Request:
    """One generation, prepared: what :meth:`Model.execute` runs."""

    #: the prompt's token ids
    ids: list[int]
    #: the options (the model's defaults, the family's thinking sampling, the caller's)
    opts: GenerationOptions
    #: mlx-lm logits processors, in order: the caller's, a constraint's, the thinking budget last
    processors: list[Any] = field(default_factory=list)
    #: the prompt ends inside an open think block
    thinking_open: bool = False
    #: the tools offered (None: none)
    toolset: Toolset | None = None
    #: the structured-output constraint (for ``Result.parsed``), or None
    constraint: Any = None
    #: the thinking budget's processor (also in ``processors``), or None
    guard: ThinkingBudget | None = None
    #: take and give back KV caches through the model's prompt cache
    reuse_cache: bool = False
    #: the thinking mode the prompt was rendered in (None: the model cannot think)
    thinking: bool | None = None
