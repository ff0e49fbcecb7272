"""Tool calling: tools described to the model, calls parsed from its output, results fed back.

Tools are Python callables (their schema comes from the type hints and the
Google-style docstring, as Ollama's client does it) or OpenAI-style JSON
definitions (``{"type": "function", "function": {"name", "description",
"parameters"}}``).

Two formats (``reply.tool_format``):

- ``"template"``: the model's own chat template renders the tools
  (``tools=`` in ``apply_chat_template``) and the calls are parsed with the
  mlx-lm tool parser chosen the way mlx-lm chooses it (``tokenizer.tool_parser``,
  between ``tool_call_start`` and ``tool_call_end``).
- ``"generic"``, for templates without tool support (SmolLM2's, for one), as
  LM Studio does for such models: the tools are described in the system
  message and the model writes calls as ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`` (Hermes style); earlier calls and tool
  results are written the same way into the conversation.

With ``tool_choice="required"`` or a tool's name, the call itself is
constrained by a grammar built from the tool schemas (llguidance), so its
arguments always match them. That needs a format whose calls are JSON
between tags (``generic``, or mlx-lm's ``json_tools`` parser: Qwen3, Hermes).
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from .errors import InvalidOptionError

__all__ = ["GENERIC_OPEN", "GENERIC_CLOSE", "Tool", "ToolCall", "ToolFormat", "Toolset"]

ToolFormat = Literal["template", "generic"]
GENERIC_OPEN, GENERIC_CLOSE = "<tool_call>", "</tool_call>"
_GENERIC_SYSTEM = (
    "You can call functions to help answer. The functions, as JSON schemas:\n{tools}\n\n"
    "To call one, answer with only this, and nothing else:\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}</tool_call>\n'
    "The result comes back in a <tool_response> message. If no function helps, answer directly."
)

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
                               dict: "object", type(None): "null"}  # fmt: skip


def _schema_of(hint: Any) -> dict[str, Any]:
    """A JSON schema for a type hint (str, int, float, bool, list[X], dict, Literal, Optional...)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, Sequence) or hint in (list, tuple):
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin in (dict, Mapping):
        return {"type": "object"}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [_schema_of(a) for a in args if a is not type(None)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    return {}  # anything: the model may pass any JSON value


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The description and the ``Args:`` entries of a Google-style docstring."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    params: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if re.match(r"^\S", line):  # the next section (Returns:, Raises:)
            break
        m = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
        if m:
            current = m.group(1)
            params[current] = m.group(2).strip()
        elif current and line.strip():
            params[current] += " " + line.strip()
    return " ".join(head.split("\n\n")[0].split()), params


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    Attributes:
        name: what the model calls it by.
        description: what it does, for the model.
        parameters: a JSON schema of its arguments (an object).
        function: the Python callable, or None for a JSON definition
            (``chat.act`` needs callables).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, tool: Any) -> Tool:
        """A Tool from a callable or an OpenAI-style definition."""
        if isinstance(tool, Tool):
            return tool
        if isinstance(tool, Mapping):
            spec = tool.get("function", tool) if tool.get("type", "function") == "function" else None
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise InvalidOptionError(
                    f"tool {dict(tool)!r} is not an OpenAI-style definition "
                    "({'type': 'function', 'function': {'name': ..., 'parameters': {...}}}).",
                    option="tools",
                )
            params = spec.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(params, Mapping) or params.get("type", "object") != "object":
                raise InvalidOptionError(f"tool {spec['name']!r}: parameters must be a JSON schema of an object.", option="tools")
            return cls(spec["name"], str(spec.get("description") or ""), dict(params))
        if callable(tool):
            return cls._from_callable(tool)
        raise InvalidOptionError(f"tools: {tool!r} is neither a callable nor a tool definition.", option="tools")

    @classmethod
    def _from_callable(cls, f: Callable[..., Any]) -> Tool:
        name = getattr(f, "__name__", None)
        if not name or name == "<lambda>":
            raise InvalidOptionError("tools: a lambda has no name for the model to call; use a def.", option="tools")
        try:
            hints = typing.get_type_hints(f)
        except Exception:
            hints = {}
        description, docs = _docstring_parts(f.__doc__ or "")
        props: dict[str, Any] = {}
        required = []
        for pname, p in inspect.signature(f).parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            schema = _schema_of(hints.get(pname, Any))
            if pname in docs:
                schema["description"] = docs[pname]
            props[pname] = schema
            if p.default is inspect.Parameter.empty:
                required.append(pname)
        params: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        return cls(name, description, params, f)

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style definition (what chat templates expect as ``tools``)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}  # fmt: skip

    def check(self, arguments: Any) -> str | None:
        """What is wrong with ``arguments`` for this tool's schema, or None."""
        if not isinstance(arguments, Mapping):
            return f"arguments must be a JSON object, got {arguments!r}"
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(self.parameters)(self.parameters).validate(dict(arguments))
        except exceptions.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            return f"{where + ': ' if where else ''}{e.message}"
        return None


@dataclass(frozen=True)
class ToolCall:
    """A call the model made.

    Attributes:
        id: an id to answer it with (``chat.add_tool_result(call.id, ...)``).
        name: the tool's name.
        arguments: its arguments, as a dict.
    """

    id: str
    name: str
    arguments: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """In OpenAI's shape, as assistant messages carry it."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToolCall:
        fn = d.get("function", d)
        args = fn.get("arguments", {})
        return cls(str(d.get("id", "")), str(fn["name"]), json.loads(args) if isinstance(args, str) else dict(args))


class Toolset:
    """The tools of one call, how the model sees them, and how its calls are read back."""

    def __init__(self, tools: Sequence[Any], template: Any, tool_choice: Any = "auto") -> None:
        if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence) or not tools:
            raise InvalidOptionError("tools must be a non-empty list of callables or tool definitions.", option="tools")
        self.tools = [Tool.of(t) for t in tools]
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise InvalidOptionError(f"tools: two tools share a name ({', '.join(names)}).", option="tools")
        self.by_name = dict(zip(names, self.tools))
        if tool_choice not in ("auto", "required", "none") and tool_choice not in self.by_name:
            raise InvalidOptionError(
                f"tool_choice={tool_choice!r}: use 'auto', 'required', 'none' or a tool's name ({', '.join(names)}).",
                option="tool_choice",
            )
        self.choice = tool_choice
        self.template = template
        tok = template.tokenizer
        source = tok.chat_template if isinstance(tok.chat_template, str) else ""
        self.format: ToolFormat = "template" if ("tools" in source and tok.has_tool_calling) else "generic"
        if self.format == "template":
            self.open, self.close = str(tok.tool_call_start), str(tok.tool_call_end or "")
            self._parse: Callable[..., Any] = tok.tool_parser
            self._json_calls = getattr(tok.tool_parser, "__module__", "").endswith("json_tools")
        else:
            self.open, self.close = GENERIC_OPEN, GENERIC_CLOSE
            self._parse, self._json_calls = (lambda text, tools=None: json.loads(text.strip())), True

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools]

    # ----------------------------------------------------------- prompting

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` as this format writes them (the generic one rewrites tool turns as text)."""
        if self.format == "template":
            return [dict(m) for m in messages]
        system = _GENERIC_SYSTEM.format(tools="\n".join(json.dumps(s) for s in self.specs()))
        out: list[dict[str, Any]] = []
        for m in messages:
            m = dict(m)
            if m["role"] == "system":
                system = f"{m['content']}\n\n{system}"
                continue
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = "".join(
                    f"{GENERIC_OPEN}{json.dumps({'name': c.name, 'arguments': c.arguments})}{GENERIC_CLOSE}"
                    for c in map(ToolCall.from_dict, m.pop("tool_calls"))
                )
                m["content"] = (m.get("content") or "") + calls
            elif m["role"] == "tool":
                m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            out.append(m)
        return [{"role": "system", "content": system}, *out]

    def template_kwargs(self) -> dict[str, Any]:
        return {"tools": self.specs()} if self.format == "template" and self.choice != "none" else {}

    def tag_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Token ids of the call tags (each may be several tokens)."""
        tok = self.template.tokenizer
        return (tuple(tok.encode(self.open, add_special_tokens=False)),
                tuple(tok.encode(self.close, add_special_tokens=False)) if self.close else ())  # fmt: skip

    # ------------------------------------------------------- constraining

    def grammar(self) -> str | None:
        """With ``tool_choice`` "required" or a name: a grammar for exactly one call (llguidance lark)."""
        if self.choice in ("auto", "none"):
            return None
        if not self._json_calls:
            raise InvalidOptionError(
                f"tool_choice={self.choice!r} constrains the call with a grammar, which needs calls written as JSON "
                f"between tags; this model's tool format (mlx-lm parser {self._parse.__module__}) is not. "
                "Use tool_choice='auto'.",
                option="tool_choice",
            )
        import llguidance

        from ._structured import compact_schema

        chosen = self.tools if self.choice == "required" else [self.by_name[self.choice]]
        # Arguments the schema does not name are left out (a small model fills them with junk).
        options = [
            {"type": "object", "properties": {"name": {"const": t.name},
                                              "arguments": {"additionalProperties": False, **t.parameters}},
             "required": ["name", "arguments"], "additionalProperties": False}
            for t in chosen
        ]  # fmt: skip
        schema = compact_schema(options[0] if len(options) == 1 else {"anyOf": options})
        open_ids, close_ids = self.tag_ids()
        sep = '"\\n"' if self.format == "template" else ""

        def literal(text: str, ids: tuple[int, ...]) -> str:
            return " ".join(f"<[{i}]>" for i in ids) if len(ids) == 1 else json.dumps(text)

        lark = (f"start: {literal(self.open, open_ids)} {sep} call {sep} {literal(self.close, close_ids)}\n"
                f"call: %json {json.dumps(schema)}\n")  # fmt: skip
        return str(llguidance.LLMatcher.grammar_from_lark(lark))

    # ------------------------------------------------------------ parsing

    def parse(self, segments: Sequence[str], start: int = 0) -> tuple[list[ToolCall], list[str]]:
        """Calls from the tool-call segments of an answer, and what could not be read."""
        calls: list[ToolCall] = []
        problems: list[str] = []
        for text in segments:
            try:
                parsed = self._parse(text, self.specs())
            except Exception as e:  # each parser raises its own kinds
                problems.append(f"could not read the call {text.strip()[:80]!r}: {e}")
                continue
            for item in parsed if isinstance(parsed, list) else [parsed]:
                try:
                    call = ToolCall(f"call_{start + len(calls)}", "", {})
                    call = ToolCall.from_dict({**item, "id": call.id})
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    problems.append(f"could not read the call {item!r}: {e}")
                    continue
                calls.append(call)
        return calls, problems
