"""One sequence from prompt ids to chunks: mlx-lm's token loop feeding a :class:`~mlx_local._decoder.Decoder`.

mlx-lm's ``generate_step`` does prefill, KV cache, sampling and logits
processors. This adds the decoder and stats measured the same way every
time. Seeding the RNG and accounting peak memory are process-wide, so they
belong to the caller (:meth:`mlx_local.Model.stream` does both).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Generator, Iterator, Sequence

from ._decoder import Decoder
from ._generation import Chunk, GenerationOptions, Stats, TokenLogprob

__all__ = ["run_sequence", "sampler_and_processors", "token_steps"]


def sampler_and_processors(options: GenerationOptions) -> tuple[Any, list[Any]]:
    """mlx-lm's sampler and logits processors for ``options``."""
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
    return sampler, list(processors)


def _logprob(token: int, logprobs: Any, top: int) -> TokenLogprob:
    import mlx.core as mx

    row = logprobs.reshape(-1)
    chosen = float(row[token].item())
    if top == 0:
        return TokenLogprob(token, chosen)
    best = mx.argpartition(-row, kth=top - 1)[:top]
    ids: list[int] = [int(i) for i in best.tolist()]  # type: ignore[union-attr, arg-type]
    values: list[float] = [float(v) for v in row[best].tolist()]  # type: ignore[union-attr, arg-type]
    pairs = sorted(zip(ids, values), key=lambda p: -p[1])
    return TokenLogprob(token, chosen, tuple(pairs))


def token_steps(
    module: Any,
    prompt_ids: Sequence[int],
    options: GenerationOptions,
    *,
    logits_processors: Sequence[Any] = (),
    prompt_cache: Any = None,
) -> Generator[tuple[int, TokenLogprob | None], None, None]:
    """Generated tokens (and, with ``options.logprobs``, their log-probabilities)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    sampler, processors = sampler_and_processors(options)
    processors += list(logits_processors)
    steps = generate_step(
        mx.array(list(prompt_ids), dtype=mx.uint32),
        module,
        max_tokens=options.max_tokens,
        sampler=sampler,
        logits_processors=processors or None,
        prompt_cache=prompt_cache,
    )
    try:
        for token, logprobs in steps:
            t = int(token)
            yield t, (None if options.logprobs is None else _logprob(t, logprobs, options.logprobs))
    finally:
        steps.close()


def run_sequence(
    module: Any,
    prompt_ids: Sequence[int],
    options: GenerationOptions,
    decoder: Decoder,
    *,
    logits_processors: Sequence[Any] = (),
    prompt_cache: Any = None,
    cached_tokens: int = 0,
    peak_memory: Any = None,
) -> Iterator[Chunk]:
    """Generate and decode one sequence; the last chunk carries the finish reason and stats.

    ``prompt_cache`` holds ``cached_tokens`` tokens of the prompt already;
    ``prompt_ids`` are the rest. ``peak_memory()`` (from the caller, who
    owns the process-wide counter) fills ``Stats.peak_memory``.
    """
    start = time.perf_counter()
    first: float | None = None
    steps: Generator[tuple[int, TokenLogprob | None], None, None] = token_steps(module, prompt_ids, options, logits_processors=logits_processors, prompt_cache=prompt_cache)
    try:
        for token, logprob in steps:
            if first is None:
                first = time.perf_counter()
            yield from decoder.add(token, logprob)
            if decoder.finish_reason is not None:
                break
    finally:
        steps.close()
    *rest, last = decoder.close()
    yield from rest
    end = time.perf_counter()
    first = first or end
    n = len(decoder.tokens)
    stats = Stats(
        prompt_tokens=cached_tokens + len(prompt_ids),
        generated_tokens=n,
        time_to_first_token=first - start,
        prompt_tps=len(prompt_ids) / max(first - start, 1e-9),
        decode_tps=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
        peak_memory=int(peak_memory()) if peak_memory is not None else 0,
        total_time=end - start,
        cached_tokens=cached_tokens,
        thinking_tokens=decoder.counts["thinking"],
        answer_tokens=decoder.counts["content"] + decoder.counts["tool_call"],
    )
    yield replace(last, stats=stats)
