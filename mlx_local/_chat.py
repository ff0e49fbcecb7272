"""``Chat``: a conversation with history, thinking mode and KV-cache reuse.

Thinking:
    ``thinking=True/False/None`` on the chat and on each ``send``; ``None`` is
    the model's default. For Qwen3-style templates it reaches the template as
    ``enable_thinking``; Qwen3's soft switches ``/think`` and ``/no_think`` in a
    user message set the mode from that turn on, as Qwen documents (an explicit
    ``thinking=`` on ``send`` still wins). Templates that open ``<think>``
    themselves (DeepSeek-R1 distills, Qwen3 "Thinking-2507") always think; with
    ``thinking=False`` the block is closed empty in the prompt, the way Qwen3
    does it. ``thinking_budget=N`` closes the block after N thinking tokens.

Cache reuse:
    The chat keeps mlx-lm's prompt cache and the tokens it holds. Each turn
    the new prompt is compared with them token by token; the cache is trimmed
    to the longest common prefix and only the rest is processed. When the
    template rewrites an earlier turn (Qwen3 drops old thinking) the prefix
    simply ends there. Caches that cannot be trimmed (a sliding window that
    has wrapped) are rebuilt by a full prefill.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import ChatError, InvalidOptionError
from ._fileio import write_text_atomic
from ._generation import Chunk, GenerationOptions, Stats
from ._thinking import ThinkingBudget

if TYPE_CHECKING:
    from ._model import Model

__all__ = ["Chat", "Reply", "THINKING_SAMPLING"]

#: Sampling its makers publish per thinking mode, by model_type. Used unless
#: the chat or the call sets the option.
_QWEN3 = {
    True: {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0},
    False: {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},
}
THINKING_SAMPLING: dict[str, dict[bool, dict[str, Any]]] = {"qwen3": _QWEN3, "qwen3_moe": _QWEN3, "qwen3_next": _QWEN3}

_SOFT_SWITCH = re.compile(r"(?<!\S)/(no_think|think)(?!\S)")
_FORMAT = "mlx_local.chat"


@dataclass(frozen=True)
class Reply:
    """One answer in a chat.

    Attributes:
        content: the answer.
        thinking: the reasoning (think block, tags removed), or None.
        finish_reason: ``"stop"``, ``"stop_string"`` or ``"length"``.
        stats: as :class:`~mlx_local.Stats`: ``thinking_tokens`` and
            ``answer_tokens`` count apart, ``cached_tokens`` says how much of
            the prompt came from the chat's cache.
        thinking_budget_hit: the budget ran out and the library closed the
            think block.
        options: the generation options this turn used (the model's, its
            family's per-mode sampling, the chat's and the call's, merged).
    """

    content: str
    thinking: str | None
    finish_reason: str
    stats: Stats
    thinking_budget_hit: bool = False
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    options: GenerationOptions | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        if self.options is not None:
            d["options"]["stop"] = list(self.options.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reply":
        return cls(
            content=str(d["content"]),
            thinking=None if d.get("thinking") is None else str(d["thinking"]),
            finish_reason=str(d["finish_reason"]),
            stats=Stats(**d["stats"]),
            thinking_budget_hit=bool(d.get("thinking_budget_hit", False)),
            token_ids=tuple(int(t) for t in d.get("token_ids", ())),
            options=GenerationOptions().updated(**d["options"]) if d.get("options") else None,
        )


def _thinking_support(model: "Model") -> str:
    """``"none"``, ``"switchable"`` (enable_thinking) or ``"always"`` (template opens <think>)."""
    if model.think_tags is None or not model.tokenizer.has_chat_template:
        return "none"
    template = model.tokenizer.chat_template
    if isinstance(template, str) and "enable_thinking" in template:
        return "switchable"
    try:
        probe = model.render([{"role": "user", "content": "Hi"}])
    except InvalidOptionError:
        return "none"
    return "always" if model.opens_thinking(probe) else "none"


def _check_thinking(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidOptionError(f"thinking={value!r}: use True, False or None (the model's default)", option="thinking")
    return value


def _check_budget(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidOptionError(
            f"thinking_budget={value!r}: use a whole number of thinking tokens (0 or more), or None for no limit",
            option="thinking_budget",
        )
    return value


class Chat:
    """A conversation with a model. Create it with ``model.chat(...)``.

    Args:
        model: the :class:`~mlx_local.Model`.
        system: a system prompt (placed where the model family expects it).
        thinking: True / False / None (the model's default).
        thinking_budget: the most thinking tokens per answer, or None.
        reuse_cache: keep the KV cache between turns (default True).
        **default_options: generation options for every turn (see
            :class:`~mlx_local.GenerationOptions`).

    >>> chat = model.chat(system="You are terse.")      # doctest: +SKIP
    >>> chat.send("My name is Ada.").content            # doctest: +SKIP
    >>> chat.send("What is my name?").content           # doctest: +SKIP
    """

    def __init__(
        self,
        model: "Model",
        *,
        system: str | None = None,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        reuse_cache: bool = True,
        **default_options: Any,
    ) -> None:
        if system is not None and not isinstance(system, str):
            raise InvalidOptionError(f"system must be a string, not {type(system).__name__}", option="system")
        self.model = model
        self.system = system or None
        self.support = _thinking_support(model)
        self.thinking = _check_thinking(thinking)
        if self.thinking and self.support == "none":
            raise self._cannot_think()
        self.thinking_budget = _check_budget(thinking_budget)
        self.reuse_cache = bool(reuse_cache)
        model.default_options.updated(**default_options)  # fail now on bad options
        self.default_options = dict(default_options)
        self._turns: list[dict[str, Any]] = []
        self._replies: list[Reply] = []
        self._soft: bool | None = None  # the latest /think or /no_think
        self._cache: Any = None
        self._cache_tokens: list[int] = []

    # ------------------------------------------------------------- history

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation as the template receives it (system first, if any).

        Assistant messages carry ``reasoning_content`` when they had thinking;
        the template decides what of it the model sees (Qwen3 drops it from
        earlier turns).
        """
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._turns]

    @property
    def replies(self) -> list[Reply]:
        """Every reply so far, thinking included."""
        return list(self._replies)

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self._turns.clear()
        self._replies.clear()
        self._soft = None
        self._cache, self._cache_tokens = None, []

    def undo(self) -> Reply:
        """Drop the last exchange (question and reply); return its reply."""
        if not self._replies:
            raise ChatError("There is nothing to undo: the chat has no exchange yet.")
        del self._turns[-2:]
        self._soft = self._soft_from_history()
        return self._replies.pop()

    def _soft_from_history(self) -> bool | None:
        soft = None
        for m in self._turns:
            if m["role"] == "user":
                soft = self._soft_switch(m["content"], soft)
        return soft

    def _soft_switch(self, text: str, current: bool | None) -> bool | None:
        if self.support != "switchable":
            return current
        found = _SOFT_SWITCH.findall(text)
        return current if not found else found[-1] == "think"

    def _cannot_think(self) -> InvalidOptionError:
        return InvalidOptionError(
            f"{self.model.name} cannot think: it has no thinking tags or its chat template has no "
            "thinking mode. Use thinking=None or False, or a thinking model such as Qwen3.",
            option="thinking",
        )

    # ------------------------------------------------------------ talking

    def send(
        self,
        text: str,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Reply:
        """Send a user message and return the whole reply. Same arguments as :meth:`stream`."""
        for _ in self.stream(
            text, thinking=thinking, thinking_budget=thinking_budget, logits_processors=logits_processors, **options
        ):
            pass
        return self._replies[-1]  # the stream recorded it when it completed

    def stream(
        self,
        text: str,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Iterator[Chunk]:
        """Send a user message and stream the reply as ``Chunk``s.

        Chunks have ``kind`` ``"thinking"`` or ``"content"``; the last one
        carries ``finish_reason`` and ``stats``. The exchange joins the
        history when the stream completes; a stream abandoned half way leaves
        the chat as it was.

        Args:
            text: the user's message.
            thinking: this turn's thinking mode (None: the chat's, see the module doc).
            thinking_budget: this turn's budget (None: the chat's).
            logits_processors: extra mlx-lm logits processors (advanced).
            **options: generation options for this turn.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidOptionError("The message is empty; say something to the model.", option="text")
        thinking = _check_thinking(thinking)
        budget = _check_budget(thinking_budget)
        budget = self.thinking_budget if budget is None else budget
        soft = self._soft_switch(text, self._soft)
        mode = self._mode(thinking, soft)

        family = THINKING_SAMPLING.get(self.model.architecture, {}).get(mode, {}) if self.support != "none" else {}
        opts = self.model.default_options.updated(**family).updated(**self.default_options).updated(**options)

        user = {"role": "user", "content": text}
        ids, inside = self._prompt(self.messages + [user], mode)
        processors = list(logits_processors)
        guard: ThinkingBudget | None = None
        tags = self.model.think_tags
        if budget is not None and mode and tags is not None:
            guard = ThinkingBudget(tags, tags.transition_ids(self.model.tokenizer), budget, inside=inside)
            processors.append(guard)  # last, so the budget wins over any other processor
        return self._generate(ids, inside, opts, processors, guard, user, soft)

    def _mode(self, explicit: bool | None, soft: bool | None) -> bool:
        for choice in (explicit, soft, self.thinking):
            if choice is not None:
                if choice and self.support == "none":
                    raise self._cannot_think()
                return choice
        return self.support != "none"  # the model's default: thinking models think

    def _prompt(self, messages: list[dict[str, Any]], mode: bool) -> tuple[list[int], bool]:
        kwargs = {"enable_thinking": mode} if self.support == "switchable" else {}
        rendered = self.model.render(messages, **kwargs)
        tags = self.model.think_tags
        if not mode and tags is not None and self.model.opens_thinking(rendered):
            # A template that always opens <think>: close it empty, as Qwen3 does for no-thinking.
            rendered = rendered.rstrip("\n") + f"\n\n{tags.end}\n\n"
        return self.model.tokenize_rendered(rendered), self.model.opens_thinking(rendered)

    def _reusable_prefix(self, ids: list[int]) -> tuple[Any, int]:
        """(cache, tokens of ``ids`` already in it), trimming or rebuilding the cache."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
        from mlx_lm.utils import common_prefix_len

        if self.reuse_cache and self._cache is not None:
            # At least one token must be processed to get the next one's logits.
            common = min(common_prefix_len(self._cache_tokens, ids), len(ids) - 1)
            excess = len(self._cache_tokens) - common
            if common > 0 and excess == 0:
                return self._cache, common
            if common > 0 and can_trim_prompt_cache(self._cache) and trim_prompt_cache(self._cache, excess) == excess:
                return self._cache, common
        return make_prompt_cache(self.model.module), 0

    def _generate(
        self,
        ids: list[int],
        inside: bool,
        opts: GenerationOptions,
        processors: list[Any],
        guard: ThinkingBudget | None,
        user: dict[str, Any],
        soft: bool | None,
    ) -> Iterator[Chunk]:
        cache, cached = self._reusable_prefix(ids)
        self._cache, self._cache_tokens = None, []  # until this turn completes
        generated: list[int] = []
        parts: dict[str, list[str]] = {"thinking": [], "content": []}
        last: Chunk | None = None
        for chunk in self.model.run(
            ids[cached:],
            opts,
            prompt_cache=cache,
            cached_tokens=cached,
            logits_processors=processors,
            thinking_inside=inside,
        ):
            parts[chunk.kind].append(chunk.text)
            generated.extend(chunk.token_ids)
            last = chunk
            yield chunk
        assert last is not None and last.stats is not None and last.finish_reason is not None
        thinking = "".join(parts["thinking"]) if (inside or last.stats.thinking_tokens or parts["thinking"]) else None
        reply = Reply(
            "".join(parts["content"]),
            thinking,
            last.finish_reason,
            last.stats,
            bool(guard and guard.hit),
            tuple(generated),
            opts,
        )
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.thinking:
            assistant["reasoning_content"] = reply.thinking
        self._turns += [user, assistant]
        self._replies.append(reply)
        self._soft = soft
        self._cache, self._cache_tokens = cache, ids + generated

    # ------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": 1,
            "model": self.model.name,
            "system": self.system,
            "thinking": self.thinking,
            "thinking_budget": self.thinking_budget,
            "reuse_cache": self.reuse_cache,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.default_options.items()},
            "messages": [dict(m) for m in self._turns],
            "replies": [r.to_dict() for r in self._replies],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the chat as JSON, atomically (a crash never leaves half a file)."""
        return write_text_atomic(Path(path).expanduser(), json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: "Model") -> "Chat":
        """A chat saved by :meth:`save`, continuing exactly where it was."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ChatError(f"No chat file at {path}.", path=str(path)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ChatError(f"{path} is not a saved chat (not readable JSON: {e}).", path=str(path)) from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ChatError(f"{path} is not a saved mlx_local chat (no \"format\": \"{_FORMAT}\").", path=str(path))
        if data.get("version") != 1:
            raise ChatError(f"{path} is a chat file of version {data.get('version')!r}; this mlx_local reads version 1.", path=str(path))
        try:
            chat = cls(
                model,
                system=data.get("system"),
                thinking=data.get("thinking"),
                thinking_budget=data.get("thinking_budget"),
                reuse_cache=data.get("reuse_cache", True),
                **dict(data.get("options") or {}),
            )
            turns = [dict(m) for m in data["messages"]]
            replies = [Reply.from_dict(r) for r in data["replies"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ChatError(f"{path} is a damaged chat file ({type(e).__name__}: {e}).", path=str(path)) from e
        roles = [m.get("role") for m in turns]
        if (
            roles != ["user", "assistant"] * (len(turns) // 2)
            or len(replies) * 2 != len(turns)
            or not all(isinstance(m.get("content"), str) for m in turns)
        ):
            raise ChatError(
                f"{path} is a damaged chat file: its messages do not alternate user/assistant with one reply each.",
                path=str(path),
            )
        chat._turns, chat._replies = turns, replies
        chat._soft = chat._soft_from_history()
        return chat
