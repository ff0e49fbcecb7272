"""Structured output: an answer constrained to a JSON schema, a set of choices or a regular expression.

Decoding is constrained with llguidance: its matcher follows the answer token
by token and, before each token, says which tokens may come next; a logits
processor (mlx-lm's hook) masks the others. The output therefore cannot fail
to parse, unless it is cut short by ``max_tokens`` (then ``finish_reason``
is ``"length"`` and :meth:`Constraint.parse` says so).

- JSON is compact by default (no free whitespace: llguidance's default
  grammar allows spaces, newlines and tabs anywhere, which small models fill).
- Thinking stays free: the constraint starts after a think block closes, so
  a thinking budget and a schema work together.
- The mask is computed with numpy on the CPU and applied with MLX ops
  (``llguidance.mlx`` uses a Metal kernel, so only on Metal).
- Converting the tokenizer for llguidance takes about a second: it is done
  once per model and kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InvalidOptionError, OutputError

__all__ = ["Constraint", "GrammarProcessor", "compact_schema", "grammar_tokenizer", "make_constraint"]


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance told to allow no whitespace between JSON tokens."""
    guidance = dict(schema.get("x-guidance") or {})
    guidance.setdefault("whitespace_flexible", False)
    return {**schema, "x-guidance": guidance}


@dataclass(frozen=True)
class Constraint:
    """What the answer must be, as an llguidance grammar.

    Attributes:
        kind: ``"json"``, ``"choices"`` or ``"pattern"``.
        grammar: the llguidance grammar.
        model_class: the pydantic class given as ``schema``, if any.
        schema: the JSON schema, for ``"json"``.
    """

    kind: str
    grammar: str
    model_class: Any = None
    schema: dict[str, Any] | None = None

    def parse(self, text: str, finish_reason: str) -> Any:
        """The answer as the caller asked for it: a dict (or list...), a pydantic instance, or the text."""
        if finish_reason != "stop":
            raise OutputError(
                f"The answer was cut short (finish_reason={finish_reason!r}) before it was complete, so it cannot "
                f"be parsed; raise max_tokens. Partial text: {text[:80]!r}{'...' if len(text) > 80 else ''}",
                text=text,
            )
        if self.kind != "json":
            return text
        value = json.loads(text)  # the grammar guarantees it parses
        if self.model_class is not None:
            return self.model_class.model_validate(value)
        return value


def _is_pydantic_class(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_json_schema") and hasattr(obj, "model_validate")


def _check_json_schema(schema: dict[str, Any]) -> None:
    try:
        from jsonschema import exceptions, validators
    except ImportError:  # pragma: no cover - a declared dependency
        return
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise InvalidOptionError(f"schema is not a valid JSON Schema at {where}: {e.message}", option="schema") from None


def make_constraint(schema: Any = None, choices: Any = None, pattern: Any = None) -> Constraint | None:
    """The constraint for ``schema=`` / ``choices=`` / ``pattern=`` (at most one), or None.

    Raises:
        InvalidOptionError: more than one given, or one that cannot work
            (not a JSON Schema, an empty choice list, a regex that does not
            compile). llguidance's own checks run later, against the
            tokenizer (:func:`check_constraint`).
    """
    import llguidance

    given = [name for name, v in (("schema", schema), ("choices", choices), ("pattern", pattern)) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise InvalidOptionError(f"Give one of schema, choices or pattern, not {' and '.join(given)}.", option=given[1])
    if schema is not None:
        model_class = None
        if schema == "json":
            schema = {"type": "object"}
        elif _is_pydantic_class(schema):
            model_class, schema = schema, schema.model_json_schema()
        elif not isinstance(schema, dict):
            raise InvalidOptionError(
                f"schema={schema!r}: give a JSON Schema dict, a pydantic model class, or 'json' (any JSON object).",
                option="schema",
            )
        _check_json_schema(schema)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(compact_schema(schema))
        except ValueError as e:
            raise InvalidOptionError(f"schema cannot be used: {e}", option="schema") from None
        return Constraint("json", grammar, model_class, schema)
    if choices is not None:
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise InvalidOptionError("choices must be a non-empty list of strings.", option="choices")
        if not all(isinstance(c, str) and c for c in choices):
            raise InvalidOptionError(f"choices={list(choices)!r}: every choice must be a non-empty string.", option="choices")
        lark = "start: " + " | ".join(json.dumps(c) for c in choices)
        return Constraint("choices", llguidance.LLMatcher.grammar_from_lark(lark))
    if not isinstance(pattern, str) or not pattern:
        raise InvalidOptionError("pattern must be a non-empty regular expression string.", option="pattern")
    try:
        re.compile(pattern)
    except re.error as e:
        raise InvalidOptionError(f"pattern={pattern!r} is not a valid regular expression: {e}", option="pattern") from None
    return Constraint("pattern", llguidance.LLMatcher.grammar_from_regex(pattern))


def grammar_tokenizer(model: Any) -> Any:
    """llguidance's view of ``model``'s tokenizer, built once per model (about a second)."""
    cached = getattr(model, "_llg_tokenizer", None)
    if cached is not None:
        return cached
    import llguidance.hf

    cfg = model.config.get("text_config") or model.config
    n_vocab = int(cfg.get("vocab_size") or model.config.get("vocab_size") or 0) or None
    hf = model.tokenizer._tokenizer
    n_vocab = max(n_vocab or 0, len(hf)) or None
    llt = llguidance.hf.from_tokenizer(hf, n_vocab=n_vocab, eos_token=sorted(model.tokenizer.eos_token_ids))
    model._llg_tokenizer = llt
    return llt


def check_constraint(grammar: str, llt: Any, option: str) -> None:
    """Raise InvalidOptionError if llguidance refuses ``grammar`` (unsupported keyword, bad regex...)."""
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, llt)
    problems = [m for m in messages if is_error or m.startswith(("Unknown", "Invalid", "Unsupported"))]
    if is_error or problems:
        raise InvalidOptionError(f"{option} cannot be used: {'; '.join(problems or messages)}", option=option)


class GrammarProcessor:
    """An mlx-lm logits processor that keeps the answer inside a grammar.

    Args:
        llt: the model's llguidance tokenizer.
        grammar: the grammar of the answer.
        think: ``(start_id, end_id)`` of the model's think tags, or None.
        thinking_open: the prompt left a think block open.
        on_gpu: use llguidance's Metal kernel to apply the mask.

    While a think block is open the model is free; the grammar starts with
    the first token of the answer. Before any answer, a model with think
    tags may open a block (the mask then also allows ``<think>``).
    """

    def __init__(self, llt: Any, grammar: str, *, think: tuple[int, int] | None = None,
                 thinking_open: bool = False, on_gpu: bool = False) -> None:
        import llguidance
        import llguidance.numpy as lnp

        self._matcher = llguidance.LLMatcher(llt, grammar, log_level=0)
        if self._matcher.is_error():
            raise InvalidOptionError(f"The constraint cannot be used: {self._matcher.get_error()}", option="schema")
        self._bitmask = lnp.allocate_token_bitmask(1, llt.vocab_size)
        self._think = think
        #: what rebuilds this processor on another rank (:mod:`mlx_local._lockstep`)
        self.spec = (grammar, think, thinking_open)
        self._state = "thinking" if thinking_open else ("start" if think else "answer")
        self._on_gpu = on_gpu
        self._calls = 0

    @property
    def failed(self) -> str | None:
        """Why the matcher stopped following (None while it follows)."""
        return self._matcher.get_error() if self._matcher.is_error() else None

    def _follow(self, token: int) -> None:
        if self._state == "start":
            assert self._think is not None
            self._state = "thinking" if token == self._think[0] else "answer"
        elif self._state == "thinking":
            if self._think is not None and token == self._think[1]:
                self._state = "answer"
            return
        if self._state == "answer":
            self._matcher.consume_token(token)

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import llguidance.numpy as lnp
        import mlx.core as mx
        import numpy as np

        if self._calls > 0:
            self._follow(int(tokens[-1].item()))
        self._calls += 1
        if self._state == "thinking" or self._matcher.is_error():
            return logits
        lnp.fill_next_token_bitmask(self._matcher, self._bitmask)
        if self._state == "start":  # before any answer the model may also open a think block
            assert self._think is not None
            words = self._bitmask.view(np.uint32)
            words[0, self._think[0] // 32] |= np.uint32(1 << (self._think[0] % 32))
        if self._on_gpu:
            from llguidance.mlx import apply_token_bitmask

            masked = apply_token_bitmask(logits, self._bitmask)
        else:
            vocab = logits.shape[-1]
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:vocab]
            allowed = mx.array(bits.astype(np.bool_)).reshape(1, vocab)
            masked = mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))
        return masked
