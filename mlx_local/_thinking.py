"""Thinking ("reasoning") blocks: telling them apart from the answer, and capping them.

Models such as Qwen3, QwQ and the DeepSeek-R1 distills write their reasoning
between two special tokens, ``<think>`` and ``</think>``, before the answer.
Everything here works on token ids, not on text, so a ``<think>`` typed by a
user or quoted by the model is never mistaken for a tag, and the tags never
reach the caller's text.

- :class:`ThinkTags` finds the two tags in a tokenizer.
- :mod:`mlx_local._decoder` sorts generated tokens into thinking and answer.
- :class:`ThinkingBudget` is a logits processor that, after N thinking tokens,
  makes the model write the stop-thinking instruction Qwen documents for
  budgets, then ``</think>``, after which the model answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["BUDGET_TRANSITION", "ThinkTags", "ThinkingBudget"]

#: What Qwen inserts when a thinking budget runs out (Qwen3 technical report,
#: section 4.3, and the thinking-budget example in Qwen's repository); the
#: end-of-thinking token follows it.
BUDGET_TRANSITION = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now.\n"
)


@dataclass(frozen=True)
class ThinkTags:
    """The thinking tags of a tokenizer, each a single token."""

    start: str
    end: str
    start_id: int
    end_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> ThinkTags | None:
        """The tags of an mlx-lm tokenizer wrapper, or None if it has none."""
        if not getattr(tokenizer, "has_thinking", False):
            return None
        start, end = tokenizer.think_start_tokens, tokenizer.think_end_tokens
        if len(start) != 1 or len(end) != 1:
            return None
        return cls(tokenizer.think_start, tokenizer.think_end, int(start[0]), int(end[0]))

    def transition_ids(self, tokenizer: Any) -> list[int]:
        """Token ids that close a think block early (budget exhausted)."""
        return list(tokenizer.encode(BUDGET_TRANSITION, add_special_tokens=False)) + [self.end_id]


class ThinkingBudget:
    """A logits processor that ends thinking after ``budget`` thinking tokens.

    It follows the generated tokens itself (mlx-lm calls processors with the
    tokens so far, one step ahead of what the caller has seen), and once the
    budget is spent forces :data:`BUDGET_TRANSITION` and ``</think>``.
    ``hit`` tells afterwards whether it had to.
    """

    def __init__(self, tags: ThinkTags, transition: Sequence[int], budget: int, *, inside: bool) -> None:
        self._tags = tags
        self._transition = list(transition)
        self._budget = budget
        self._inside = inside
        self._count = 0
        self._queue: list[int] = []
        self._forcing = False
        self._calls = 0
        self.hit = False

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        if self._calls > 0:  # tokens[-1] is the token generated last
            last = int(tokens[-1].item())
            if last == self._tags.start_id and not self._inside:
                self._inside = True
            elif last == self._tags.end_id and self._inside:
                self._inside = False
            elif self._inside and not self._forcing:
                self._count += 1
        self._calls += 1
        if self._inside and not self.hit and self._count >= self._budget:
            self._queue = list(self._transition)
            self.hit = True
        if self._queue:
            self._forcing = True
            forced = self._queue.pop(0)
            mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
            return mx.put_along_axis(mask, mx.array([[forced]]), mx.zeros((1, 1), logits.dtype), axis=-1)
        self._forcing = False
        return logits
