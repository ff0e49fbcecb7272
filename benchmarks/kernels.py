"""Quantized matmul on the CPU, per layer and per row count: the native kernel
(exact and int8) against dequantize + BLAS and ``mx.quantized_matmul``; and
the whole-model prefill of a chat turn (a short prompt after a cached context).

    .venv/bin/python benchmarks/kernels.py layers [--bits 4 8 5] [--rows 1 2 4 ...] [--baseline DIR]
    .venv/bin/python benchmarks/kernels.py turns --trees /work/main . [--new 20 60] [--context 300]

``layers`` times every projection shape of SmolLM2-135M and of Qwen3-0.6B
(random weights, float32 scales and activations, as the loaded models have
them), the methods interleaved (A B C A B C ...), medians of ``--repeats``;
``--baseline DIR`` adds the native kernel of another build folder (e.g. a copy
of an older ``mlx_local/_native_lib``) as ``native_before``. Writes
benchmarks/results/kernels.json.

``turns`` prefills a 300-token context into a KV cache, then times the first
token of a 20- and a 60-token prompt after it (the cache trimmed back each
time), on SmolLM2 4-bit and the Qwen3-0.6B-shaped 4-bit model
(benchmarks/models.py), once per source tree given, in subprocesses that
alternate between the trees. Writes benchmarks/results/prefill_turn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx

from common import device, median, write

#: (model, layer, in_features K, out_features N); lm_head only matters for one row
#: (mlx-lm's prefill evaluates the cache, not the logits, of all but the last token).
SHAPES = [
    ("smollm2-135m", "q/o_proj", 576, 576),
    ("smollm2-135m", "k/v_proj", 576, 192),
    ("smollm2-135m", "gate/up_proj", 576, 1536),
    ("smollm2-135m", "down_proj", 1536, 576),
    ("smollm2-135m", "lm_head", 576, 49152),
    ("qwen3-0.6b", "q_proj", 1024, 2048),
    ("qwen3-0.6b", "k/v_proj", 1024, 1024),
    ("qwen3-0.6b", "o_proj", 2048, 1024),
    ("qwen3-0.6b", "gate/up_proj", 1024, 3072),
    ("qwen3-0.6b", "down_proj", 3072, 1024),
    ("qwen3-0.6b", "lm_head", 1024, 151936),
]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 512]
#: mx.quantized_matmul runs about 1 G multiply-adds/s here: skip it beyond this many.
QMM_MAX_MACS = 1.5e8


def _peaks(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """MB that each fn allocates at its peak beyond what is already held (its output included)."""
    out = {}
    for name, fn in fns.items():
        mx.clear_cache()
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(fn())
        out[name] = round((mx.get_peak_memory() - held) / 1e6, 3)
    return out


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn, the fns interleaved round by round."""
    for fn in fns.values():  # warm up, and size the inner loops to ~20 ms
        mx.eval(fn())
    inner = {}
    for name, fn in fns.items():
        t = time.perf_counter()
        mx.eval(fn())
        inner[name] = max(1, min(200, int(0.02 / max(time.perf_counter() - t, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner[name]):
                mx.eval(fn())
            samples[name].append((time.perf_counter() - t) / inner[name])
    return {name: median(s) for name, s in samples.items()}


def _methods(ext: Any, before: Any, x: mx.array, qsb: tuple[mx.array, mx.array, mx.array], gs: int,
             bits: int) -> dict[str, Callable[[], Any]]:
    """The ways to compute x @ W.T that are timed for one layer and row count."""
    q, s, b = qsb
    rows, k = x.shape
    fns: dict[str, Callable[[], Any]] = {
        "native": lambda: ext.quantized_matmul(x, q, s, b, gs, bits, "f32"),
        "native_int8": lambda: ext.quantized_matmul(x, q, s, b, gs, bits, "int8"),
        "dequant_blas": lambda: x @ mx.dequantize(q, s, b, group_size=gs, bits=bits).T,
    }
    if before is not None:
        fns["native_before"] = lambda: before.quantized_matmul(x, q, s, b, gs, bits, "f32")
    if rows * k * q.shape[0] <= QMM_MAX_MACS:
        fns["quantized_matmul"] = lambda: mx.quantized_matmul(x, q, s, b, group_size=gs, bits=bits)
    return fns


def layers(args: argparse.Namespace) -> None:
    from mlx_local import _native

    ext = _native.load().module
    if ext is None:
        sys.exit(f"the native kernels are not loaded: {_native.load().reason}")
    before = _native.probe(args.baseline).module if args.baseline else None
    if args.baseline and before is None:
        sys.exit(f"the baseline kernels did not load: {_native.probe(args.baseline).reason}")
    results = []
    for bits in args.bits:
        for model, layer, k, n in SHAPES:
            if args.models and not any(model.startswith(m) for m in args.models):
                continue
            gs = args.group_size
            q, s, b = mx.quantize(mx.random.normal((n, k), key=mx.random.key(k + n)) * 0.02, group_size=gs, bits=bits)
            mx.eval(q, s, b)
            for rows in args.rows:
                if layer == "lm_head" and rows > 8:
                    continue
                x = mx.random.normal((rows, k), key=mx.random.key(rows))
                mx.eval(x)
                fns = _methods(ext, before, x, (q, s, b), gs, bits)
                t = _time(fns, args.repeats)
                row = {"model": model, "layer": layer, "K": k, "N": n, "bits": bits, "group_size": gs, "rows": rows,
                       "ms": {name: round(v * 1e3, 4) for name, v in t.items()}, "peak_mb": _peaks(fns)}
                results.append(row)
                ratios = "  ".join(f"{name}/native {v / t['native']:6.2f}" for name, v in t.items() if name != "native")
                print(f"{bits}b {model:13} {layer:13} {rows:4} rows  native {t['native'] * 1e3:8.3f} ms  {ratios}",
                      flush=True)
    out = {"device": device(), "threads": int(ext.num_threads()), "repeats": args.repeats, "results": results}
    if args.output:
        print("wrote", write(args.output, out))


# ------------------------------------------------------------------ chat turns

TURN_MODELS = ("smollm2-135m-4bit", "qwen3-0.6b-shape-4bit")


def turn(args: argparse.Namespace) -> None:
    """In this process (its tree first on sys.path): first-token seconds of each new prompt length."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    import mlx_local

    import models

    (bench,) = models.prepare([args.model], log=lambda s: print(s, file=sys.stderr))
    model = mlx_local.Model.load(bench.folder, progress=False)
    vocab = 1000  # ordinary token ids: the content does not change the cost
    context = mx.array([(i * 7919) % vocab + 100 for i in range(args.context)])
    cache = make_prompt_cache(model.module)
    for _ in generate_step(context, model.module, max_tokens=1, prompt_cache=cache):
        pass
    base = cache[0].offset
    out: dict[str, list[float]] = {str(n): [] for n in args.new}
    cpu: dict[str, list[float]] = {str(n): [] for n in args.new}
    peak: dict[str, float] = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for n in args.new:
            prompt = mx.array([(i * 104729 + r) % vocab + 100 for i in range(n)])
            mx.clear_cache()
            held = mx.get_active_memory()
            mx.reset_peak_memory()
            start, start_cpu = time.perf_counter(), time.process_time()
            for token, _ in generate_step(prompt, model.module, max_tokens=1, prompt_cache=cache):
                mx.eval(token)
            if r:
                out[str(n)].append(time.perf_counter() - start)
                cpu[str(n)].append(time.process_time() - start_cpu)  # all threads: load-independent work
                peak[str(n)] = round((mx.get_peak_memory() - held) / 1e6, 1)
            trim_prompt_cache(cache, cache[0].offset - base)
    from mlx_local import _cpu_kernels

    print(json.dumps({"model": args.model, "kernels": _cpu_kernels.native_status(), "seconds": out,
                      "cpu_seconds": cpu, "peak_mb": peak}))


def turns(args: argparse.Namespace) -> None:
    """Alternate subprocesses over the trees and models; medians per tree, model and prompt length."""
    here = Path(__file__).resolve().parent
    trees = [str(Path(t).resolve()) for t in args.trees]
    samples: dict[str, dict[str, dict[str, list[float]]]] = {t: {m: {} for m in args.turn_models} for t in trees}
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {t: {m: {} for m in args.turn_models} for t in trees}
    peaks: dict[str, dict[str, dict[str, float]]] = {t: {} for t in trees}
    for round_ in range(args.rounds):
        for model in args.turn_models:
            for tree in trees:
                cmd = [sys.executable, str(here / "kernels.py"), "turn", "--model", model, "--context", str(args.context),
                       "--repeats", str(args.repeats), "--new", *map(str, args.new)]
                env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{here}"}
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                if res.returncode != 0:
                    sys.exit(f"{tree} {model}: {res.stderr[-2000:]}")
                got = json.loads(res.stdout.strip().splitlines()[-1])
                for n, xs in got["seconds"].items():
                    samples[tree][model].setdefault(n, []).extend(xs)
                for n, xs in got["cpu_seconds"].items():
                    cpu[tree][model].setdefault(n, []).extend(xs)
                peaks[tree][model] = got["peak_mb"]
                meds = {n: round(median(xs), 3) for n, xs in got["seconds"].items()}
                cpus = {n: round(median(xs), 3) for n, xs in got["cpu_seconds"].items()}
                print(f"round {round_} {model:22} {tree:20} first token s: {meds}  cpu s: {cpus}  peak MB: {got['peak_mb']}",
                      flush=True)
    table = {t: {m: {n: round(median(xs), 4) for n, xs in d.items()} for m, d in per.items()} for t, per in samples.items()}
    for model in args.turn_models:
        for n in map(str, args.new):
            cells = "  ".join(f"{Path(t).name}: {table[t][model][n]:.3f} s" for t in trees)
            print(f"{model:22} {n:>3} new tokens after {args.context}: {cells}")
    cpu_table = {t: {m: {n: round(median(xs), 4) for n, xs in d.items()} for m, d in per.items()} for t, per in cpu.items()}
    out = {"device": device(), "load_average": os.getloadavg(), "context": args.context, "trees": trees,
           "median_seconds": table, "median_cpu_seconds": cpu_table, "peak_mb": peaks, "samples": samples}
    print("wrote", write(args.output, out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    la = sub.add_parser("layers")
    la.add_argument("--bits", type=int, nargs="+", default=[4])
    la.add_argument("--group-size", type=int, default=64)
    la.add_argument("--rows", type=int, nargs="+", default=ROWS)
    la.add_argument("--models", nargs="*", default=None, help="smollm2 and/or qwen3 (default both)")
    la.add_argument("--repeats", type=int, default=5)
    la.add_argument("--baseline", default=None, help="another native build folder, timed as native_before")
    la.add_argument("--output", default="kernels", help="results file name ('' for none)")
    tu = sub.add_parser("turn")
    tu.add_argument("--model", choices=TURN_MODELS, required=True)
    tu.add_argument("--context", type=int, default=300)
    tu.add_argument("--new", type=int, nargs="+", default=[20, 60])
    tu.add_argument("--repeats", type=int, default=5)
    ts = sub.add_parser("turns")
    ts.add_argument("--trees", nargs="+", required=True, help="source trees to compare (each first on PYTHONPATH)")
    ts.add_argument("--turn-models", nargs="+", default=list(TURN_MODELS), choices=TURN_MODELS)
    ts.add_argument("--context", type=int, default=300)
    ts.add_argument("--new", type=int, nargs="+", default=[20, 60])
    ts.add_argument("--repeats", type=int, default=3)
    ts.add_argument("--rounds", type=int, default=2)
    ts.add_argument("--output", default="prefill_turn")
    args = ap.parse_args()
    {"layers": layers, "turn": turn, "turns": turns}[args.cmd](args)


if __name__ == "__main__":
    main()
