"""Generation: options, the token loop, stop strings and timing.

mlx-lm's ``generate_step`` produces the tokens (prefill, KV cache, sampling,
logits processors). This module adds what a caller of a library expects on
top: validated options with the model's own defaults, stop strings that are
never returned, a finish reason, and stats measured the same way every time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Sequence

from .errors import InvalidOptionError

__all__ = ["Chunk", "GenerationOptions", "Result", "Stats", "collect", "generate_tokens"]


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
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_generation_config(cls, gc: dict[str, Any]) -> "GenerationOptions":
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

    def updated(self, **changes: Any) -> "GenerationOptions":
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
class Chunk:
    """A piece of streamed text.

    ``kind`` is ``"content"`` (the answer) or ``"thinking"`` (reasoning inside
    a think block; the tags themselves never appear). The last chunk has
    ``finish_reason`` and ``stats``.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    stats: Stats | None = None
    kind: str = "content"


@dataclass(frozen=True)
class Result:
    """The outcome of ``Model.generate``.

    Attributes:
        text: the generated answer (stop string and thinking excluded).
        finish_reason: ``"stop"`` (end-of-sequence token), ``"stop_string"``
            (one of ``stop`` appeared) or ``"length"`` (``max_tokens`` reached).
        stats: timing and memory, see :class:`Stats`.
        token_ids: the generated token ids.
        thinking: the reasoning of a thinking model, or None.
    """

    text: str
    finish_reason: str
    stats: Stats
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    thinking: str | None = None

    def __str__(self) -> str:
        return self.text


def collect(chunks: Iterator[Chunk]) -> tuple[str, str | None, str, Stats, tuple[int, ...]]:
    """Drain a chunk stream: (content, thinking or None, finish_reason, stats, token ids)."""
    content: list[str] = []
    thinking: list[str] = []
    ids: list[int] = []
    last: Chunk | None = None
    saw_thinking = False
    for chunk in chunks:
        (thinking if chunk.kind == "thinking" else content).append(chunk.text)
        saw_thinking = saw_thinking or chunk.kind == "thinking"
        ids.extend(chunk.token_ids)
        last = chunk
    assert last is not None and last.stats is not None and last.finish_reason is not None
    has_thinking = saw_thinking or last.stats.thinking_tokens > 0
    return "".join(content), ("".join(thinking) if has_thinking else None), last.finish_reason, last.stats, tuple(ids)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could start a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


def _sampler_and_processors(options: GenerationOptions) -> tuple[Any, list[Any]]:
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(
        temp=options.temperature,
        top_p=options.top_p if options.top_p < 1.0 else 0.0,
        min_p=options.min_p,
        top_k=options.top_k,
    )
    processors = make_logits_processors(
        repetition_penalty=options.repetition_penalty if options.repetition_penalty != 1.0 else None
    )
    return sampler, processors


def generate_tokens(
    module: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    options: GenerationOptions,
    *,
    logits_processors: Sequence[Any] = (),
    prompt_cache: Any = None,
    cached_tokens: int = 0,
    think_tags: Any = None,
    thinking_inside: bool = False,
) -> Iterator[Chunk]:
    """Run generation and yield text chunks; the last one carries the stats.

    ``logits_processors`` run after the sampling options' own processors.
    ``prompt_cache`` is an mlx-lm KV cache holding ``cached_tokens`` tokens of
    the prompt; ``prompt_ids`` are then the tokens not in it. ``think_tags``
    (a :class:`~mlx_local._thinking.ThinkTags`) makes think blocks come out as
    ``kind="thinking"`` chunks; ``thinking_inside`` says the prompt opened one.
    Stop strings apply to the answer only.
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from ._thinking import Splitter

    start = time.perf_counter()
    mx.reset_peak_memory()
    if options.seed is not None:
        mx.random.seed(options.seed)
    sampler, processors = _sampler_and_processors(options)
    processors = processors + list(logits_processors)
    eos = set(tokenizer.eos_token_ids)
    stops = options.stop
    splitter = Splitter(tokenizer.detokenizer, think_tags, inside=thinking_inside)

    content = ""  # the answer decoded so far
    emitted = 0  # characters of `content` already yielded
    tokens: list[int] = []
    reported = 0  # tokens already carried by a chunk
    first_token_at: float | None = None
    finish = "length"

    def chunks(pieces: list[tuple[str, str]], final: bool = False) -> Iterator[Chunk]:
        """Chunks for `pieces`; returns early (finish set) when a stop string appears."""
        nonlocal content, emitted, reported, finish
        for kind, text in pieces:
            if kind == "thinking":
                yield Chunk(text, tuple(tokens[reported:]), kind="thinking")
                reported = len(tokens)
                continue
            content += text
            if stops:
                cut = min((i for i in (content.find(s, emitted) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    content = content[:cut]
                    finish = "stop_string"
                    return
                safe = len(content) if final else len(content) - _held_back(content, stops)
            else:
                safe = len(content)
            if safe > emitted:
                yield Chunk(content[emitted:safe], tuple(tokens[reported:]))
                emitted, reported = safe, len(tokens)

    steps = generate_step(
        mx.array(list(prompt_ids), dtype=mx.uint32),
        module,
        max_tokens=options.max_tokens,
        sampler=sampler,
        logits_processors=processors or None,
        prompt_cache=prompt_cache,
    )
    try:
        for token, _ in steps:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            tokens.append(int(token))
            if token in eos:
                finish = "stop"
                break
            yield from chunks(splitter.add(int(token)))
            if finish == "stop_string":
                break
    finally:
        steps.close()
    if finish != "stop_string":
        yield from chunks(splitter.finish(), final=True)
    end = time.perf_counter()
    first = first_token_at or end
    n = len(tokens)
    stats = Stats(
        prompt_tokens=cached_tokens + len(prompt_ids),
        generated_tokens=n,
        time_to_first_token=first - start,
        prompt_tps=len(prompt_ids) / max(first - start, 1e-9),
        decode_tps=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
        peak_memory=int(mx.get_peak_memory()),
        total_time=end - start,
        cached_tokens=cached_tokens,
        thinking_tokens=splitter.thinking_tokens,
        answer_tokens=splitter.content_tokens,
    )
    yield Chunk(content[emitted:], tuple(tokens[reported:]), finish, stats)
