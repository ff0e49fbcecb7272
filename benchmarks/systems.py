"""The three ways of running a model folder that the benchmark compares.

``mlx_local``       (a) ``mlx_local.Model.load(folder)`` and ``model.run(ids, opts)``:
                    everything the library chooses for this device (on the CPU:
                    float32 compute, OpenBLAS, :mod:`mlx_local._cpu_kernels`).
``mlx_lm``          (b) raw mlx-lm with its own defaults: ``mlx_lm.load(folder)``
                    (the stored dtype, e.g. bfloat16 scales and activations) and
                    ``mlx_lm.generate.generate_step`` with a greedy sampler.
``mlx_lm_ours``     (c) raw mlx-lm with our settings: ``mlx_lm.load``, then the
                    same cast and CPU layers ``Model.load`` applies on this
                    runtime, then mlx-lm's own ``generate_step``. (a) vs (c) is
                    the cost of our layer; (b) vs (c) what the device-aware
                    choices win.

All three run in one process, after ``import mlx_local``, so mlx-lm gets the
same BLAS as the library (the choice is process-wide). Every run bans the
end-of-sequence tokens (a logits processor, the same for all three) so that
each one generates exactly the tokens asked for, and greedy sampling makes
the three do the same arithmetic.

A run's numbers are measured identically for the three: time to first token
from the call, decode tokens/s over the tokens after the first, and MLX's
peak memory during the run counting only this system's own weights (other
models loaded in the process for interleaving are subtracted).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import mlx.core as mx
from mlx.utils import tree_flatten

import mlx_local  # first: it picks the BLAS before mlx loads
import mlx_local.types

SYSTEMS = ("mlx_local", "mlx_lm_ours", "mlx_lm")
LABELS = {
    "mlx_local": "mlx_local (defaults)",
    "mlx_lm_ours": "mlx-lm + our settings",
    "mlx_lm": "mlx-lm defaults",
    "llama_cpp": "llama.cpp (llama-bench, 2 threads)",
}


# ------------------------------------------------------------------ memory


def rss_now() -> int | None:
    """The process's current resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def rss_max() -> int:
    """The process's high-water resident set size in bytes (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def weight_bytes(module: Any) -> int:
    """Bytes of the module's parameters as they sit in memory."""
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def bytes_read_per_token(module: Any) -> int:
    """Weight bytes one decoding step reads: all of them, except that an
    embedding table that is not also the output head contributes one row."""
    total = weight_bytes(module)
    inner = getattr(module, "model", module)
    if "lm_head" in module and hasattr(inner, "embed_tokens"):  # untied: only a row of the table
        total -= sum(v.nbytes for _, v in tree_flatten(inner.embed_tokens.parameters()))
    return total


def settle() -> None:
    """Finish queued work and drop MLX's buffer cache, between measurements."""
    from mlx_lm.generate import generation_stream

    mx.synchronize(generation_stream)
    mx.synchronize()
    gc.collect()
    mx.clear_cache()


# -------------------------------------------------------------------- runs


@dataclass
class Run:
    """One generation: prompt of ``prompt_tokens``, then ``generated`` tokens."""

    prompt_tokens: int
    generated: int
    ttft: float  # seconds from the call to the first token
    prompt_tps: float  # prompt_tokens / ttft
    decode_tps: float | None  # (generated - 1) / time after the first token
    total: float  # seconds for the whole call
    peak_memory: int  # MLX peak during the run, this system's weights + the run's own memory
    run_memory: int  # of which the run itself (KV cache, activations)
    kv_cache_bytes: int | None = None  # the KV cache at the end, when the caller handed one in

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ban_tokens(token_ids: Sequence[int]) -> Callable[[mx.array, mx.array], mx.array]:
    """A logits processor that makes ``token_ids`` impossible (so no early stop)."""
    mask: list[mx.array] = []

    def processor(_tokens: mx.array, logits: mx.array) -> mx.array:
        if not mask:
            import numpy as np

            m = np.zeros((logits.shape[-1],), dtype=np.float32)
            m[[t for t in token_ids if t < logits.shape[-1]]] = -np.inf
            mask.append(mx.array(m))
        return logits + mask[0].astype(logits.dtype)

    return processor


def timed(
    start_call: Callable[[], Iterator[Any]],
    prompt_tokens: int,
    own_weights: int,
    cache: list[Any] | None = None,
) -> Run:
    """Drive a token iterator and time it (for the mlx-lm systems)."""
    settle()
    held = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = None
    n = 0
    for _ in start_call():
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    settle_stream_only()
    peak = mx.get_peak_memory()
    first = first or end
    return Run(
        prompt_tokens=prompt_tokens,
        generated=n,
        ttft=first - start,
        prompt_tps=prompt_tokens / max(first - start, 1e-9),
        decode_tps=(n - 1) / (end - first) if n > 1 and end > first else None,
        total=end - start,
        peak_memory=own_weights + max(0, peak - held),
        run_memory=max(0, peak - held),
        kv_cache_bytes=sum(c.nbytes for c in cache) if cache is not None else None,
    )


def settle_stream_only() -> None:
    """Wait for work still queued (generate_step computes one step ahead)."""
    from mlx_lm.generate import generation_stream

    mx.synchronize(generation_stream)
    mx.synchronize()


# ----------------------------------------------------------------- systems


class Loaded:
    """One system with one model folder loaded."""

    def __init__(self, system: str, module: Any, tokenizer: Any, model: Any = None) -> None:
        self.system = system
        self.module = module
        self.tokenizer = tokenizer
        self.model = model  # the mlx_local.Model, for system (a)
        self.weights = weight_bytes(module)
        self.bytes_per_token = bytes_read_per_token(module)
        self.dtype = _compute_dtype(module)
        self.eos = sorted(set(tokenizer.eos_token_ids))

    def run(self, ids: Sequence[int], max_tokens: int, *, prompt_cache: list[Any] | None = None,
            **generate_step_kwargs: Any) -> Run:
        """Generate ``max_tokens`` tokens after ``ids`` (greedy, EOS banned) and time it.

        ``generate_step_kwargs`` (``kv_bits``, ...) are for the mlx-lm systems only.
        """
        ban = ban_tokens(self.eos)
        if self.system == "mlx_local":
            return self._run_ours(ids, max_tokens, ban, prompt_cache)
        from mlx_lm.generate import generate_step, wired_limit
        from mlx_lm.sample_utils import make_sampler

        def call() -> Iterator[Any]:
            # What stream_generate does around generate_step (a no-op off Metal).
            with wired_limit(self.module):
                steps = generate_step(mx.array(list(ids), dtype=mx.uint32), self.module, max_tokens=max_tokens,
                                      sampler=make_sampler(0.0), logits_processors=[ban], prompt_cache=prompt_cache,
                                      **generate_step_kwargs)
                for token, _ in steps:
                    yield token

        return timed(call, len(ids), self.weights, prompt_cache)

    def _run_ours(self, ids: Sequence[int], max_tokens: int, ban: Any, prompt_cache: list[Any] | None) -> Run:
        """Through the library's own path; its Stats time the run exactly as `timed` does."""
        # A fixed number of tokens: no early end on a loop (random-weight models repeat themselves).
        opts = mlx_local.types.GenerationOptions(max_tokens=max_tokens, temperature=0.0, stop_loops=False)
        store = mlx_local.types.PromptCache() if prompt_cache is not None else None
        settle()
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        start = time.perf_counter()
        stats = None
        generated: list[int] = []
        for chunk in self.model.run(ids, opts, logits_processors=[ban], prompt_cache=store):
            stats = chunk.stats or stats
            generated += chunk.token_ids
        end = time.perf_counter()
        if store is not None:  # the library made the cache; take it back to measure it
            prompt_cache, _ = store.take([*ids, *generated, 0])
        settle_stream_only()
        peak = mx.get_peak_memory()
        assert stats is not None
        return Run(
            prompt_tokens=len(ids),
            generated=stats.generated_tokens,
            ttft=stats.time_to_first_token,
            prompt_tps=stats.prompt_tps,
            decode_tps=stats.decode_tps if stats.generated_tokens > 1 else None,
            total=end - start,
            peak_memory=self.weights + max(0, peak - held),
            run_memory=max(0, peak - held),
            kv_cache_bytes=sum(c.nbytes for c in prompt_cache) if prompt_cache is not None else None,
        )

    def free(self) -> None:
        self.module = self.model = self.tokenizer = None
        gc.collect()
        mx.clear_cache()


def _compute_dtype(module: Any) -> str:
    """The floating-point dtype of the module's norms/scales (what it computes in)."""
    dtypes = [v.dtype for _, v in tree_flatten(module.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    return str(max(set(dtypes), key=dtypes.count)).replace("mlx.core.", "") if dtypes else "?"


def load(system: str, folder: os.PathLike[str] | str) -> tuple[Loaded, float]:
    """Load ``folder`` the way ``system`` does; return it and the seconds it took."""
    start = time.perf_counter()
    if system == "mlx_local":
        model = mlx_local.Model.load(folder, progress=False)
        loaded = (model.module, model.tokenizer, model)
    else:
        import mlx_lm

        module, tokenizer = mlx_lm.load(str(folder))
        if system == "mlx_lm_ours":
            apply_our_settings(module, folder)
        loaded = (module, tokenizer, None)
    seconds = time.perf_counter() - start
    return Loaded(system, *loaded), seconds


def apply_our_settings(module: Any, folder: os.PathLike[str] | str) -> None:
    """What ``Model.load`` does to mlx-lm's module on this runtime: the compute
    dtype it picks (float32 on the CPU, the model's own on a GPU) and, on the
    CPU only, the faster quantized layers."""
    from pathlib import Path

    from mlx_local._loading import model_dtype, read_config

    rt = mlx_local._runtime.current()
    dtype = rt.compute_dtype(model_dtype(read_config(Path(folder))))
    module.set_dtype(getattr(mx, dtype))
    mx.eval(module.parameters())
    if not rt.on_gpu:
        from mlx_local._cpu_kernels import optimize_for_cpu

        optimize_for_cpu(module)
