"""KV caches kept between calls, found by the longest common token prefix.

A :class:`PromptCache` holds mlx-lm prompt caches, each with the tokens it
has seen. :meth:`~PromptCache.take` hands out the one sharing the longest
prefix with a new prompt, trimmed to that prefix, so only the rest of the
prompt is processed; :meth:`~PromptCache.put` gives it back with its new
tokens. A cache is handed to one caller at a time (no copy is ever made:
copying a long KV cache costs more than the prefill it saves on a CPU), and
an abandoned generation simply never gives its cache back. It is bounded in
bytes: least recently used caches go first, but the one just given back
always stays. Thread-safe, so a chat, a script and a server's requests can
share the one of a model (``model.prompt_cache``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["PromptCache"]

#: Default bound of a model's prompt cache.
DEFAULT_MAX_BYTES = 2 * 2**30


@dataclass
class _Entry:
    tokens: list[int]
    cache: list[Any]
    nbytes: int


def _nbytes(cache: Sequence[Any]) -> int:
    return int(sum(getattr(c, "nbytes", 0) for c in cache))


class PromptCache:
    """Reusable KV caches of one model, bounded in bytes (see the module doc).

    Args:
        max_bytes: the most the kept caches may hold together; the latest
            one stays even if it alone is bigger.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: list[_Entry] = []  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes the kept caches hold."""
        with self._lock:
            return sum(e.nbytes for e in self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def take(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """The cache sharing the longest prefix with ``tokens``, and that prefix's length.

        The cache is removed from this store and trimmed to the prefix (at
        most ``len(tokens) - 1``: one token must be processed to get the
        next one's logits). ``(None, 0)`` when none can be used (no shared
        prefix, or a cache that cannot be trimmed, like a sliding window
        that has wrapped).
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache
        from mlx_lm.utils import common_prefix_len

        tokens = list(tokens)
        with self._lock:
            ranked = sorted(
                ((min(common_prefix_len(e.tokens, tokens), len(tokens) - 1), i) for i, e in enumerate(self._entries)),
                reverse=True,
            )
            chosen: tuple[_Entry, int, int] | None = None
            for common, i in ranked:
                if common <= 0:
                    break
                entry = self._entries[i]
                excess = len(entry.tokens) - common
                if excess and not can_trim_prompt_cache(entry.cache):
                    continue
                del self._entries[i]
                chosen = entry, common, excess
                break
            if chosen is None:
                return None, 0
        entry, common, excess = chosen
        if excess and trim_prompt_cache(entry.cache, excess) != excess:
            return None, 0
        return entry.cache, common

    def put(self, tokens: Sequence[int], cache: list[Any]) -> None:
        """Keep ``cache``, which has seen exactly ``tokens``, for later calls."""
        from mlx_lm.models.cache import can_trim_prompt_cache
        from mlx_lm.utils import common_prefix_len

        entry = _Entry(list(tokens), cache, _nbytes(cache))
        with self._lock:
            if can_trim_prompt_cache(cache):
                # A cache whose tokens are a prefix of this one's is worth nothing now.
                self._entries = [
                    e for e in self._entries if common_prefix_len(e.tokens, entry.tokens) < len(e.tokens)
                ]
            self._entries.append(entry)
            total = sum(e.nbytes for e in self._entries)
            while total > self.max_bytes and len(self._entries) > 1:
                total -= self._entries.pop(0).nbytes

    def __repr__(self) -> str:
        return f"PromptCache({len(self)} caches, {self.nbytes / 2**20:.0f} MiB of at most {self.max_bytes / 2**20:.0f} MiB)"
