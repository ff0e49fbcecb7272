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

__all__ = ["Chunk", "GenerationOptions", "Result", "Stats", "generate_tokens"]


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
        prompt_tokens: tokens in the prompt.
        generated_tokens: tokens generated (the stop token included).
        time_to_first_token: seconds from the call to the first generated token.
        prompt_tps: prompt tokens processed per second.
        decode_tps: generated tokens per second after the first.
        peak_memory: the most memory MLX held during the call, in bytes
            (model weights included).
        total_time: seconds for the whole call.
    """

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float
    prompt_tps: float
    decode_tps: float
    peak_memory: int
    total_time: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.prompt_tokens} prompt tokens at {self.prompt_tps:.1f} tok/s, "
            f"{self.generated_tokens} generated at {self.decode_tps:.1f} tok/s, "
            f"first token after {self.time_to_first_token * 1000:.0f} ms, "
            f"peak memory {self.peak_memory / 2**20:.0f} MiB"
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text. The last chunk has ``finish_reason`` and ``stats``."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    stats: Stats | None = None


@dataclass(frozen=True)
class Result:
    """The outcome of ``Model.generate``.

    Attributes:
        text: the generated text (stop string excluded).
        finish_reason: ``"stop"`` (end-of-sequence token), ``"stop_string"``
            (one of ``stop`` appeared) or ``"length"`` (``max_tokens`` reached).
        stats: timing and memory, see :class:`Stats`.
        token_ids: the generated token ids.
    """

    text: str
    finish_reason: str
    stats: Stats
    token_ids: tuple[int, ...] = field(default=(), repr=False)

    def __str__(self) -> str:
        return self.text


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
) -> Iterator[Chunk]:
    """Run generation and yield text chunks; the last one carries the stats.

    ``logits_processors`` run after the sampling options' own processors
    (the chat uses them to steer thinking). ``prompt_cache`` is an mlx-lm KV
    cache to continue from; ``prompt_ids`` are then the tokens not in it.
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    start = time.perf_counter()
    mx.reset_peak_memory()
    if options.seed is not None:
        mx.random.seed(options.seed)
    sampler, processors = _sampler_and_processors(options)
    processors = processors + list(logits_processors)
    eos = set(tokenizer.eos_token_ids)
    stops = options.stop
    detok = tokenizer.detokenizer
    detok.reset()

    text = ""  # everything decoded so far
    emitted = 0  # characters of `text` already yielded
    tokens: list[int] = []
    reported = 0  # tokens already carried by a chunk
    first_token_at: float | None = None
    finish = "length"
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
            detok.add_token(int(token))
            text += detok.last_segment
            if stops:
                cut = min((i for i in (text.find(s, emitted) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop_string"
                    break
                safe = len(text) - _held_back(text, stops)
            else:
                safe = len(text)
            if safe > emitted:
                yield Chunk(text[emitted:safe], tuple(tokens[reported:]))
                emitted, reported = safe, len(tokens)
    finally:
        steps.close()
    if finish != "stop_string":
        detok.finalize()
        text += detok.last_segment
    end = time.perf_counter()
    first = first_token_at or end
    n = len(tokens)
    stats = Stats(
        prompt_tokens=len(prompt_ids),
        generated_tokens=n,
        time_to_first_token=first - start,
        prompt_tps=len(prompt_ids) / max(first - start, 1e-9),
        decode_tps=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
        peak_memory=int(mx.get_peak_memory()),
        total_time=end - start,
    )
    yield Chunk(text[emitted:], tuple(tokens[reported:]), finish, stats)
