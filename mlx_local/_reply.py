"""``Reply``: one answer in a chat, with what it cost and what it called."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._generation import FinishReason, GenerationOptions, Stats
from ._tools import ToolCall, ToolFormat
from .errors import InvalidOptionError

__all__ = ["Reply"]


@dataclass(frozen=True)
class Reply:
    """One answer in a chat.

    Attributes:
        content: the answer.
        thinking: the reasoning (think block, tags removed), or None.
        finish_reason: ``"stop"``, ``"stop_string"``, ``"length"``,
            ``"repetition"``, ``"tool_calls"`` (the answer is calls, see
            ``tool_calls``) or ``"max_rounds"`` (``act`` ran out of rounds).
        stats: as :class:`~mlx_local.types.Stats`: ``thinking_tokens`` and
            ``answer_tokens`` count apart, ``cached_tokens`` says how much of
            the prompt came from the cache.
        thinking_budget_hit: the budget ran out and the library closed the
            think block.
        options: the generation options this turn used (the model's, its
            family's per-mode sampling, the chat's and the call's, merged).
        tool_calls: the calls the model made (with ``tools=``).
        tool_format: ``"template"`` or ``"generic"``: how the tools were
            shown to the model (see :mod:`mlx_local._tools`), or None.
        rounds: for ``act``: the earlier replies of the call, each with its
            tool calls (their results are in ``chat.messages``).
    """

    content: str
    thinking: str | None
    finish_reason: FinishReason
    stats: Stats
    thinking_budget_hit: bool = False
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    options: GenerationOptions | None = field(default=None, repr=False)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_format: ToolFormat | None = None
    rounds: tuple[Reply, ...] = field(default=(), repr=False)
    constraint: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.content

    @property
    def parsed(self) -> Any:
        """With ``schema=`` (``choices=``, ``pattern=``): the answer as a dict or pydantic instance (the text).

        Raises:
            OutputError: the answer was cut short, so it is not whole.
            InvalidOptionError: the turn had no schema, choices or pattern.
        """
        if self.constraint is None:
            raise InvalidOptionError("parsed needs schema=, choices= or pattern= on send().", option="schema")
        return self.constraint.parse(self.content, self.finish_reason)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("constraint")
        d["token_ids"] = list(self.token_ids)
        d["tool_calls"] = [c.as_dict() for c in self.tool_calls]
        d["rounds"] = [r.as_dict() for r in self.rounds]
        if self.options is not None:
            d["options"]["stop"] = list(self.options.stop)
        return d

    to_dict = as_dict  # the name of mlx_local 0.1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reply:
        return cls(
            content=str(d["content"]),
            thinking=None if d.get("thinking") is None else str(d["thinking"]),
            finish_reason=d["finish_reason"],
            stats=Stats(**d["stats"]),
            thinking_budget_hit=bool(d.get("thinking_budget_hit", False)),
            token_ids=tuple(int(t) for t in d.get("token_ids", ())),
            options=GenerationOptions().updated(**d["options"]) if d.get("options") else None,
            tool_calls=tuple(ToolCall.from_dict(c) for c in d.get("tool_calls") or ()),
            tool_format=d.get("tool_format"),
            rounds=tuple(cls.from_dict(r) for r in d.get("rounds") or ()),
        )
