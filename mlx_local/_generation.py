"""What generation takes and gives: options, chunks, results and stats.

The token loop itself is :mod:`mlx_local._runner` (mlx-lm's ``generate_step``
produces the tokens) and the per-sequence decoding :mod:`mlx_local._decoder`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Literal

from .errors import InvalidOptionError

__all__ = ["Chunk", "ChunkKind", "FinishReason", "GenerationOptions", "Result", "Stats", "TokenLogprob", "collect"]

#: Why generation ended: an end-of-sequence token, a stop string, ``max_tokens``,
#: the output became an exact loop (``stop_loops``), the answer is tool calls,
#: or ``chat.act`` ran out of rounds.
FinishReason = Literal["stop", "stop_string", "length", "repetition", "tool_calls", "max_rounds"]
#: What a chunk of text is: the answer, reasoning in a think block, or a tool call.
ChunkKind = Literal["content", "thinking", "tool_call"]


@dataclass(frozen=True)
class GenerationOptions:
    """How to sample. Every field can be passed to ``generate``/``stream``.

    Attributes:
        max_tokens: the most tokens to generate.
        temperature: 0 picks the most likely token (greedy); higher samples.
        top_p: nucleus sampling; 1.0 turns it off.
        top_k: sample among the k most likely tokens; 0 turns it off.
        min_p: drop tokens below ``min_p`` times the top probability; 0 turns it off.
        repetition_penalty: >1 discourages repeating recent tokens; 1.0 turns it off.
        seed: makes sampling reproducible; same seed, same output.
        stop: strings that end generation; they are not part of the text.
        stop_loops: end with ``finish_reason="repetition"`` once the output
            repeats the same span of tokens back to back (three times, or
            48 tokens of a short pattern), as small models decoding greedily
            do until ``max_tokens``.
        logprobs: None, or return each generated token's log-probability
            with this many most likely alternatives (0 to 20).
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_loops: bool = True
    logprobs: int | None = None

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_generation_config(cls, gc: dict[str, Any]) -> GenerationOptions:
        """Defaults from a model's ``generation_config.json``.

        As in transformers, sampling settings apply only when ``do_sample`` is
        true; otherwise the model is decoded greedily.
        """
        opts: dict[str, Any] = {}
        if isinstance(gc.get("max_new_tokens"), int) and gc["max_new_tokens"] > 0:
            opts["max_tokens"] = gc["max_new_tokens"]
        if gc.get("do_sample"):
            opts["temperature"] = gc.get("temperature", 1.0)
            for key in ("top_p", "top_k", "min_p"):
                if gc.get(key) is not None:
                    opts[key] = gc[key]
        if gc.get("repetition_penalty") is not None:
            opts["repetition_penalty"] = gc["repetition_penalty"]
        try:
            return cls().updated(**opts)
        except InvalidOptionError:
            return cls()  # a model's odd defaults must not make it unusable

    def updated(self, **changes: Any) -> GenerationOptions:
        """A copy with ``changes`` applied and checked."""
        unknown = set(changes) - self.names()
        if unknown:
            raise InvalidOptionError(
                f"Unknown option(s) {', '.join(sorted(unknown))}; "
                f"valid options are {', '.join(sorted(self.names()))}.",
                option=sorted(unknown)[0],
            )
        if "stop" in changes:
            stop = changes["stop"]
            changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        new = replace(self, **changes)
        new._check()
        return new

    def _check(self) -> None:
        def bad(option: str, why: str) -> InvalidOptionError:
            return InvalidOptionError(f"{option}={getattr(self, option)!r}: {why}", option=option)

        def number(option: str) -> float:
            v = getattr(self, option)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(option, "must be a finite number")
            return float(v)

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "must be a whole number of at least 1")
        if number("temperature") < 0:
            raise bad("temperature", "must be 0 (greedy) or more")
        if not 0 < number("top_p") <= 1:
            raise bad("top_p", "must be in (0, 1]; use 1.0 to turn it off")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be a whole number, 0 to turn it off")
        if not 0 <= number("min_p") <= 1:
            raise bad("min_p", "must be in [0, 1]; use 0 to turn it off")
        if number("repetition_penalty") <= 0:
            raise bad("repetition_penalty", "must be more than 0; use 1.0 to turn it off")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise bad("seed", "must be a non-negative whole number or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be a non-empty string or a list of non-empty strings")
        if not isinstance(self.stop_loops, bool):
            raise bad("stop_loops", "must be True or False")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20
        ):
            raise bad("logprobs", "must be None or a whole number of alternatives from 0 to 20")


@dataclass(frozen=True)
class Stats:
    """What one generation cost.

    Attributes:
        prompt_tokens: tokens in the prompt (cached ones included).
        generated_tokens: tokens generated (the stop token included).
        time_to_first_token: seconds from the call to the first generated token.
        prompt_tps: prompt tokens processed per second (cached ones excluded).
        decode_tps: generated tokens per second after the first.
        peak_memory: the most memory MLX held during the call, in bytes
            (model weights included).
        total_time: seconds for the whole call.
        cached_tokens: prompt tokens that came from a KV cache (chats reuse
            the previous turns'), so were not processed again.
        thinking_tokens: generated tokens inside a think block (tags excluded).
        answer_tokens: generated tokens of the answer.
    """

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float
    prompt_tps: float
    decode_tps: float
    peak_memory: int
    total_time: float
    cached_tokens: int = 0
    thinking_tokens: int = 0
    answer_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        cached = f" ({self.cached_tokens} from cache)" if self.cached_tokens else ""
        thinking = f" ({self.thinking_tokens} thinking)" if self.thinking_tokens else ""
        return (
            f"{self.prompt_tokens} prompt tokens{cached} at {self.prompt_tps:.1f} tok/s, "
            f"{self.generated_tokens} generated{thinking} at {self.decode_tps:.1f} tok/s, "
            f"first token after {self.time_to_first_token * 1000:.0f} ms, "
            f"peak memory {self.peak_memory / 2**20:.0f} MiB"
        )


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the most likely alternatives.

    Attributes:
        token: the token id.
        logprob: its log-probability (natural log) under the model, after
            the logits processors and before temperature.
        top: ``(token id, logprob)`` of the most likely tokens, best first.
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text.

    ``kind`` is ``"content"`` (the answer), ``"thinking"`` (reasoning inside
    a think block; the tags themselves never appear) or ``"tool_call"``. The
    last chunk has ``finish_reason`` and ``stats``. ``logprobs`` holds one
    entry per token of ``token_ids`` when ``logprobs=`` was asked for.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    stats: Stats | None = None
    kind: ChunkKind = "content"
    logprobs: tuple[TokenLogprob, ...] = field(default=(), repr=False)
    #: on the last chunk, with ``tools=``: the calls the model made (``ToolCall``)
    tool_calls: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Result:
    """The outcome of ``Model.generate``.

    Attributes:
        text: the generated answer (stop string and thinking excluded).
        finish_reason: ``"stop"`` (end-of-sequence token), ``"stop_string"``
            (one of ``stop`` appeared), ``"length"`` (``max_tokens`` reached)
            or ``"repetition"`` (the output looped; see ``stop_loops``).
        stats: timing and memory, see :class:`Stats`.
        token_ids: the generated token ids.
        thinking: the reasoning of a thinking model, or None.
        logprobs: per generated token, with ``logprobs=`` (else empty).
    """

    text: str
    finish_reason: FinishReason
    stats: Stats
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    thinking: str | None = None
    logprobs: tuple[TokenLogprob, ...] = field(default=(), repr=False)
    constraint: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def parsed(self) -> Any:
        """With ``schema=``: the answer as a dict (or an instance of the pydantic class given);
        with ``choices=`` / ``pattern=``: the text.

        Raises:
            OutputError: the answer was cut short (``finish_reason`` is not
                ``"stop"``), so it is not whole.
            InvalidOptionError: no ``schema``, ``choices`` or ``pattern`` was given.
        """
        if self.constraint is None:
            raise InvalidOptionError("parsed needs schema=, choices= or pattern= on the call.", option="schema")
        return self.constraint.parse(self.text, self.finish_reason)


@dataclass(frozen=True)
class Collected:
    """A drained chunk stream."""

    content: str
    thinking: str | None
    finish_reason: FinishReason
    stats: Stats
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]


def collect(chunks: Iterable[Chunk]) -> Collected:
    """Drain a chunk stream into its texts, finish reason, stats and tokens."""
    parts: dict[str, list[str]] = {"content": [], "thinking": [], "tool_call": []}
    ids: list[int] = []
    lps: list[TokenLogprob] = []
    last: Chunk | None = None
    for chunk in chunks:
        parts[chunk.kind].append(chunk.text)
        ids.extend(chunk.token_ids)
        lps.extend(chunk.logprobs)
        last = chunk
    assert last is not None and last.stats is not None and last.finish_reason is not None
    has_thinking = bool(parts["thinking"]) or last.stats.thinking_tokens > 0
    thinking = "".join(parts["thinking"]) if has_thinking else None
    return Collected("".join(parts["content"]), thinking, last.finish_reason, last.stats, tuple(ids), tuple(lps))
