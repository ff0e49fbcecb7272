"""The decode "floor" and long prompts on the CPU: MLX's composed ops against the fused native kernels (issue 14).

    .venv/bin/python benchmarks/floor.py [--models smollm2-135m-4bit qwen3-0.6b-shape-4bit]
                                         [--rounds 30] [--contexts 64 1024] [--prefill 4096] [--tokens 48]

Per model (benchmarks/models.py), with the native matmul kernels on:

- the floor per decoded token: one decode step with every quantized product
  replaced by a near-free stand-in that keeps the data dependency (as the
  prototype measured it), so what remains is norms, RoPE, attention, cache
  updates, residual adds, the argmax and Python; fused kernels off and on,
  and, to split it per op kind, the same step with the norms, the RoPE or
  the attention replaced by the identity (their share is the difference);
  plus the time Python takes to build the step's graph;
- the whole decode step with the real kernels, fused off and on;
- decode tokens/s through mlx-lm's generate_step (what mlx_local runs);
- ``--prefill N`` (SmolLM2 only): an N-token prompt through generate_step to
  the first token, fused off and on, with peak memory; and the attention
  alone at that prompt's shapes (mlx-lm prefills 2048 tokens a chunk).

Every mode has its own KV cache; the modes take turns step by step (A B A B
...) and the medians are reported, so load on the shared machine hits all
alike. Writes benchmarks/results/floor.json.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import mlx_local

import models
from common import device, median, write

DEFAULT_MODELS = ["smollm2-135m-4bit", "qwen3-0.6b-shape-4bit"]
# ablations of a floor step: what is replaced by the identity
ABLATIONS = ("none", "norms", "rope", "attention", "all")


@contextmanager
def _patched(fused: bool, null_matmuls: bool, ablate: str, model_module: Any) -> Iterator[None]:
    """Run with the fused kernels on or off, the matmuls nulled or not, one op kind replaced by the identity."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_local import _cpu_fused, _cpu_kernels

    saved: list[tuple[Any, str, Any]] = []

    def put(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def null_qmm(x: mx.array, layer: Any) -> mx.array:  # keeps the dependency on x at ~no cost
        n = layer.weight.shape[0]
        return mx.broadcast_to(x[..., :1], (*x.shape[:-1], n)) * 0.0

    previous = _cpu_fused.set_fused(fused)
    try:
        if null_matmuls:
            put(_cpu_kernels, "_qmm", null_qmm)
        if ablate in ("norms", "all"):
            for cls in (nn.RMSNorm, _cpu_fused.CPURMSNorm):
                put(cls, "__call__", lambda self, x: x)
        if ablate in ("rope", "all"):
            for cls in (nn.RoPE, _cpu_fused.CPURoPE):
                put(cls, "__call__", lambda self, x, offset=0: x)
        if ablate in ("attention", "all"):
            put(model_module, "scaled_dot_product_attention", lambda q, k, v, cache, scale, mask, sinks=None: q)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        _cpu_fused.set_fused(previous)


def _interleaved(modes: dict[str, dict[str, Any]], model: mlx_local.Model, context: int, rounds: int) -> dict[str, Any]:
    """Median decode-step time (and graph-building time) per mode, each with its own cache, taking turns."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    module = model.module
    model_module = sys.modules[type(module).__module__]
    prompt = mx.array([[(i * 7919) % 20000 + 100 for i in range(context)]])
    caches = {}
    for name in modes:
        cache = make_prompt_cache(module)
        for i in range(0, context, 512):
            mx.eval(module(prompt[:, i : i + 512], cache=cache))
        caches[name] = cache
    token = mx.array([[42]])
    steps: dict[str, list[float]] = {name: [] for name in modes}
    builds: dict[str, list[float]] = {name: [] for name in modes}
    cpus: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(rounds + 2):
        for name, how in modes.items():
            with _patched(model_module=model_module, **how):
                c0, t0 = time.process_time(), time.perf_counter()
                logits = module(token, cache=caches[name])
                y = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
                t1 = time.perf_counter()
                mx.eval(y)
                t2, c2 = time.perf_counter(), time.process_time()
            if r >= 2:  # warm-up
                steps[name].append(t2 - t0)
                builds[name].append(t1 - t0)
                cpus[name].append(c2 - c0)
    return {
        name: {"step_ms": median(steps[name]) * 1e3, "build_ms": median(builds[name]) * 1e3, "cpu_ms": median(cpus[name]) * 1e3}
        for name in modes
    }


def floor(model: mlx_local.Model, context: int, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    for fused in (False, True):
        tag = "fused" if fused else "mlx"
        modes[f"step/{tag}"] = {"fused": fused, "null_matmuls": False, "ablate": "none"}
        for ablate in ABLATIONS:
            modes[f"floor/{tag}/{ablate}"] = {"fused": fused, "null_matmuls": True, "ablate": ablate}
    t = _interleaved(modes, model, context, rounds)
    out: dict[str, Any] = {"context": context, "rounds": rounds, "modes": t}
    for tag in ("mlx", "fused"):
        base = t[f"floor/{tag}/none"]["step_ms"]
        out[tag] = {
            "step_ms": t[f"step/{tag}"]["step_ms"],
            "floor_ms": base,
            "matmuls_ms": t[f"step/{tag}"]["step_ms"] - base,
            "python_build_ms": t[f"floor/{tag}/none"]["build_ms"],
            **{f"{k}_ms": base - t[f"floor/{tag}/{k}"]["step_ms"] for k in ("norms", "rope", "attention")},
            "rest_ms": t[f"floor/{tag}/all"]["step_ms"],
            # CPU time of this process (all its threads) per step: less sensitive to other load than
            # wall time, but it counts the pool's spinning (real steps) and misses no waiting
            "floor_cpu_ms": t[f"floor/{tag}/none"]["cpu_ms"],
            **{f"{k}_cpu_ms": t[f"floor/{tag}/none"]["cpu_ms"] - t[f"floor/{tag}/{k}"]["cpu_ms"] for k in ("norms", "rope", "attention")},
            "rest_cpu_ms": t[f"floor/{tag}/all"]["cpu_ms"],
        }
    out["floor_ratio"] = out["mlx"]["floor_ms"] / out["fused"]["floor_ms"]
    out["floor_cpu_ratio"] = out["mlx"]["floor_cpu_ms"] / out["fused"]["floor_cpu_ms"]
    out["step_ratio"] = out["mlx"]["step_ms"] / out["fused"]["step_ms"]
    for tag in ("mlx", "fused"):
        o = out[tag]
        log(f"  ctx {context:5d} {tag:5s}: step {o['step_ms']:6.1f} ms, floor {o['floor_ms']:6.1f} ms "
            f"(norms {o['norms_ms']:5.1f}, rope {o['rope_ms']:5.1f}, attention {o['attention_ms']:5.1f}, "
            f"rest {o['rest_ms']:5.1f} of which Python graph {o['python_build_ms']:4.1f}); "
            f"CPU floor {o['floor_cpu_ms']:6.1f} ms (norms {o['norms_cpu_ms']:5.1f}, rope {o['rope_cpu_ms']:5.1f}, "
            f"attention {o['attention_cpu_ms']:5.1f}, rest {o['rest_cpu_ms']:5.1f})")  # fmt: skip
    log(f"  ctx {context:5d} floor {out['floor_ratio']:.2f}x lower (CPU time {out['floor_cpu_ratio']:.2f}x), "
        f"step {out['step_ratio']:.2f}x faster")
    return out


def decode_tps(model: mlx_local.Model, tokens: int, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Tokens/s of mlx-lm's generate_step (prompt excluded), fused off and on in alternating blocks."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from mlx_local import _cpu_fused

    tps: dict[str, list[float]] = {"mlx": [], "fused": []}
    prompt = mx.array(model.tokenizer.encode("Write a short story about a lighthouse keeper."), dtype=mx.uint32)
    for r in range(rounds):
        for tag in (("mlx", "fused") if r % 2 == 0 else ("fused", "mlx")):
            previous = _cpu_fused.set_fused(tag == "fused")
            try:
                steps = generate_step(prompt, model.module, max_tokens=tokens + 2)
                next(steps)
                next(steps)
                t0 = time.perf_counter()
                n = sum(1 for _ in steps)
                tps[tag].append(n / (time.perf_counter() - t0))
            finally:
                _cpu_fused.set_fused(previous)
    out = {tag: median(v) for tag, v in tps.items()}
    out["ratio"] = out["fused"] / out["mlx"]
    log(f"  decode {out['mlx']:.1f} -> {out['fused']:.1f} tok/s ({out['ratio']:.2f}x)")
    return out


def attention_alone(n: int, model: mlx_local.Model, log: Callable[[str], None]) -> dict[str, Any]:
    """The attention of an n-token prefill at the model's shapes (chunks of 2048, as mlx-lm), all layers."""
    import mlx.core as mx

    from mlx_local import _cpu_fused

    cfg = model.config
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // hq
    layers = cfg["num_hidden_layers"]
    out: dict[str, Any] = {}
    for tag in ("mlx", "fused"):
        previous = _cpu_fused.set_fused(tag == "fused")
        try:
            total = 0.0
            for start in range(0, n, 2048):
                lq = min(2048, n - start)
                q = mx.random.normal((1, hq, lq, d), key=mx.random.key(1))
                k = mx.random.normal((1, hkv, start + lq, d), key=mx.random.key(2))
                v = mx.random.normal((1, hkv, start + lq, d), key=mx.random.key(3))
                mx.eval(q, k, v)
                mx.clear_cache()
                t0 = time.perf_counter()
                mx.eval(_cpu_fused.scaled_dot_product_attention(q, k, v, cache=None, scale=d**-0.5, mask="causal"))
                total += time.perf_counter() - t0
            out[tag] = total * layers  # one layer timed, all layers alike
        finally:
            _cpu_fused.set_fused(previous)
    out["ratio"] = out["mlx"] / out["fused"]
    log(f"  attention of a {n}-token prefill ({layers} layers): {out['mlx']:.1f} -> {out['fused']:.1f} s ({out['ratio']:.1f}x)")
    return out


def prefill(n: int, model: mlx_local.Model, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Time to the first token of an n-token prompt through generate_step, and peak memory, fused off and on."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from mlx_local import _cpu_fused

    ids = mx.array([(i * 7919) % 40000 + 100 for i in range(n)], dtype=mx.uint32)
    res: dict[str, dict[str, list[float]]] = {tag: {"seconds": [], "peak_bytes": []} for tag in ("mlx", "fused")}
    for r in range(rounds):
        for tag in (("mlx", "fused") if r % 2 == 0 else ("fused", "mlx")):
            previous = _cpu_fused.set_fused(tag == "fused")
            try:
                gc.collect()
                mx.clear_cache()
                mx.reset_peak_memory()
                t0 = time.perf_counter()
                steps = generate_step(ids, model.module, max_tokens=1)
                next(steps)
                res[tag]["seconds"].append(time.perf_counter() - t0)
                res[tag]["peak_bytes"].append(mx.get_peak_memory())
                steps.close()
            finally:
                _cpu_fused.set_fused(previous)
            log(f"  prefill {n} {tag}: {res[tag]['seconds'][-1]:.1f} s, peak {res[tag]['peak_bytes'][-1] / 1e6:.0f} MB")
    out: dict[str, Any] = {tag: {k: median(v) for k, v in d.items()} for tag, d in res.items()}
    out["ratio"] = out["mlx"]["seconds"] / out["fused"]["seconds"]
    log(f"  prefill {n}: {out['mlx']['seconds']:.1f} -> {out['fused']['seconds']:.1f} s ({out['ratio']:.2f}x), "
        f"peak {out['mlx']['peak_bytes'] / 1e6:.0f} -> {out['fused']['peak_bytes'] / 1e6:.0f} MB")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--rounds", type=int, default=30, help="decode steps per mode (medians)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[64, 1024], help="KV cache lengths of the floor")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per generate_step run")
    parser.add_argument("--decode-rounds", type=int, default=4)
    parser.add_argument("--prefill", type=int, default=4096, help="prompt length for SmolLM2's prefill (0: skip)")
    parser.add_argument("--prefill-rounds", type=int, default=1)
    args = parser.parse_args()

    from mlx_local import _cpu_fused, _cpu_kernels

    results: dict[str, Any] = {"device": device(), "native": _cpu_kernels.native_status(), "models": {}}
    benches = models.prepare(args.models)
    for bench in benches:  # the decode floor and speed of each model first, the long prefill last
        print(f"{bench.label}:", flush=True)
        model = mlx_local.Model.load(bench.folder)
        if not _cpu_fused.fused_on():
            sys.exit(f"the fused kernels are not on ({_cpu_kernels.native_status()}): nothing to compare")
        r: dict[str, Any] = {"floor": [floor(model, c, args.rounds, lambda s: print(s, flush=True)) for c in args.contexts]}
        r["decode_tps"] = decode_tps(model, args.tokens, args.decode_rounds, lambda s: print(s, flush=True))
        results["models"][bench.name] = r
        del model
        gc.collect()
        path = write("floor", results)
    for bench in benches:
        if args.prefill and bench.name.startswith("smollm2"):
            print(f"{bench.label}:", flush=True)
            model = mlx_local.Model.load(bench.folder)
            r = results["models"][bench.name]
            r["attention_alone"] = attention_alone(args.prefill, model, lambda s: print(s, flush=True))
            r["prefill"] = prefill(args.prefill, model, args.prefill_rounds, lambda s: print(s, flush=True))
            del model
            gc.collect()
            path = write("floor", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
