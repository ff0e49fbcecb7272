"""The OpenAI wire format: request bodies (pydantic), what they mean to ``Model.prepare``, and replies.

Requests are validated by pydantic (types strict where a wrong type is a
client's mistake: ``"max_tokens": "ten"`` is a 400 naming ``max_tokens``);
unknown fields are ignored, as clients send many (``user``,
``frequency_penalty``, ...). :func:`chat_arguments` and
:func:`completion_arguments` turn a body into ``Model.prepare`` arguments;
:class:`ChatReply` / :class:`CompletionReply` turn the chunks of a run into a
whole response or into server-sent-event payloads.

Thinking: ``chat_template_kwargs.enable_thinking`` (Qwen3's switch, as vLLM
takes it), ``reasoning_effort`` (``"none"`` off; ``"minimal"`` / ``"low"`` /
``"medium"`` / ``"high"`` think with the budget :data:`REASONING_BUDGETS`
gives) and our ``thinking_budget`` extension field (wins over the effort's
budget). The reasoning comes back in both ``reasoning_content`` and
``reasoning``, on messages and on stream deltas; incoming assistant messages
may carry either.

Finish reasons (:data:`FINISH_REASONS`): an end-of-sequence token or a stop
string is ``"stop"``, ``max_tokens`` ``"length"``, tool calls
``"tool_calls"``; an answer cut because it looped (``stop_loops``) is
``"length"`` too (cut short by the server, not ended by the model).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._generation import Chunk, Stats, TokenLogprob
from .errors import InvalidOptionError

__all__ = [
    "FINISH_REASONS",
    "REASONING_BUDGETS",
    "ChatReply",
    "ChatRequest",
    "CompletionReply",
    "CompletionRequest",
    "chat_arguments",
    "chat_param",
    "completion_arguments",
]

#: ``reasoning_effort`` -> thinking budget in tokens (None: no limit); ``"none"`` switches thinking off.
REASONING_BUDGETS: dict[str, int | None] = {"minimal": 128, "low": 512, "medium": 2048, "high": None}
#: mlx_local finish reasons -> OpenAI's.
FINISH_REASONS: dict[str, str] = {"stop": "stop", "stop_string": "stop", "length": "length", "repetition": "length",
                                  "tool_calls": "tool_calls", "max_rounds": "tool_calls"}  # fmt: skip

Number = Union[StrictInt, StrictFloat]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Body):
    name: StrictStr
    arguments: Union[StrictStr, dict[str, Any]] = "{}"


class ToolCallIn(_Body):
    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, list[TextPart], None] = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: StrictStr | None = None
    reasoning_content: StrictStr | None = None
    reasoning: StrictStr | None = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Body):
    name: StrictStr = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionName(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: FunctionName


class _Sampling(_Body):
    """Fields chat and text completions share."""

    model: StrictStr
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: StrictInt | None = None
    stop: Union[StrictStr, list[StrictStr], None] = None
    n: StrictInt | None = None
    # extensions (vLLM's names)
    top_k: StrictInt | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[Literal["auto", "none", "required"], NamedToolChoice, None] = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    thinking_budget: StrictInt | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (the prompt is sent as-is, without the chat template)."""

    prompt: Union[StrictStr, list[StrictStr]]
    logprobs: StrictInt | None = None
    echo: StrictBool = False


# ------------------------------------------------------------- requests -> prepare()


def _bad(message: str, param: str) -> InvalidOptionError:
    return InvalidOptionError(message, option=param)


def _options(body: _Sampling, max_tokens: int | None, cap: int, field: str = "max_tokens") -> dict[str, Any]:
    """Generation options: what the body sets, ``max_tokens`` capped at ``cap`` (and ``cap`` when unset)."""
    if body.n not in (None, 1):
        raise _bad(f"n={body.n}: this server writes one choice per request; send n=1 or leave it out.", "n")
    if max_tokens is not None and max_tokens < 1:
        raise _bad(f"{field}={max_tokens}: give a whole number of at least 1.", field)
    opts: dict[str, Any] = {"max_tokens": min(max_tokens or cap, cap)}
    for name in ("temperature", "top_p", "seed", "top_k", "min_p", "repetition_penalty"):
        value = getattr(body, name)
        if value is not None:
            opts[name] = value
    if body.stop:
        opts["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    return opts


def _message(m: Message, i: int) -> dict[str, Any]:
    """An OpenAI message as mlx_local's conversation takes it."""
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
    if isinstance(m.content, list):
        out["content"] = "".join(p.text for p in m.content)
    else:
        out["content"] = m.content or ""
    if m.content is None and m.role != "assistant":
        raise _bad(f"messages[{i}] ({m.role}) has no content.", f"messages[{i}].content")
    if m.role == "assistant":
        thinking = m.reasoning_content if m.reasoning_content is not None else m.reasoning
        if thinking:
            out["reasoning_content"] = thinking
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                args = c.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args or "{}")
                    except json.JSONDecodeError:
                        raise _bad(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON: {args[:80]!r}",
                                   f"messages[{i}].tool_calls[{j}].function.arguments") from None  # fmt: skip
                calls.append({"id": c.id or f"call_{j}", "type": "function",
                              "function": {"name": c.function.name, "arguments": args}})  # fmt: skip
            out["tool_calls"] = calls
    if m.role == "tool":
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
        if m.name:
            out["name"] = m.name
    return out


def _thinking(body: ChatRequest) -> tuple[bool | None, int | None]:
    thinking: bool | None = None
    budget: int | None = None
    kwargs = body.chat_template_kwargs or {}
    if "enable_thinking" in kwargs:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise _bad("chat_template_kwargs.enable_thinking must be true or false.", "chat_template_kwargs.enable_thinking")
        thinking = kwargs["enable_thinking"]
    if body.reasoning_effort == "none":
        thinking = False
    elif body.reasoning_effort is not None:
        thinking, budget = True, REASONING_BUDGETS[body.reasoning_effort]
    if body.thinking_budget is not None:
        if body.thinking_budget < 0:
            raise _bad(f"thinking_budget={body.thinking_budget}: give 0 or more thinking tokens.", "thinking_budget")
        budget = body.thinking_budget
    return thinking, budget


def chat_arguments(body: ChatRequest, *, max_tokens_cap: int) -> dict[str, Any]:
    """The ``Model.prepare`` keyword arguments (``messages`` included) for a chat completion."""
    if not body.messages:
        raise _bad("messages is empty; send at least one message.", "messages")
    args: dict[str, Any] = {"messages": [_message(m, i) for i, m in enumerate(body.messages)]}
    args["thinking"], args["thinking_budget"] = _thinking(body)
    if body.tools:
        args["tools"] = body.tools
        choice = body.tool_choice
        args["tool_choice"] = choice.function.name if isinstance(choice, NamedToolChoice) else (choice or "auto")
    elif isinstance(body.tool_choice, NamedToolChoice) or body.tool_choice == "required":
        raise _bad("tool_choice asks for a tool call, but the request has no tools.", "tool_choice")
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        args["schema"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise _bad("response_format json_schema needs json_schema.schema.", "response_format.json_schema.schema")
        args["schema"] = fmt.json_schema.schema_
    if body.max_completion_tokens is not None:
        opts = _options(body, body.max_completion_tokens, max_tokens_cap, "max_completion_tokens")
    else:
        opts = _options(body, body.max_tokens, max_tokens_cap)
    if body.top_logprobs is not None and not body.logprobs:
        raise _bad("top_logprobs needs logprobs: true.", "top_logprobs")
    if body.logprobs:
        opts["logprobs"] = body.top_logprobs or 0
    return {**args, **opts}


def chat_param(option: str, body: ChatRequest) -> str:
    """The request field behind a library option that ``Model.prepare`` refused."""
    if option == "thinking":
        return "reasoning_effort" if body.reasoning_effort is not None else "chat_template_kwargs.enable_thinking"
    if option == "thinking_budget":
        return "thinking_budget" if body.thinking_budget is not None else "reasoning_effort"
    if option == "logprobs":
        return "top_logprobs" if body.top_logprobs is not None else "logprobs"
    if option == "max_tokens" and body.max_completion_tokens is not None:
        return "max_completion_tokens"
    return {"schema": "response_format", "prompt": "messages", "text": "messages"}.get(option, option)


def completion_arguments(body: CompletionRequest, *, max_tokens_cap: int) -> dict[str, Any]:
    """The ``Model.prepare`` keyword arguments for a text completion (the prompt goes as-is)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _bad("prompt: send one prompt per request (a string, or a list of one string).", "prompt")
        prompt = prompt[0]
    if body.echo:
        raise _bad("echo is not supported.", "echo")
    opts = _options(body, body.max_tokens, max_tokens_cap)
    if body.logprobs is not None:
        opts["logprobs"] = body.logprobs
    return {"messages": prompt, "raw": True, **opts}


# ------------------------------------------------------------- chunks -> replies


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(stats: Stats) -> dict[str, Any]:
    """OpenAI's ``usage`` of one run."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": stats.thinking_tokens},
    }


class _Reply:
    """What a run has said so far, and how it reads in OpenAI's shapes."""

    object_name = ""

    def __init__(self, model: str, tokenizer: Any, prefix: str) -> None:
        self.id = new_id(prefix)
        self.created = int(time.time())
        self.model = model
        self.tokenizer = tokenizer
        self.texts: dict[str, list[str]] = {"content": [], "thinking": [], "tool_call": []}
        self.logprobs: list[TokenLogprob] = []
        self.last: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self.texts[chunk.kind].append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        self.last = chunk

    @property
    def finish_reason(self) -> str:
        assert self.last is not None and self.last.finish_reason is not None
        return FINISH_REASONS.get(self.last.finish_reason, "stop")

    def _token(self, token: int) -> tuple[str, list[int]]:
        text = str(self.tokenizer.decode([token]))
        return text, list(text.encode("utf-8"))

    def _logprob_entries(self, lps: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[dict[str, Any]]:
        out = []
        for lp in lps:
            text, raw = self._token(lp.token)
            top = [dict(zip(("token", "bytes"), self._token(t)), logprob=v) for t, v in lp.top]
            out.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
        return out

    def _envelope(self, choices: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
        return {"id": self.id, "object": self.object_name + suffix, "created": self.created, "model": self.model,
                "choices": choices}  # fmt: skip

    def usage_event(self) -> dict[str, Any]:
        assert self.last is not None and self.last.stats is not None
        return {**self._envelope([], ".chunk" if self.object_name == "chat.completion" else ""), "usage": usage(self.last.stats)}


class ChatReply(_Reply):
    """A chat completion, whole or as ``chat.completion.chunk`` events."""

    object_name = "chat.completion"

    def __init__(self, model: str, tokenizer: Any, *, logprobs: bool = False) -> None:
        super().__init__(model, tokenizer, "chatcmpl")
        self.want_logprobs = logprobs

    def _calls(self) -> list[dict[str, Any]]:
        assert self.last is not None
        return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in self.last.tool_calls]  # fmt: skip

    def response(self) -> dict[str, Any]:
        """The whole ``chat.completion``."""
        assert self.last is not None and self.last.stats is not None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.texts["content"])}
        if self.texts["thinking"] or self.last.stats.thinking_tokens:
            thinking = "".join(self.texts["thinking"])
            message["reasoning_content"] = message["reasoning"] = thinking
        calls = self._calls()
        if calls:
            message["tool_calls"] = calls
            message["content"] = message["content"] or None
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason,
                  "logprobs": {"content": self._logprob_entries(self.logprobs)} if self.want_logprobs else None}  # fmt: skip
        return {**self._envelope([choice]), "usage": usage(self.last.stats)}

    def _event(self, delta: dict[str, Any], finish: str | None = None, lps: Any = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lps}
        return self._envelope([choice], ".chunk")

    def first_event(self) -> dict[str, Any]:
        return self._event({"role": "assistant", "content": ""})

    def events(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events of one chunk (tool calls are sent whole, as deltas with their index, at the end)."""
        self.add(chunk)
        out = []
        lps = {"content": self._logprob_entries(chunk.logprobs)} if self.want_logprobs and chunk.logprobs else None
        if chunk.text and chunk.kind == "content":
            out.append(self._event({"content": chunk.text}, lps=lps))
        elif chunk.text and chunk.kind == "thinking":
            out.append(self._event({"reasoning_content": chunk.text, "reasoning": chunk.text}, lps=lps))
        elif lps:  # tokens without text of their own (the end of turn): their log-probabilities still go out
            out.append(self._event({"content": ""}, lps=lps))
        if chunk.finish_reason is not None:
            for i, call in enumerate(self._calls()):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                out.append(self._event({"tool_calls": [head]}))
                out.append(self._event({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}))
            out.append(self._event({}, self.finish_reason))
        return out


class CompletionReply(_Reply):
    """A text completion, whole or as events."""

    object_name = "text_completion"

    def __init__(self, model: str, tokenizer: Any, *, logprobs: int | None = None) -> None:
        super().__init__(model, tokenizer, "cmpl")
        self.want_logprobs = logprobs is not None

    def _legacy_logprobs(self, lps: Any) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        entries = self._logprob_entries(lps)
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": []}  # fmt: skip

    def response(self) -> dict[str, Any]:
        assert self.last is not None and self.last.stats is not None
        choice = {"index": 0, "text": "".join(self.texts["content"]), "finish_reason": self.finish_reason,
                  "logprobs": self._legacy_logprobs(self.logprobs)}  # fmt: skip
        return {**self._envelope([choice]), "usage": usage(self.last.stats)}

    def events(self, chunk: Chunk) -> list[dict[str, Any]]:
        self.add(chunk)
        if (not chunk.text or chunk.kind != "content") and chunk.finish_reason is None:
            return []
        finish = self.finish_reason if chunk.finish_reason is not None else None
        choice = {"index": 0, "text": chunk.text if chunk.kind == "content" else "", "finish_reason": finish,
                  "logprobs": self._legacy_logprobs(chunk.logprobs)}  # fmt: skip
        return [self._envelope([choice])]
