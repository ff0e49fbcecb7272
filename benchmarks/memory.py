"""Memory: the machine's bandwidth, and how time and memory grow with the prompt.

- ``bandwidth()``: a streaming read (numpy sum over a large array, best of
  several) in GB/s. Decoding one token reads every weight once, so
  bandwidth / bytes read per token is the fastest decode the memory allows.
- ``scaling()``: mlx_local on one model as the prompt grows: time to first
  token, MLX's peak memory, the KV cache's size, and next to them what
  ``mlx_local.estimate_memory`` predicted for that context.
- ``kv_quantized()``: the same prompts with mlx-lm's 4-bit KV cache
  (``generate_step(kv_bits=4, kv_group_size=64, quantized_kv_start=0)``).
  ``mlx_local``'s ``generate_tokens`` does not take these arguments (it
  takes a ``prompt_cache``, not a cache policy), so this runs mlx-lm's
  ``generate_step`` directly on the module mlx_local loaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import mlx_local  # first: it picks the BLAS before mlx loads

from speed import med, prompt_ids
from systems import Loaded, load, settle


def bandwidth(size_bytes: int = 2**30, repeats: int = 5) -> dict[str, Any]:
    """Streaming read bandwidth: numpy sum over ``size_bytes`` of float64, best of ``repeats``."""
    import numpy as np

    a = np.ones(size_bytes // 8, dtype=np.float64)
    a.sum()  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    del a
    return {
        "method": f"numpy float64 sum over {size_bytes / 2**30:.2f} GiB, best of {repeats} (one thread)",
        "bytes": size_bytes,
        "seconds": best,
        "gb_per_s": size_bytes / best / 1e9,
    }


def scaling(folder: Path, *, label: str, lengths: list[int], generate: int, repeats: int, kv_lengths: list[int],
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """TTFT, peak memory and KV cache size against prompt length (mlx_local),
    plus the same with a 4-bit KV cache at ``kv_lengths``."""
    from mlx_lm.models.cache import make_prompt_cache

    m, _ = load("mlx_local", folder)
    m.run(prompt_ids(m.tokenizer, 4), 2)  # warm-up
    out: dict[str, Any] = {
        "label": label,
        "model": repr(m.model),
        "folder": str(folder),
        "generate": generate,
        "repeats": repeats,
        "weights_in_memory": m.weights,
        "points": [],
        "kv4": [],
    }
    for n in lengths:
        est = mlx_local.estimate_memory(folder, context=n + generate)
        ids = prompt_ids(m.tokenizer, n)
        runs = []
        for _ in range(repeats):
            # An empty cache handed in (the library's `prompt_cache` argument), so its size can be read after.
            runs.append(m.run(ids, generate, prompt_cache=make_prompt_cache(m.module)))
        point = {
            "prompt_tokens": n,
            "ttft": med([r.ttft for r in runs]),
            "prompt_tps": med([r.prompt_tps for r in runs]),
            "decode_tps": med([r.decode_tps for r in runs]),
            "peak_memory": int(med([r.peak_memory for r in runs]) or 0),
            "kv_cache_bytes": runs[-1].kv_cache_bytes,
            "estimate": {"total": est.total, "weights": est.weights, "kv_cache": est.kv_cache,
                         "overhead": est.overhead, "context": est.context},
            "runs": [r.as_dict() for r in runs],
        }
        out["points"].append(point)
        log(f"  prompt {n:5}: TTFT {point['ttft']:7.2f} s, peak {point['peak_memory'] / 2**20:6.0f} MiB "
            f"(estimate {est.total / 2**20:6.0f} MiB), KV cache {point['kv_cache_bytes'] / 2**20:6.1f} MiB")
    out["kv4"] = kv_quantized(m, kv_lengths, generate=generate, repeats=repeats, log=log)
    m.free()
    settle()
    return out


def kv_quantized(m: Loaded, lengths: list[int], *, generate: int, repeats: int,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """mlx-lm's quantized KV cache on mlx_local's module, via generate_step."""
    from mlx_lm.models.cache import make_prompt_cache

    settings = {"kv_bits": 4, "kv_group_size": 64, "quantized_kv_start": 0}
    # Run the module through mlx-lm's generate_step, as system (c) does.
    raw = Loaded("mlx_lm_ours", m.module, m.tokenizer)
    points = []
    for n in lengths:
        ids = prompt_ids(m.tokenizer, n)
        runs = [raw.run(ids, generate, prompt_cache=make_prompt_cache(m.module), **settings) for _ in range(repeats)]
        point = {
            "prompt_tokens": n,
            "settings": settings,
            "ttft": med([r.ttft for r in runs]),
            "decode_tps": med([r.decode_tps for r in runs]),
            "peak_memory": int(med([r.peak_memory for r in runs]) or 0),
            "kv_cache_bytes": runs[-1].kv_cache_bytes,
            "runs": [r.as_dict() for r in runs],
        }
        points.append(point)
        log(f"  prompt {n:5}, 4-bit KV cache: TTFT {point['ttft']:7.2f} s, peak {point['peak_memory'] / 2**20:6.0f} MiB, "
            f"KV cache {point['kv_cache_bytes'] / 2**20:6.1f} MiB")
    return points
