"""The per-sequence decoder: generated token ids in, typed chunks out.

Whatever produces tokens (mlx-lm's ``generate_step``, a batch, a server
worker) feeds them to a :class:`Decoder` one at a time; it touches no
process-wide state (no RNG, no memory counters), so any number of them can
run side by side. It does four jobs:

- **channels**: a small state machine over token ids sorts the output into
  ``content``, ``thinking`` (between a model's think tags) and, for models
  that write tool calls between tags, ``tool_call``. A tag may be several
  tokens long; its tokens are held back until the tag is complete (then they
  are dropped: tags never reach any text) or broken (then they are text).
  Because it works on ids, a ``<think>`` typed by a user or quoted by the
  model is never mistaken for a tag.
- **text**: each channel segment is detokenized with mlx-lm's streaming
  detokenizer; the blank lines templates put around tags are dropped.
- **stop strings** end the answer (content only) and are never returned;
  the text that could still become one is held back until it cannot.
- **finish**: ``"stop"`` (an end-of-sequence token), ``"stop_string"``,
  ``"length"`` (the caller ran out of ``max_tokens``) or ``"repetition"``
  (the output has become a loop, see :class:`LoopDetector`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ._generation import Chunk, ChunkKind, FinishReason, TokenLogprob

__all__ = ["ChannelTag", "Decoder", "LoopDetector"]


@dataclass(frozen=True)
class ChannelTag:
    """Token ids that open and close a channel, e.g. ``<think>`` ... ``</think>``."""

    channel: ChunkKind
    open: tuple[int, ...]
    close: tuple[int, ...]
    #: the tag opens only before any answer text (think blocks come first;
    #: tool calls may follow text)
    leading: bool = False


class LoopDetector:
    """Says when generated tokens have become an exact loop.

    A loop is the same span of ``p`` tokens (``1 <= p <= max_period``)
    repeated back to back until the repetition covers ``max(3 * p, min_tokens)``
    tokens: three copies of a sentence, or ``min_tokens`` of a short pattern
    (so ``"- - - -"`` must run long before it counts). Natural text and code
    almost never repeat a span exactly three times in a row; small models
    decoding greedily do, until ``max_tokens``. Each token costs
    ``max_period`` integer comparisons.
    """

    def __init__(self, *, max_period: int = 64, min_tokens: int = 48) -> None:
        self._max_period = max_period
        self._min_tokens = min_tokens
        self._tokens: list[int] = []
        self._runs = [0] * (max_period + 1)  # runs[p]: trailing tokens equal to the one p before

    def add(self, token: int) -> bool:
        """Record ``token``; True once the output is a loop."""
        tokens = self._tokens
        tokens.append(token)
        n = len(tokens)
        looped = False
        for p in range(1, min(self._max_period, n - 1) + 1):
            if tokens[-1 - p] == token:
                self._runs[p] += 1
                if self._runs[p] >= max(2 * p, self._min_tokens - p):
                    looped = True
            else:
                self._runs[p] = 0
        if n > 4 * self._max_period + self._min_tokens:
            del tokens[: n - self._max_period - 1]  # only the last max_period + 1 are ever compared
        return looped


class _Channels:
    """Token ids -> ``(channel, token)`` events, with tags recognised and removed."""

    def __init__(self, tags: Sequence[ChannelTag], inside: ChunkKind | None) -> None:
        self._tags = list(tags)
        self.channel: ChunkKind = inside or "content"
        self._open_tag: ChannelTag | None = next((t for t in self._tags if t.channel == inside), None)
        self._held: list[int] = []  # a tag's first tokens, until it is complete or broken
        self.answer_started = False  # set by the decoder once content text has shown
        self.previous: ChunkKind = self.channel  # the channel before the last switch

    def _candidates(self) -> list[tuple[int, ...]]:
        if self._open_tag is not None:
            return [self._open_tag.close]
        return [t.open for t in self._tags if not (t.leading and self.answer_started)]

    def add(self, token: int) -> list[tuple[str, int | None]]:
        """Events for one token: ``("text", id)`` in the current channel, or ``("switch", None)``."""
        held = self._held + [token]
        for tag in self._candidates():
            if tuple(held) == tag:
                self._held = []
                self.previous = self.channel
                if self._open_tag is not None:
                    self._open_tag, self.channel = None, "content"
                else:
                    self._open_tag = next(t for t in self._tags if t.open == tag)
                    self.channel = self._open_tag.channel
                return [("switch", None)]
            if tuple(held) == tag[: len(held)]:
                self._held = held
                return []
        # Not (or no longer) a tag: the held tokens were text after all; the
        # newest token may itself start a tag.
        self._held = []
        events: list[tuple[str, int | None]] = [("text", t) for t in held[:-1]]
        return events + (self.add(token) if held[:-1] else [("text", token)])

    def flush(self) -> list[tuple[str, int | None]]:
        held, self._held = self._held, []
        return [("text", t) for t in held]


class Decoder:
    """One sequence's generated tokens -> :class:`~mlx_local.Chunk` s.

    Args:
        detokenizer: an mlx-lm streaming detokenizer (it is reset here and
            owned by this decoder from now on).
        eos_ids: tokens that end the sequence (``finish_reason="stop"``).
        tags: the channels the model writes between tags.
        inside: the channel the prompt left open (a template that opens
            ``<think>`` itself), or None.
        stop: stop strings (applied to the content channel).
        loops: end with ``finish_reason="repetition"`` when the output loops.

    Call :meth:`add` for each token; once :attr:`finish_reason` is set the
    sequence is over and :meth:`add` must not be called again. Call
    :meth:`close` at the end either way: it flushes what was held back and
    returns the last chunk, which carries the finish reason.
    """

    def __init__(
        self,
        detokenizer: Any,
        *,
        eos_ids: Iterable[int] = (),
        tags: Sequence[ChannelTag] = (),
        inside: ChunkKind | None = None,
        stop: Sequence[str] = (),
        loops: bool = True,
        text_tags: Sequence[tuple[ChunkKind, str, str]] = (),
    ) -> None:
        self._detok = detokenizer
        self._detok.reset()
        self._eos = frozenset(int(t) for t in eos_ids)
        self._channels = _Channels(tags, inside)
        self._stops = tuple(stop)
        self._loops = LoopDetector() if loops else None
        self.finish_reason: FinishReason | None = None
        self.tokens: list[int] = []
        self.counts: dict[ChunkKind, int] = {"content": 0, "thinking": 0, "tool_call": 0}
        self.opened: set[ChunkKind] = {inside} if inside else set()  # channels that appeared
        self._reported = 0  # tokens already carried by a chunk
        self._logprobs: list[TokenLogprob] = []
        self._content = ""  # the answer decoded so far (stop strings cut off)
        self._emitted = 0  # characters of _content already yielded
        self._started = inside is None  # the segment has shown non-blank text
        self._strip_lead = inside is not None  # drop the newlines a template puts after a tag
        self._held_blank = ""  # trailing blank text of a non-content segment
        self._segment = ""  # the raw text of the current non-content segment
        #: the raw text of each finished thinking / tool-call segment, in order
        self.segments: dict[ChunkKind, list[str]] = {}
        # Tags that are ordinary text (several tokens that BPE may merge with
        # their neighbours, e.g. "<tool_call>" for a model without such a
        # token) are found in the decoded answer instead of in the ids.
        self._text_tags = tuple(text_tags)
        self._text_tag: tuple[ChunkKind, str, str] | None = None  # the one open now
        self._tag_text = ""  # raw text inside it so far
        self._tag_emitted = 0

    @property
    def channel(self) -> ChunkKind:
        """The channel the next token belongs to."""
        return self._text_tag[0] if self._text_tag is not None else self._channels.channel

    def add(self, token: int, logprob: TokenLogprob | None = None) -> list[Chunk]:
        """Chunks for one more generated token (often none: text is held until it is whole)."""
        assert self.finish_reason is None, "the sequence is over"
        token = int(token)
        self.tokens.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        if token in self._eos:
            self.finish_reason = "stop"
            return []
        out: list[Chunk] = []
        for event, tid in self._channels.add(token):
            if event == "switch":
                out += self._end_segment(self._channels.previous)
                if self.channel != "content":
                    self.opened.add(self.channel)
            else:
                assert tid is not None
                self.counts[self.channel] += 1
                self._detok.add_token(tid)
                out += self._text(self._detok.last_segment)
            if self.finish_reason == "stop_string":
                return out
        if self._loops is not None and self._loops.add(token):
            self.finish_reason = "repetition"
        return out

    def close(self, finish_reason: FinishReason = "length") -> list[Chunk]:
        """Flush what was held back; the last chunk carries the finish reason.

        ``finish_reason`` is used when the sequence has not ended by itself
        (the caller stopped at ``max_tokens``: ``"length"``).
        """
        out: list[Chunk] = []
        if self.finish_reason is None:
            self.finish_reason = finish_reason
        if self.finish_reason != "stop_string":
            for _, tid in self._channels.flush():
                assert tid is not None
                self.counts[self.channel] += 1
                self._detok.add_token(tid)
            self._detok.finalize()
            out += self._text(self._detok.last_segment, final=True)
            if self._text_tag is not None:  # a call the output never closed
                self.segments.setdefault(self._text_tag[0], []).append(self._tag_text)
            elif self.channel != "content":  # a block the output never closed
                self.segments.setdefault(self.channel, []).append(self._segment)
        self._held_blank = ""
        return out + [self._chunk(self._content[self._emitted :], "content", finish=True)]

    # ---------------------------------------------------------------- text

    def _chunk(self, text: str, kind: ChunkKind, finish: bool = False) -> Chunk:
        ids = tuple(self.tokens[self._reported :])
        lps = tuple(self._logprobs[self._reported :]) if self._logprobs else ()
        self._reported = len(self.tokens)
        return Chunk(text, ids, self.finish_reason if finish else None, None, kind, lps)

    def _end_segment(self, kind: ChunkKind) -> list[Chunk]:
        self._detok.finalize()
        out = self._text(self._detok.last_segment, kind=kind)
        self._detok.reset()
        if kind != "content":
            self.segments.setdefault(kind, []).append(self._segment)
        self._segment = ""
        self._held_blank = ""  # a block's trailing blank lines are not part of it
        self._started, self._strip_lead = False, True
        return out

    def _text(self, text: str, final: bool = False, kind: ChunkKind | None = None) -> list[Chunk]:
        if not text:
            return []
        kind = kind or self._channels.channel
        if kind != "content":
            self._segment += text
        if not self._started:
            if self._strip_lead or kind != "content":
                text = text.lstrip("\n")
            if not text:
                return []
            self._started = True
        if kind != "content":
            text = self._held_blank + text
            body = text.rstrip()
            self._held_blank = text[len(body) :]
            return [self._chunk(body, kind)] if body else []
        if self._text_tag is not None:
            return self._in_text_tag(text, final)
        return self._answer(text, final)

    def _answer(self, text: str, final: bool) -> list[Chunk]:
        self._content += text
        self._channels.answer_started = self._channels.answer_started or bool(text.strip())
        content, start = self._content, self._emitted
        cut = min((i for i in (content.find(s, start) for s in self._stops) if i >= 0), default=-1)
        opened = min(((i, tag) for tag in self._text_tags if (i := content.find(tag[1], start)) >= 0), default=None)
        if cut >= 0 and (opened is None or cut <= opened[0]):
            self._content = content[:cut]
            self.finish_reason = "stop_string"
            return []
        if opened is not None:
            at, tag = opened
            rest, self._content = content[at + len(tag[1]) :], content[:at]
            out = [self._chunk(self._content[start:], "content")] if at > start else []
            self._emitted = at
            self._text_tag, self._tag_text, self._tag_emitted = tag, "", 0
            self.opened.add(tag[0])
            return out + (self._in_text_tag(rest, final) if rest else [])
        hold = 0 if final else max(_held_back(content, self._stops), _held_back(content, [t[1] for t in self._text_tags]))
        safe = len(content) - hold
        if safe <= start:
            return []
        self._emitted = safe
        return [self._chunk(content[start:safe], "content")]

    def _in_text_tag(self, text: str, final: bool) -> list[Chunk]:
        assert self._text_tag is not None
        kind, _, close = self._text_tag
        self._tag_text += text
        end = self._tag_text.find(close)
        if end >= 0:
            body, rest = self._tag_text[:end], self._tag_text[end + len(close) :]
            out = [self._chunk(body[self._tag_emitted :], kind)] if len(body) > self._tag_emitted else []
            self.segments.setdefault(kind, []).append(body)
            self._text_tag = None
            return out + (self._answer(rest, final) if rest else [])
        safe = len(self._tag_text) - (0 if final else _held_back(self._tag_text, [close]))
        if safe <= self._tag_emitted:
            return []
        piece, self._tag_emitted = self._tag_text[self._tag_emitted : safe], safe
        return [self._chunk(piece, kind)]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could start a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep
