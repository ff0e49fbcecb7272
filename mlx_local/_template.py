"""A model's chat template: messages to prompt token ids, and what it can do with thinking.

Templates that reject a system message (no system role) get it merged into
the first user message instead, as those model families expect. Thinking
support is read off the template: ``"switchable"`` (it takes
``enable_thinking``, as Qwen3's), ``"always"`` (it opens ``<think>`` itself,
as DeepSeek-R1 distills'), or ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from ._thinking import ThinkTags
from .errors import InvalidOptionError

__all__ = ["ChatTemplate", "Prompt", "ThinkingSupport"]

ThinkingSupport = Literal["none", "switchable", "always"]


@dataclass(frozen=True)
class Prompt:
    """Prompt token ids, and whether the prompt left a think block open."""

    ids: list[int]
    thinking_open: bool


def _merge_system(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """Messages with a leading system message folded into the first user message."""
    if not messages or messages[0].get("role") != "system":
        return None
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            m["content"] = f"{messages[0]['content']}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": str(messages[0]["content"])}] + rest


class ChatTemplate:
    """The chat template of an mlx-lm tokenizer wrapper, for the model ``name``."""

    def __init__(self, tokenizer: Any, think_tags: ThinkTags | None, name: str) -> None:
        self.tokenizer = tokenizer
        self.think_tags = think_tags
        self.name = name
        self.thinking: ThinkingSupport = self._thinking_support()

    @property
    def available(self) -> bool:
        return bool(self.tokenizer.has_chat_template)

    def render(self, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any) -> str:
        """The prompt text the template makes of ``messages`` (generation prompt added)."""
        tok = self.tokenizer
        try:
            return str(tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False, **template_kwargs))
        except Exception as e:  # jinja2 TemplateError, raise_exception() in templates
            merged = _merge_system(messages)
            if merged is not None:
                try:
                    return str(tok.apply_chat_template(merged, add_generation_prompt=True, tokenize=False, **template_kwargs))
                except Exception:
                    pass
            raise InvalidOptionError(f"{self.name}'s chat template rejected these messages: {e}", option="prompt") from None

    def tokenize(self, rendered: str) -> list[int]:
        """Token ids of a rendered prompt (the template wrote any BOS itself)."""
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))

    def opens_thinking(self, rendered: str) -> bool:
        """Whether a rendered prompt ends inside an open think block."""
        return self.think_tags is not None and rendered.rstrip().endswith(self.think_tags.start)

    def prompt(self, messages: Sequence[Mapping[str, Any]], *, thinking: bool | None = None,
               **template_kwargs: Any) -> Prompt:
        """Token ids for ``messages``, in thinking mode ``thinking`` (None: the template's default).

        ``thinking=False`` on a template that always opens ``<think>`` closes
        the block empty in the prompt, as Qwen3 does for no-thinking.
        """
        if thinking is not None and self.thinking == "switchable":
            template_kwargs.setdefault("enable_thinking", thinking)
        rendered = self.render(messages, **template_kwargs)
        tags = self.think_tags
        if thinking is False and tags is not None and self.opens_thinking(rendered):
            rendered = rendered.rstrip("\n") + f"\n\n{tags.end}\n\n"
        return Prompt(self.tokenize(rendered), self.opens_thinking(rendered))

    def _thinking_support(self) -> ThinkingSupport:
        if self.think_tags is None or not self.available:
            return "none"
        template = self.tokenizer.chat_template
        if isinstance(template, str) and "enable_thinking" in template:
            return "switchable"
        try:
            probe = self.render([{"role": "user", "content": "Hi"}])
        except InvalidOptionError:
            return "none"
        return "always" if self.opens_thinking(probe) else "none"
