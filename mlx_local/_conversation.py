"""Messages, checked: the conversation a chat template receives.

A message is a dict with a ``role`` (``system``, ``user``, ``assistant`` or
``tool``) and a ``content`` that is text or a list of text parts
(``{"type": "text", "text": ...}``, as OpenAI's API sends them; they are
joined into one text, since chat templates expect a string). Assistant
messages may carry ``reasoning_content`` (their thinking) and
``tool_calls``; tool messages answer a call (``tool_call_id``, ``name``).
:func:`check_messages` turns anything else into an ``InvalidOptionError``
naming the message at fault, before a token is generated.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from .errors import InvalidOptionError

__all__ = ["ROLES", "Conversation", "Role", "check_message", "check_messages", "text_of"]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))


def check_message(m: Any, where: str = "The message") -> dict[str, Any]:
    """A copy of message ``m``, or an InvalidOptionError saying what is wrong with it."""
    if not isinstance(m, Mapping):
        raise InvalidOptionError(f"{where} must be a dict with 'role' and 'content', got {m!r}.", option="messages")
    role = m.get("role")
    if role not in ROLES:
        raise InvalidOptionError(
            f"{where} has role {role!r}; use one of {', '.join(ROLES)}.", option="messages"
        )
    content = m.get("content")
    if content is None and role == "assistant" and m.get("tool_calls"):
        content = ""
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidOptionError(
                    f"{where} has a content part {part!r}; only text parts ({{'type': 'text', 'text': ...}}) are supported.",
                    option="messages",
                )
    elif not isinstance(content, str):
        raise InvalidOptionError(
            f"{where} must have a string 'content' (or a list of text parts), got {content!r}.", option="messages"
        )
    out = dict(m)
    out["content"] = text_of(content)  # templates expect text: parts are joined
    return out


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Checked copies of ``messages`` (a non-empty list with something to respond to)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidOptionError(
            "The prompt must be a non-empty string or a non-empty list of {'role': ..., 'content': ...} messages.",
            option="prompt",
        )
    out = [check_message(m, f"Message {i}") for i, m in enumerate(messages)]
    if not any(text_of(m["content"]).strip() for m in out):
        raise InvalidOptionError("Every message is empty; give the model something to respond to.", option="prompt")
    return out


class Conversation:
    """The messages of one conversation (a system prompt apart), checked as they come."""

    def __init__(self, system: str | None = None, messages: Sequence[Mapping[str, Any]] = ()) -> None:
        if system is not None and not isinstance(system, str):
            raise InvalidOptionError(f"system must be a string, not {type(system).__name__}", option="system")
        self.system = system or None
        self._messages = [check_message(m, f"Message {i}") for i, m in enumerate(messages)]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """What the template receives: the system message (if any), then the rest."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._messages]

    @property
    def turns(self) -> list[dict[str, Any]]:
        """The messages without the system prompt."""
        return [dict(m) for m in self._messages]

    def add(self, message: Mapping[str, Any]) -> None:
        self._messages.append(check_message(message))

    def clear(self) -> None:
        self._messages.clear()

    def undo(self) -> list[dict[str, Any]]:
        """Drop the last exchange: the last user message and everything after it; return them."""
        starts = [i for i, m in enumerate(self._messages) if m["role"] == "user"]
        cut = starts[-1] if starts else 0
        dropped, self._messages = self._messages[cut:], self._messages[:cut]
        return dropped
