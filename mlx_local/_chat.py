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
    Each turn's KV cache goes back to the model's prompt cache
    (``model.prompt_cache``, see :mod:`mlx_local._prompt_cache`) with the
    tokens it holds. The next turn takes the cache sharing the longest
    common token prefix with its prompt, trimmed to that prefix, and only
    the rest is processed. When the template rewrites an earlier turn (Qwen3
    drops old thinking) the prefix simply ends there. Caches that cannot be
    trimmed (a sliding window that has wrapped) are rebuilt by a full
    prefill.

Messages:
    The conversation holds system, user, assistant and tool messages
    (:mod:`mlx_local._conversation`); :meth:`Chat.add` appends any of them,
    and ``send(None)`` answers the conversation as it stands (after a tool
    result, say).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ._conversation import Conversation, check_message, text_of
from ._fileio import write_text_atomic
from ._generation import Chunk, collect
from ._reply import Reply
from ._request import Request
from ._thinking import ThinkingBudget
from ._tools import Tool, Toolset
from .errors import ChatError, InvalidOptionError

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
_VERSION = 2


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


def _run_tool(tool: Tool | None, name: str, arguments: dict[str, Any]) -> Any:
    """The result of one call, or an error message the model can read."""
    if tool is None or tool.function is None:
        return f"Error: there is no tool called {name!r}."
    problem = tool.check(arguments)
    if problem:
        return f"Error: the arguments do not fit {name}'s parameters: {problem}"
    try:
        return tool.function(**arguments)
    except Exception as e:  # the model hears of it; the chat goes on
        return f"Error: {name} raised {type(e).__name__}: {e}"


class Chat:
    """A conversation with a model. Create it with ``model.chat(...)``.

    Args:
        model: the :class:`~mlx_local.Model`.
        system: a system prompt (placed where the model family expects it).
        thinking: True / False / None (the model's default).
        thinking_budget: the most thinking tokens per answer, or None.
        reuse_cache: reuse KV caches between turns through
            ``model.prompt_cache`` (default True).
        **default_options: generation options for every turn (see
            :class:`~mlx_local.types.GenerationOptions`).

    >>> chat = model.chat(system="You are terse.")      # doctest: +SKIP
    >>> chat.send("My name is Ada.").content            # doctest: +SKIP
    >>> chat.send("What is my name?").content           # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        *,
        system: str | None = None,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        reuse_cache: bool = True,
        **default_options: Any,
    ) -> None:
        self.model = model
        self._conversation = Conversation(system)
        self.support = model.template.thinking
        self.thinking = _check_thinking(thinking)
        if self.thinking and self.support == "none":
            raise self._cannot_think("thinking")
        self.thinking_budget = self._budget(thinking_budget)
        self.reuse_cache = bool(reuse_cache)
        model.default_options.updated(**default_options)  # fail now on bad options
        self.default_options = dict(default_options)
        self._replies: list[tuple[int, Reply]] = []  # (index of the assistant message, its reply)
        self._soft: bool | None = None  # the latest /think or /no_think

    # ------------------------------------------------------------- history

    @property
    def system(self) -> str | None:
        return self._conversation.system

    @system.setter
    def system(self, value: str | None) -> None:
        self._conversation = Conversation(value, self._conversation.turns)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation as the template receives it (system first, if any).

        Assistant messages carry ``reasoning_content`` when they had thinking;
        the template decides what of it the model sees (Qwen3 drops it from
        earlier turns).
        """
        return self._conversation.messages

    @property
    def replies(self) -> list[Reply]:
        """Every reply the model gave in this chat, thinking included."""
        return [r for _, r in self._replies]

    def add(self, message: Mapping[str, Any]) -> None:
        """Append a message (user, assistant, tool or system) without generating.

        >>> chat.add({"role": "tool", "content": "22 C", "tool_call_id": "call_0"})  # doctest: +SKIP
        >>> chat.send(None)  # the model answers, seeing the tool's result    # doctest: +SKIP
        """
        self._conversation.add(message)
        self._soft = self._soft_from_history()

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self._conversation.clear()
        self._replies.clear()
        self._soft = None

    def undo(self) -> Reply:
        """Drop the last exchange (the last user message and all after it); return its last reply."""
        if not self._replies:
            raise ChatError("There is nothing to undo: the chat has no exchange yet.")
        last = self._replies[-1][1]
        self._conversation.undo()
        kept = len(self._conversation.turns)
        self._replies = [(i, r) for i, r in self._replies if i < kept]
        self._soft = self._soft_from_history()
        return last

    def _soft_from_history(self) -> bool | None:
        soft = None
        for m in self._conversation.turns:
            if m["role"] == "user":
                soft = self._soft_switch(text_of(m["content"]), soft)
        return soft

    def _soft_switch(self, text: str, current: bool | None) -> bool | None:
        if self.support != "switchable":
            return current
        found = _SOFT_SWITCH.findall(text)
        return current if not found else found[-1] == "think"

    def _cannot_think(self, option: str) -> InvalidOptionError:
        return InvalidOptionError(
            f"{self.model.name} cannot think: it has no thinking tags or its chat template has no "
            f"thinking mode, so {option} has no effect. Use thinking=None or False and no "
            "thinking_budget, or a thinking model such as Qwen3.",
            option=option,
        )

    def _budget(self, value: Any) -> int | None:
        budget = _check_budget(value)
        if budget is not None and self.support == "none":
            raise self._cannot_think("thinking_budget")
        return budget

    # ------------------------------------------------------------ talking

    def send(self, text: str | None, **kwargs: Any) -> Reply:
        """Send a user message (None: none) and return the whole reply. Same arguments as :meth:`stream`."""
        for _ in self.stream(text, **kwargs):
            pass
        return self._replies[-1][1]  # the stream recorded it when it completed

    def add_tool_result(self, call_id: str, value: Any) -> None:
        """Answer the model's tool call ``call_id`` with ``value`` (text, or anything JSON can write)."""
        calls = {c.id: c for _, r in self._replies[-1:] for c in r.tool_calls}
        if call_id not in calls:
            known = ", ".join(calls) or "none"
            raise ChatError(f"The last reply made no tool call {call_id!r} (its calls: {known}).")
        content = value if isinstance(value, str) else json.dumps(value, default=str)
        self.add({"role": "tool", "content": content, "tool_call_id": call_id, "name": calls[call_id].name})

    def act(self, text: str | None, tools: Sequence[Any], *, tool_choice: Any = "auto", max_rounds: int = 5,
            **kwargs: Any) -> Reply:
        """Send ``text``, run the tools the model calls, feed their results back, until it answers.

        ``tools`` must be Python callables (or :class:`~mlx_local._tools.Tool` s
        with a function). ``tool_choice`` applies to the first round; later
        rounds are ``"auto"``. A tool that raises gives the model its error
        message as the result; arguments that do not match the tool's schema
        are reported to the model, never called. The final reply has every
        earlier round in ``rounds``; after ``max_rounds`` rounds of calls it
        ends with ``finish_reason="max_rounds"``.
        """
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise InvalidOptionError(f"max_rounds={max_rounds!r}: give a whole number of at least 1.", option="max_rounds")
        toolset = Toolset(tools, self.model.template, tool_choice)
        missing = [t.name for t in toolset.tools if t.function is None]
        if missing:
            raise InvalidOptionError(f"act() runs the tools, so they must be callables; {', '.join(missing)} is not.",
                                     option="tools")  # fmt: skip
        rounds: list[Reply] = []
        reply = self.send(text, tools=toolset.tools, tool_choice=tool_choice, **kwargs)
        while reply.tool_calls:
            rounds.append(reply)
            for call in reply.tool_calls:
                self.add_tool_result(call.id, _run_tool(toolset.by_name.get(call.name), call.name, call.arguments))
            if len(rounds) >= max_rounds:
                reply = replace(reply, finish_reason="max_rounds")
                break
            reply = self.send(None, tools=toolset.tools, tool_choice="auto", **kwargs)
        final = replace(reply, rounds=tuple(rounds))
        self._replies[-1] = (self._replies[-1][0], final)
        return final

    def stream(
        self,
        text: str | None,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = "auto",
        schema: Any = None,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Iterator[Chunk]:
        """Send a user message and stream the reply as ``Chunk``s.

        Chunks have ``kind`` ``"thinking"`` or ``"content"``; the last one
        carries ``finish_reason`` and ``stats``. The exchange joins the
        history when the stream completes; a stream abandoned half way leaves
        the chat as it was.

        Args:
            text: the user's message; None answers the conversation as it
                stands (its last message must be a user or tool message).
            thinking: this turn's thinking mode (None: the chat's, see the module doc).
            thinking_budget: this turn's budget (None: the chat's).
            tools: functions the model may call (callables or OpenAI-style
                definitions, see :mod:`mlx_local._tools`); the calls come
                on the ``tool_call`` channel and as ``reply.tool_calls``.
            tool_choice: ``"auto"``, ``"required"`` (a call, constrained to
                the tools' schemas), ``"none"`` or a tool's name.
            schema, choices, pattern: constrain the answer, as in
                :meth:`Model.stream`; ``reply.parsed`` gives the value.
            logits_processors: extra mlx-lm logits processors (advanced).
            **options: generation options for this turn.
        """
        request, new, soft = self._prepare(
            text, thinking=thinking, thinking_budget=thinking_budget, tools=tools, tool_choice=tool_choice,
            schema=schema, choices=choices, pattern=pattern, logits_processors=logits_processors, options=options,
        )  # fmt: skip
        return self._generate(request, new, soft)

    def _prepare(
        self,
        text: str | None,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = "auto",
        schema: Any = None,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        options: Mapping[str, Any],
    ) -> tuple[Request, list[dict[str, Any]], bool | None]:
        """The request for this turn, the messages it adds, and the soft switch after it (nothing changes yet)."""
        if text is None:
            turns = self._conversation.turns
            if not turns or turns[-1]["role"] not in ("user", "tool"):
                raise InvalidOptionError(
                    "send(None) answers the conversation as it stands, but its last message is not a user or "
                    "tool message; pass the user's text.",
                    option="text",
                )
            new: list[dict[str, Any]] = []
        elif not isinstance(text, str) or not text.strip():
            raise InvalidOptionError("The message is empty; say something to the model.", option="text")
        else:
            new = [{"role": "user", "content": text}]
        thinking = _check_thinking(thinking)
        budget = self._budget(thinking_budget)
        budget = self.thinking_budget if budget is None else budget
        soft = self._soft_switch(text, self._soft) if text else self._soft
        mode = self._mode(thinking, soft)

        family = THINKING_SAMPLING.get(self.model.architecture, {}).get(mode, {}) if self.support != "none" else {}
        opts = self.model.default_options.updated(**family).updated(**self.default_options).updated(**options)
        toolset = Toolset(tools, self.model.template, tool_choice) if tools is not None else None
        messages = toolset.messages(self.messages + new) if toolset else self.messages + new
        template_kwargs = toolset.template_kwargs() if toolset else {}
        prompt = self.model.template.prompt(messages, thinking=mode if self.support != "none" else None, **template_kwargs)
        processors = list(logits_processors)
        constraint, grammar = self.model.constrain(schema, choices, pattern, thinking_open=prompt.thinking_open,
                                                   may_think=mode)  # fmt: skip
        if toolset is not None and constraint is None and (call_grammar := toolset.grammar()) is not None:
            grammar = self.model.grammar_processor(call_grammar, thinking_open=prompt.thinking_open, may_think=mode)
        if grammar:
            opts = opts.updated(stop_loops=False)  # a constrained answer may repeat itself legitimately
        processors += grammar
        guard: ThinkingBudget | None = None
        tags = self.model.think_tags
        if budget is not None and mode and tags is not None:
            guard = ThinkingBudget(tags, tags.transition_ids(self.model.tokenizer), budget, inside=prompt.thinking_open)
            processors.append(guard)  # last, so the budget wins over any other processor
        request = Request(prompt.ids, opts, processors, prompt.thinking_open, toolset, constraint, guard,
                          self.reuse_cache, mode if self.support != "none" else None)  # fmt: skip
        return request, new, soft

    def _mode(self, explicit: bool | None, soft: bool | None) -> bool:
        for choice in (explicit, soft, self.thinking):
            if choice is not None:
                if choice and self.support == "none":
                    raise self._cannot_think("thinking")
                return choice
        return self.support != "none"  # the model's default: thinking models think

    def _generate(self, request: Request, new: list[dict[str, Any]], soft: bool | None) -> Iterator[Chunk]:
        seen: list[Chunk] = []
        for chunk in self.model.execute(request):
            seen.append(chunk)
            yield chunk
        c = collect(seen)
        # A block the prompt opened is thinking even when the model closed it at once.
        thinking = c.thinking if c.thinking is not None or not request.thinking_open else ""
        guard, toolset = request.guard, request.toolset
        reply = Reply(
            c.content,
            thinking,
            c.finish_reason,
            c.stats,
            bool(guard and guard.hit),
            c.token_ids,
            request.opts,
            tool_calls=seen[-1].tool_calls,
            tool_format=toolset.format if toolset else None,
            constraint=request.constraint,
        )
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.thinking:
            assistant["reasoning_content"] = reply.thinking
        if reply.tool_calls:
            assistant["tool_calls"] = [c.as_dict() for c in reply.tool_calls]
        for m in new:
            self._conversation.add(m)
        self._conversation.add(assistant)
        self._replies.append((len(self._conversation.turns) - 1, reply))
        self._soft = soft

    # ------------------------------------------------------------ saving

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "model": self.model.name,
            "system": self.system,
            "thinking": self.thinking,
            "thinking_budget": self.thinking_budget,
            "reuse_cache": self.reuse_cache,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.default_options.items()},
            "messages": self._conversation.turns,
            "replies": [{**r.as_dict(), "message": i} for i, r in self._replies],
        }

    to_dict = as_dict  # the name of mlx_local 0.1

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the chat as JSON, atomically (a crash never leaves half a file)."""
        return write_text_atomic(Path(path).expanduser(), json.dumps(self.as_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model) -> Chat:
        """A chat saved by :meth:`save` (this version or the one before), continuing exactly where it was."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ChatError(f"No chat file at {path}.", path=str(path)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ChatError(f"{path} is not a saved chat (not readable JSON: {e}).", path=str(path)) from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ChatError(f"{path} is not a saved mlx_local chat (no \"format\": \"{_FORMAT}\").", path=str(path))
        if data.get("version") not in (1, _VERSION):
            raise ChatError(
                f"{path} is a chat file of version {data.get('version')!r}; this mlx_local reads versions 1 and {_VERSION}.",
                path=str(path),
            )
        damaged = f"{path} is a damaged chat file"
        try:
            chat = cls(
                model,
                system=data.get("system"),
                thinking=data.get("thinking"),
                thinking_budget=data.get("thinking_budget"),
                reuse_cache=data.get("reuse_cache", True),
                **dict(data.get("options") or {}),
            )
            turns = [check_message(m, f"{damaged}: message {i}") for i, m in enumerate(data["messages"])]
            raw = list(data["replies"])
            if data["version"] == 1:  # user/assistant pairs, one reply per assistant message
                if [m["role"] for m in turns] != ["user", "assistant"] * (len(turns) // 2) or len(raw) * 2 != len(turns):
                    raise ValueError("its messages do not alternate user/assistant with one reply each")
                at = [2 * k + 1 for k in range(len(raw))]
            else:
                at = [int(r["message"]) for r in raw]
            replies = [Reply.from_dict(r) for r in raw]
        except InvalidOptionError as e:
            raise ChatError(str(e), path=str(path)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise ChatError(f"{damaged} ({type(e).__name__}: {e}).", path=str(path)) from None
        if any(not 0 <= i < len(turns) or turns[i]["role"] != "assistant" for i in at):
            raise ChatError(f"{damaged}: a reply does not point at an assistant message.", path=str(path))
        chat._conversation = Conversation(chat.system, turns)
        chat._replies = list(zip(at, replies))
        chat._soft = chat._soft_from_history()
        return chat
