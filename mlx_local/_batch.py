"""Continuous batching: several requests of one model decoding together.

mlx-lm's ``BatchGenerator`` runs the model on a batch of sequences at once:
one forward pass per step for every running sequence (a few rows cost about
what one does on the CPU with the native kernels), newcomers prefilled in
chunks between decode steps, sequences inserted and removed while the others
run. This module puts one :class:`~mlx_local._decoder.Decoder` on each
sequence, built exactly as :meth:`mlx_local.Model.run` builds it
(:meth:`~mlx_local.Model.new_decoder`), so a request gives the same chunks
batched as alone: texts, channels, stop strings, loops, tool calls, finish
reasons, and its own stats.

Per request: its sampler (greedy requests share one batched argmax), its
logits processors (they see the same tokens as under ``generate_step``: the
uncached prompt, then the generated ones), its ``max_tokens``, its KV cache
taken from and given back to the model's :class:`~mlx_local._prompt_cache.PromptCache`
(``BatchGenerator`` merges per-sequence ``KVCache`` s into a batch cache and
extracts them back as ``KVCache`` s). Ends of sequence are the decoder's to
decide (no stop tokens are given to ``BatchGenerator``), so they are the
same as alone.

What cannot be batched (:func:`why_alone`): a ``seed`` with sampling
(``temperature > 0``), because every sequence of a batch draws from MLX's
one random generator, so a seeded request would not get its reproducible
sample; and models whose KV cache type has no batch form. Those run one at
a time (the worker does that). Log-probabilities batch fine: the batch gives
each sequence its own normalized row.

Stats are per request; ``time_to_first_token`` and ``total_time`` count
from its admission to the batch (:meth:`BatchEngine.add`; time waiting in
a worker's queue before that is not included), ``peak_memory`` is the
process's peak since the batch last started from empty.

The engine is driven by one thread (the worker's); it is not thread-safe.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Union

from ._generation import Chunk, Stats
from ._request import Request

if TYPE_CHECKING:
    from ._decoder import Decoder
    from ._model import Model

__all__ = ["BatchEngine", "Emit", "why_alone", "DEFAULT_MAX_CONCURRENCY", "DEFAULT_PREFILL_STEP"]

#: Sequences decoding together at most (the native CPU kernels serve up to 8 rows).
DEFAULT_MAX_CONCURRENCY = 4
#: Prompt tokens prefilled per step while others decode: a newcomer's prompt
#: delays the running decodes by about one such chunk per token they make.
DEFAULT_PREFILL_STEP = 256


#: Receives a request's chunks, or the error that ended it.
Emit = Callable[[Union[Chunk, BaseException]], None]


_cache_verdicts: weakref.WeakKeyDictionary[Model, str | None] = weakref.WeakKeyDictionary()


def _cache_batchable(model: Model) -> str | None:
    from mlx_lm.models.cache import make_prompt_cache

    kinds = {type(c) for c in make_prompt_cache(model.module)}
    bad = sorted(k.__name__ for k in kinds if not callable(getattr(k, "merge", None)))
    return f"{model.name}'s KV cache ({', '.join(bad)}) has no batched form" if bad else None


def why_alone(model: Model, request: Request) -> str | None:
    """Why ``request`` must run on its own rather than in a batch, or None if it can be batched."""
    if request.opts.seed is not None and request.opts.temperature > 0:
        return "seed= with temperature > 0: batched sequences share MLX's one random generator, so the sample would not be reproducible"
    if model not in _cache_verdicts:  # a model's cache types do not change
        _cache_verdicts[model] = _cache_batchable(model)
    return _cache_verdicts[model]


class _Guarded:
    """A request's logits processors, run so that an error in one fails that request only.

    ``BatchGenerator`` calls each sequence's processors in turn inside its
    step; an exception there would end the whole batch. Caught here, it is
    kept for the engine to hand to its request after the step.
    """

    def __init__(self, processors: list[Any]) -> None:
        self.processors = processors
        self.error: BaseException | None = None

    def __call__(self, tokens: Any, logits: Any) -> Any:
        if self.error is None:
            try:
                for processor in self.processors:
                    logits = processor(tokens, logits)
            except Exception as e:  # handed to the request's caller after the step
                self.error = e
        return logits


@dataclass
class _Slot:
    """One request in the batch."""

    request: Request
    emit: Emit
    decoder: Decoder
    ids: list[int]
    cached: int
    start: float
    guard: _Guarded | None
    first: float | None = None


class BatchEngine:
    """Requests of one model decoding together (continuous batching; see the module doc).

    Args:
        model: the model; its ``prompt_cache`` serves requests with ``reuse_cache``.
        max_concurrency: the most requests in the batch at once (prefilling
            or decoding).
        prefill_step_size: prompt tokens processed per step (see
            :data:`DEFAULT_PREFILL_STEP`).

    :meth:`add` a request (FIFO order is the caller's: the engine starts
    them in the order added), :meth:`step` until :attr:`active` is 0; each
    step hands the chunks it made to the requests' ``emit``.
    """

    def __init__(self, model: Model, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 prefill_step_size: int = DEFAULT_PREFILL_STEP) -> None:  # fmt: skip
        from .errors import InvalidOptionError

        for name, value in (("max_concurrency", max_concurrency), ("prefill_step_size", prefill_step_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name}={value!r}: must be a whole number of at least 1", option=name)
        self.model = model
        self.max_concurrency = max_concurrency
        self.prefill_step_size = prefill_step_size
        self._slots: dict[int, _Slot] = {}
        self._gen: Any = None

    def _generator(self) -> Any:
        if self._gen is None:
            from mlx_lm.generate import BatchGenerator

            self._gen = BatchGenerator(
                self.model.module,
                completion_batch_size=self.max_concurrency,
                prefill_batch_size=self.max_concurrency,
                prefill_step_size=self.prefill_step_size,
            )
        return self._gen

    @property
    def active(self) -> int:
        """Requests in the batch (prefilling or decoding)."""
        return len(self._slots)

    @property
    def free(self) -> int:
        """How many more requests :meth:`add` takes now."""
        return self.max_concurrency - len(self._slots)

    def add(self, request: Request, emit: Emit) -> int:
        """Start ``request`` (it must be batchable, see :func:`why_alone`); its chunks go to ``emit``.

        Returns its id, for :meth:`cancel`.
        """
        import mlx.core as mx

        from ._runner import sampler_and_processors

        if self.free <= 0:
            raise RuntimeError("the batch is full")  # the caller checks .free: a bug if reached
        opts = request.opts
        ids = list(request.ids)
        store = self.model.prompt_cache if request.reuse_cache else None
        cache, cached = store.take(ids) if store is not None else (None, 0)
        sampler, processors = sampler_and_processors(opts)
        processors += list(request.processors)
        guard = _Guarded(processors) if processors else None
        if not self._slots:
            mx.reset_peak_memory()
        (uid,) = self._generator().insert(
            [ids[cached:]],
            max_tokens=[opts.max_tokens],
            caches=[cache] if cache is not None else None,
            samplers=[None if opts.temperature == 0 else sampler],  # None: the batch's shared argmax
            logits_processors=[[guard] if guard is not None else []],
        )
        decoder = self.model.new_decoder(opts, thinking_open=request.thinking_open, tools=request.toolset)
        self._slots[uid] = _Slot(request, emit, decoder, ids, cached if cache is not None else 0, time.perf_counter(), guard)
        return int(uid)

    def cancel(self, uid: int) -> bool:
        """Stop request ``uid`` (no more chunks; its cache is not kept). False if it was not running."""
        if self._slots.pop(uid, None) is None:
            return False
        self._generator().remove([uid])
        return True

    def step(self) -> None:
        """One step of the batch: a token for each decoding request, a prefill chunk for newcomers.

        An error raised here (by the model or a logits processor) may
        concern any request: the caller fails them all (:meth:`abort`).
        """
        from ._runner import _logprob

        if not self._slots:
            return
        _, responses = self._generator().next()
        done: list[tuple[int, Any]] = []  # (uid, its extracted cache, or None: still in the generator)
        failed = [uid for uid, s in self._slots.items() if s.guard is not None and s.guard.error is not None]
        for uid in failed:
            bad = self._slots.pop(uid)
            self._generator().remove([uid])
            assert bad.guard is not None and bad.guard.error is not None
            bad.emit(bad.guard.error)
        for r in responses:
            slot = self._slots.get(r.uid)
            if slot is None:
                continue
            if slot.first is None:
                slot.first = time.perf_counter()
            token = int(r.token)
            top = slot.request.opts.logprobs
            for chunk in slot.decoder.add(token, None if top is None else _logprob(token, r.logprobs, top)):
                slot.emit(chunk)
            if r.finish_reason is not None:  # max_tokens: the generator has dropped it already
                done.append((r.uid, r.prompt_cache))
            elif slot.decoder.finish_reason is not None:  # the decoder's end: eos, stop string, loop
                done.append((r.uid, None))
        if not done:
            return
        leaving = [uid for uid, cache in done if cache is None]
        caches: dict[int, Any] = {}
        if leaving:
            keep = any(self._slots[uid].request.reuse_cache for uid in leaving)
            caches = self._gen.remove(leaving, return_prompt_caches=keep) or {}
        for uid, cache in done:
            slot = self._slots.pop(uid)
            if cache is None and uid in caches:
                cache = caches[uid][0]
            try:
                self._finish(slot, cache)
            except Exception as e:  # e.g. its tool calls would not parse: this request only
                slot.emit(e)

    def _finish(self, slot: _Slot, cache: Any) -> None:
        import mlx.core as mx

        from ._model import Model

        decoder = slot.decoder
        *rest, last = decoder.close()
        for chunk in rest:
            slot.emit(chunk)
        end = time.perf_counter()
        first = slot.first or end
        n = len(decoder.tokens)
        fed = len(slot.ids) - slot.cached
        stats = Stats(
            prompt_tokens=len(slot.ids),
            generated_tokens=n,
            time_to_first_token=first - slot.start,
            prompt_tps=fed / max(first - slot.start, 1e-9),
            decode_tps=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
            peak_memory=int(mx.get_peak_memory()),
            total_time=end - slot.start,
            cached_tokens=slot.cached,
            thinking_tokens=decoder.counts["thinking"],
            answer_tokens=decoder.counts["content"] + decoder.counts["tool_call"],
        )
        last = replace(last, stats=stats)
        if slot.request.toolset is not None:
            last = Model.with_calls(last, decoder, slot.request.toolset)
        if slot.request.reuse_cache and cache is not None:
            mx.eval([c.state for c in cache])  # a copy out of the batch: free the batch's arrays
            self.model.prompt_cache.put(slot.ids + decoder.tokens, cache)
        slot.emit(last)

    def abort(self, error: BaseException) -> None:
        """End every request with ``error`` and start afresh (after :meth:`step` raised)."""
        slots, self._slots = self._slots, {}
        self.close()
        for slot in slots.values():
            slot.emit(error)

    def close(self) -> None:
        """Drop the batch (requests still in it get nothing more)."""
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        self._slots.clear()
