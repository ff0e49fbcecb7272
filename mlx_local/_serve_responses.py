"""OpenAI's Responses API (``POST /v1/responses``): text, reasoning and function calls, whole or streamed.

A request is mapped onto the chat completion it amounts to (``input`` items
become messages: ``message``, ``function_call``, ``function_call_output``,
``reasoning``; ``instructions`` the system message; ``text.format`` the
response format; ``reasoning.effort`` the thinking switch and budget) and
goes through the same ``Model.prepare``. The reply is a ``response`` whose
``output`` holds a ``reasoning`` item (a thinking model's reasoning, as
``reasoning_text`` content), a ``message`` item (``output_text``) and a
``function_call`` item per call; streamed, the same as the documented
events (``response.created``, ``response.output_item.added``,
``response.output_text.delta``, ``response.reasoning_text.delta``,
``response.function_call_arguments.delta``, ..., ``response.completed``).
Nothing is stored: ``previous_response_id`` is refused.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, Union

from pydantic import StrictFloat, StrictInt, StrictStr, ValidationError

from ._generation import Chunk
from ._serve_openai import ChatRequest, _Body, new_id
from .errors import InvalidOptionError

__all__ = ["ResponsesReply", "ResponsesRequest", "responses_arguments"]

Number = Union[StrictInt, StrictFloat]


class ResponsesRequest(_Body):
    """``POST /v1/responses``."""

    model: StrictStr
    input: Union[StrictStr, list[dict[str, Any]]]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[Literal["auto", "none", "required"], dict[str, Any], None] = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: StrictStr | None = None
    # extensions, as on chat completions
    seed: StrictInt | None = None
    thinking_budget: StrictInt | None = None
    chat_template_kwargs: dict[str, Any] | None = None


def _bad(message: str, param: str) -> InvalidOptionError:
    return InvalidOptionError(message, option=param)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") not in ("input_text", "output_text", "text") \
                    or not isinstance(p.get("text"), str):  # fmt: skip
                raise _bad(f"{where}[{j}]: only text parts (input_text, output_text) are supported.", f"{where}[{j}]")
            parts.append(p["text"])
        return "".join(parts)
    raise _bad(f"{where} must be a string or a list of text parts.", where)


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation the ``input`` items (and ``instructions``) amount to, as chat messages."""
    out: list[dict[str, Any]] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    reasoning: str | None = None
    for i, item in enumerate(body.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise _bad(f"{where}.role={role!r}: use system, developer, user or assistant.", f"{where}.role")
            message: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                       "content": _text(item.get("content"), f"{where}.content")}  # fmt: skip
            if role == "assistant" and reasoning:
                message["reasoning_content"], reasoning = reasoning, None
            out.append(message)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            reasoning = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}: a function_call needs a name and a call_id.", where)
            try:
                arguments = json.loads(item.get("arguments") or "{}")
            except (TypeError, json.JSONDecodeError):
                raise _bad(f"{where}.arguments is not a JSON string.", f"{where}.arguments") from None
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": arguments}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
                if reasoning:
                    out[-1]["reasoning_content"], reasoning = reasoning, None
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}: a function_call_output needs its call_id.", f"{where}.call_id")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": output if isinstance(output, str) else _text(output, f"{where}.output")})  # fmt: skip
        else:
            raise _bad(f"{where}.type={kind!r}: use message, function_call, function_call_output or reasoning.",
                       f"{where}.type")  # fmt: skip
    return out


def _tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    if not body.tools:
        return None
    tools = []
    for i, t in enumerate(body.tools):
        if t.get("type") != "function" or not isinstance(t.get("name"), str):
            raise _bad(f"tools[{i}]: only function tools ({{'type': 'function', 'name': ...}}) are supported.", f"tools[{i}]")
        tools.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}})
    return tools


def responses_arguments(body: ResponsesRequest, *, max_tokens_cap: int) -> tuple[dict[str, Any], ChatRequest]:
    """The ``Model.prepare`` arguments for a Responses request, and the chat request it amounts to."""
    from ._serve_openai import chat_arguments

    if body.previous_response_id is not None:
        raise _bad("previous_response_id: this server stores no responses; send the whole conversation as input.",
                   "previous_response_id")  # fmt: skip
    chat: dict[str, Any] = {"model": body.model, "messages": _messages(body), "tools": _tools(body)}
    choice = body.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise _bad("tool_choice: use auto, none, required or {'type': 'function', 'name': ...}.", "tool_choice")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    chat["tool_choice"] = choice
    fmt = (body.text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"),
                                                                          "schema": fmt.get("schema")}}  # fmt: skip
    elif isinstance(fmt, dict):
        chat["response_format"] = {"type": fmt.get("type")}
    effort = (body.reasoning or {}).get("effort")
    for name in ("temperature", "top_p", "seed", "thinking_budget", "chat_template_kwargs"):
        chat[name] = getattr(body, name)
    chat.update(max_completion_tokens=body.max_output_tokens, reasoning_effort=effort)
    try:
        request = ChatRequest.model_validate({k: v for k, v in chat.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        field = {"response_format": "text.format", "reasoning_effort": "reasoning.effort"}.get(str(first["loc"][0]),
                                                                                             str(first["loc"][0]))  # fmt: skip
        raise _bad(f"{field}: {first['msg']}", field) from None
    try:
        return chat_arguments(request, max_tokens_cap=max_tokens_cap), request
    except InvalidOptionError as e:
        raise _bad(str(e), responses_param(e.option)) from None


def responses_param(option: str) -> str:
    """The Responses field behind an option the chat mapping or ``Model.prepare`` refused."""
    return {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens", "response_format": "text.format",
            "schema": "text.format", "thinking": "reasoning.effort", "reasoning_effort": "reasoning.effort",
            "messages": "input", "prompt": "input", "text": "input"}.get(option, option)  # fmt: skip


class ResponsesReply:
    """A ``response`` object, whole or as the stream of events that builds it."""

    def __init__(self, model: str, body: ResponsesRequest) -> None:
        self.id = new_id("resp")
        self.created = int(time.time())
        self.model = model
        self.body = body
        self.texts: dict[str, list[str]] = {"content": [], "thinking": [], "tool_call": []}
        self.last: Chunk | None = None
        self.items: list[dict[str, Any]] = []  # the output items, as they open
        self.open: str | None = None  # the kind of the item being streamed
        self.sequence = 0

    def add(self, chunk: Chunk) -> None:
        self.texts[chunk.kind].append(chunk.text)
        self.last = chunk

    # ------------------------------------------------------------------ whole

    def _usage(self) -> dict[str, Any]:
        assert self.last is not None and self.last.stats is not None
        s = self.last.stats
        return {"input_tokens": s.prompt_tokens, "input_tokens_details": {"cached_tokens": s.cached_tokens},
                "output_tokens": s.generated_tokens, "output_tokens_details": {"reasoning_tokens": s.thinking_tokens},
                "total_tokens": s.prompt_tokens + s.generated_tokens}  # fmt: skip

    def _reasoning_item(self, text: str, status: str = "completed") -> dict[str, Any]:
        return {"type": "reasoning", "id": f"rs_{self.id[5:]}", "summary": [],
                "content": [{"type": "reasoning_text", "text": text}], "status": status}  # fmt: skip

    def _message_item(self, text: str, status: str = "completed") -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
        return {"type": "message", "id": f"msg_{self.id[5:]}", "role": "assistant", "status": status, "content": content}

    def _call_items(self) -> list[dict[str, Any]]:
        assert self.last is not None
        return [{"type": "function_call", "id": f"fc_{self.id[5:]}_{i}", "call_id": c.id, "name": c.name,
                 "arguments": json.dumps(c.arguments), "status": "completed"}
                for i, c in enumerate(self.last.tool_calls)]  # fmt: skip

    def response(self, status: str | None = None) -> dict[str, Any]:
        """The whole ``response`` (``status``: ``"in_progress"`` for the first event of a stream)."""
        base: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "model": self.model, "output": [],
            "status": status or "in_progress", "error": None, "incomplete_details": None,
            "instructions": self.body.instructions, "max_output_tokens": self.body.max_output_tokens,
            "temperature": self.body.temperature, "top_p": self.body.top_p, "tools": self.body.tools or [],
            "tool_choice": self.body.tool_choice or "auto", "parallel_tool_calls": True, "metadata": {},
            "usage": None,
        }  # fmt: skip
        if status == "in_progress":
            return base
        assert self.last is not None
        output = []
        if self.texts["thinking"] or (self.last.stats and self.last.stats.thinking_tokens):
            output.append(self._reasoning_item("".join(self.texts["thinking"])))
        calls = self._call_items()
        text = "".join(self.texts["content"])
        if text or not calls:
            output.append(self._message_item(text))
        output += calls
        cut = self.last.finish_reason in ("length", "repetition")
        base.update(output=output, status="incomplete" if cut else "completed", usage=self._usage(),
                    incomplete_details={"reason": "max_output_tokens"} if cut else None)  # fmt: skip
        return base

    # ---------------------------------------------------------------- streamed

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence, **fields}

    def first_events(self) -> list[dict[str, Any]]:
        start = self.response("in_progress")
        return [self._event("response.created", response=start), self._event("response.in_progress", response=start)]

    def _close(self) -> list[dict[str, Any]]:
        """The events that finish the item being streamed."""
        if self.open is None:
            return []
        index = len(self.items) - 1
        item_id = self.items[-1]["id"]
        out = []
        if self.open == "thinking":
            text = "".join(self.texts["thinking"])
            out.append(self._event("response.reasoning_text.done", item_id=item_id, output_index=index, content_index=0, text=text))
            out.append(self._event("response.output_item.done", output_index=index, item=self._reasoning_item(text)))
        else:
            text = "".join(self.texts["content"])
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                                   text=text, logprobs=[]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part))
            out.append(self._event("response.output_item.done", output_index=index, item=self._message_item(text)))
        self.open = None
        return out

    def _opening(self, kind: str) -> list[dict[str, Any]]:
        out = self._close()
        index = len(self.items)
        item = self._reasoning_item("", "in_progress") if kind == "thinking" else self._message_item("", "in_progress")
        if kind == "thinking":
            item["content"] = []
        self.items.append(item)
        self.open = kind
        out.append(self._event("response.output_item.added", output_index=index, item=item))
        if kind == "content":
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                                   part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))  # fmt: skip
        return out

    def events(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events of one chunk; the last chunk's end with ``response.completed`` (or ``.incomplete``)."""
        out: list[dict[str, Any]] = []
        if chunk.text and chunk.kind in ("thinking", "content"):
            if self.open != chunk.kind:
                out += self._opening(chunk.kind)
            self.add(chunk)
            kind = "response.reasoning_text.delta" if chunk.kind == "thinking" else "response.output_text.delta"
            extra: dict[str, Any] = {} if chunk.kind == "thinking" else {"logprobs": []}
            out.append(self._event(kind, item_id=self.items[-1]["id"], output_index=len(self.items) - 1, content_index=0,
                                   delta=chunk.text, **extra))  # fmt: skip
        else:
            self.add(chunk)
        if chunk.finish_reason is None:
            return out
        out += self._close()
        for item in self._call_items():
            index = len(self.items)
            self.items.append(item)
            out.append(self._event("response.output_item.added", output_index=index,
                                   item={**item, "arguments": "", "status": "in_progress"}))  # fmt: skip
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                   delta=item["arguments"]))  # fmt: skip
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   arguments=item["arguments"], name=item["name"]))  # fmt: skip
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        final = self.response()
        out.append(self._event("response.completed" if final["status"] == "completed" else "response.incomplete",
                               response=final))  # fmt: skip
        return out
