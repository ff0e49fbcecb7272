"""Thinking ("reasoning") blocks: telling them apart from the answer, and capping them.

Models such as Qwen3, QwQ and the DeepSeek-R1 distills write their reasoning
between two special tokens, ``<think>`` and ``</think>``, before the answer.
Everything here works on token ids, not on text, so a ``<think>`` typed by a
user or quoted by the model is never mistaken for a tag, and the tags never
reach the caller's text.

- :class:`ThinkTags` finds the two tags in a tokenizer.
- :class:`Splitter` turns a stream of generated tokens into ``("thinking",
  text)`` and ``("content", text)`` pieces, without the tags and without the
  blank lines templates put around them.
- :class:`ThinkingBudget` is a logits processor that, after N thinking tokens,
  makes the model write the stop-thinking instruction Qwen documents for
  budgets, then ``</think>``, after which the model answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["BUDGET_TRANSITION", "Splitter", "ThinkTags", "ThinkingBudget"]

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
    def of(cls, tokenizer: Any) -> "ThinkTags | None":
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


class Splitter:
    """Token stream -> ``(kind, text)`` pieces, kind ``"thinking"`` or ``"content"``.

    Args:
        detokenizer: an mlx-lm streaming detokenizer (reset here).
        tags: the model's thinking tags, or None for a model that cannot think.
        inside: True when the prompt already opened a think block (DeepSeek-R1
            distills, Qwen3 "Thinking-2507" templates).
    """

    def __init__(self, detokenizer: Any, tags: ThinkTags | None, *, inside: bool = False) -> None:
        self._detok = detokenizer
        self._detok.reset()
        self._tags = tags
        self.kind = "thinking" if inside else "content"
        self.thinking_tokens = 0
        self.content_tokens = 0
        self.saw_thinking = inside
        self._started = False  # has the current segment shown non-blank text yet
        self._held = ""  # trailing blank text of a thinking segment, held back
        self._after_think = False  # content right after </think>: drop its leading newlines

    def add(self, token: int) -> list[tuple[str, str]]:
        tags = self._tags
        if tags is not None and token == tags.start_id and self.kind == "content" and not self._started:
            out = self._flush()
            self.kind, self.saw_thinking = "thinking", True
            return out
        if tags is not None and token == tags.end_id and self.kind == "thinking":
            out = self._flush()
            self._held = ""  # a think block's trailing blank lines are not part of it
            self.kind, self._after_think = "content", True
            return out
        if self.kind == "thinking":
            self.thinking_tokens += 1
        else:
            self.content_tokens += 1
        self._detok.add_token(token)
        return self._emit(self._detok.last_segment)

    def finish(self) -> list[tuple[str, str]]:
        """Flush the rest (call once, at the end)."""
        self._detok.finalize()
        out = self._emit(self._detok.last_segment)
        self._held = ""
        return out

    def _flush(self) -> list[tuple[str, str]]:
        self._detok.finalize()
        out = self._emit(self._detok.last_segment)
        self._detok.reset()
        self._started = False
        return out

    def _emit(self, text: str) -> list[tuple[str, str]]:
        if not text:
            return []
        if not self._started:
            # Templates put newlines after <think> and after </think>.
            if self.kind == "thinking" or self._after_think:
                text = text.lstrip("\n")
            if not text:
                return []
            self._started = True
        if self.kind == "thinking":
            text = self._held + text
            body = text.rstrip()
            self._held = text[len(body) :]
            return [("thinking", body)] if body else []
        return [("content", text)]


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
