"""Speed and memory of one configuration under the three systems (see systems.py).

For each model folder:

1. load time: each system loads it ``repeats`` times, interleaved (a, c, b,
   a, c, b, ...); the last loads stay in memory for step 2;
2. a warm-up run per system (``calibrate``), which for mlx-lm's defaults
   doubles as a calibration: its seconds per prompt token and per decoded
   token decide how much of the workload it can do within ``slow_cap``
   seconds a run (``capped``). On the CPU it computes bfloat16/float16 in
   software, 20-40x slower than float32 (MLX's quantized matmul with
   bfloat16 scales: ~0.2 tokens/s on a Qwen3-0.6B-sized model); where it
   is fast (a Mac, or a model stored in float32) it does the whole workload;
3. ``repeats`` rounds, each running every system's workload in turn (the
   order rotates every round): the first prompt length followed by
   ``decode_tokens`` generated tokens (time to first token, prompt and
   decode tokens/s), then the other prompt lengths with one generated token.
   When mlx-lm's defaults had to run a shorter workload, the other two also
   run that same short workload, so there is always a like-for-like number.

Medians over the rounds are reported; every run is kept in the JSON.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import mlx_local  # first: it picks the BLAS before mlx loads

from models import BenchModel, folder_bytes
from systems import LABELS, SYSTEMS, Loaded, Run, load, rss_max, rss_now, settle

EVAL_TEXT = Path(mlx_local.__file__).parent / "data" / "eval_text.txt"


def prompt_ids(tokenizer: Any, n: int) -> list[int]:
    """The first ``n`` tokens of the package's evaluation text (repeated if needed)."""
    ids = list(tokenizer.encode(EVAL_TEXT.read_text(encoding="utf-8"), add_special_tokens=False))
    return (ids * (n // len(ids) + 1))[:n]


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(statistics.median(vals)) if vals else None


class Workload:
    """What one system runs each round: [(prompt length, tokens to generate), ...]."""

    def __init__(self, items: list[tuple[int, int]], note: str = "") -> None:
        self.items = items
        self.note = note  # why it differs from the full workload, if it does

    @staticmethod
    def full(lengths: list[int], decode_tokens: int) -> Workload:
        return Workload([(lengths[0], decode_tokens)] + [(n, 1) for n in lengths[1:]])

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [{"prompt": p, "generate": g} for p, g in self.items], "note": self.note}


def key(prompt: int, generate: int) -> str:
    return f"prompt{prompt}+gen{generate}"


def capped(full: Workload, calib: Run, cap: float, min_prompt: int = 2, short_decode: int = 16) -> Workload:
    """The part of ``full`` a slow system can run in about ``cap`` seconds a run.

    ``calib`` is a short run of that system: it gives seconds per prompt token
    (an upper bound: longer prompts batch better) and per decoded token. The
    prompt lengths that fit in 3/4 of the cap are kept; if none does, a prompt
    of as many tokens as fit in half of it. Decoding keeps its full length if
    it fits in what is left, else drops to at most ``short_decode`` tokens.
    """
    per_prompt = calib.ttft / calib.prompt_tokens
    per_token = 1.0 / calib.decode_tps if calib.decode_tps else per_prompt
    first_len, decode = full.items[0]
    fits = [p for p, _ in full.items if p * per_prompt <= 0.75 * cap]
    first = fits[0] if fits else max(min_prompt, int(0.5 * cap / per_prompt))
    left = cap - first * per_prompt
    gen = decode if decode * per_token <= left else max(3, min(short_decode, decode, int(left / per_token)))
    if first == first_len and gen == decode and len(fits) == len(full.items):
        return full
    items = [(first, gen)] + [(p, 1) for p in fits[1:]]
    done = ", ".join(f"{p}-token prompt" for p, _ in items)
    note = (f"reduced to fit ~{cap:.0f} s a run: {done}, {gen} generated tokens "
            f"(calibration: {per_prompt:.3f} s per prompt token, {per_token:.3f} s per decoded token)")
    return Workload(items, note)


def calibrate(m: Loaded, ids: Callable[[int], list[int]], cap: float) -> Run:
    """A warm-up run that also measures the system's speed: a 2-token prompt
    and 2 tokens, then, if that was quick, a 16-token prompt and 4 tokens
    (a better estimate of how prompts batch)."""
    run = m.run(ids(2), 2)
    if run.total < cap / 20:
        run = m.run(ids(16), 4)
    return run


def bench_config(
    cfg: BenchModel,
    *,
    lengths: list[int],
    decode_tokens: int,
    repeats: int,
    slow_cap: float,
    systems: tuple[str, ...] = SYSTEMS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure one configuration; returns its JSON-ready record."""
    out: dict[str, Any] = {
        "name": cfg.name,
        "label": cfg.label,
        "description": cfg.description,
        "folder": str(cfg.folder),
        "folder_bytes": folder_bytes(cfg.folder),
        "gguf_bytes": folder_bytes(cfg.source_file) if cfg.source_file else None,
        "systems": {},
    }
    res: dict[str, dict[str, Any]] = {s: {"load_seconds": [], "rss_load_delta": [], "runs": {}} for s in systems}

    # 1. load times, interleaved; the last round's models stay loaded.
    loaded: dict[str, Loaded] = {}
    for r in range(repeats):
        for s in systems:
            settle()
            before = rss_now()
            m, seconds = load(s, cfg.folder)
            after = rss_now()
            res[s]["load_seconds"].append(seconds)
            res[s]["rss_load_delta"].append(after - before if after is not None and before is not None else None)
            if r == repeats - 1:
                loaded[s] = m
            else:
                m.free()
                del m
                gc.collect()
        log(f"  load round {r + 1}/{repeats}: " + ", ".join(f"{s} {res[s]['load_seconds'][-1]:.2f} s" for s in systems))

    ids_cache: dict[int, list[int]] = {}

    def ids(n: int) -> list[int]:
        if n not in ids_cache:
            ids_cache[n] = prompt_ids(loaded[systems[0]].tokenizer, n)
        return ids_cache[n]

    # 2. warm-up, and the calibration of any slow system.
    full = Workload.full(lengths, decode_tokens)
    workloads: dict[str, Workload] = {}
    for s in systems:
        t = time.perf_counter()
        calib = calibrate(loaded[s], ids, slow_cap)
        res[s]["warmup"] = calib.as_dict()
        workloads[s] = capped(full, calib, slow_cap) if s == "mlx_lm" else full
        log(f"  warm-up {s}: {time.perf_counter() - t:.1f} s"
            + (f"  [{workloads[s].note}]" if workloads[s].note else ""))
    short = next((w for w in workloads.values() if w.note), None)
    if short is not None:  # like-for-like: everyone also runs the short workload
        for s in systems:
            if not workloads[s].note:
                workloads[s] = Workload(workloads[s].items + [i for i in short.items if i not in workloads[s].items])

    # 3. the measured rounds.
    for r in range(repeats):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for s in order:
            for p, g in workloads[s].items:
                run = loaded[s].run(ids(p), g)
                res[s]["runs"].setdefault(key(p, g), []).append(run.as_dict())
                dec = f", decode {run.decode_tps:.2f} tok/s" if run.decode_tps else ""
                log(f"  round {r + 1}/{repeats} {s:12} prompt {p:5}: TTFT {run.ttft:7.2f} s "
                    f"({run.prompt_tps:7.1f} tok/s){dec}, peak {run.peak_memory / 2**20:6.0f} MiB")

    # Summaries: medians, and the facts needed to judge them.
    for s in systems:
        m = loaded[s]
        summary: dict[str, Any] = {
            "label": LABELS[s],
            "compute_dtype": m.dtype,
            "weights_in_memory": m.weights,
            "bytes_read_per_token": m.bytes_per_token,
            "load_seconds": med(res[s]["load_seconds"]),
            "workload": workloads[s].as_dict(),
            "by_prompt": {},
        }
        for k, runs in res[s]["runs"].items():
            summary["by_prompt"][k] = {
                "prompt_tokens": runs[0]["prompt_tokens"],
                "generated": runs[0]["generated"],
                "ttft": med([x["ttft"] for x in runs]),
                "prompt_tps": med([x["prompt_tps"] for x in runs]),
                "decode_tps": med([x["decode_tps"] for x in runs]),
                "peak_memory": int(med([x["peak_memory"] for x in runs]) or 0),
                "repeats": len(runs),
            }
        first_p, first_g = workloads[s].items[0]
        summary["decode_tps"] = summary["by_prompt"][key(first_p, first_g)]["decode_tps"]
        summary["decode_tokens"] = first_g
        summary["peak_memory"] = max((v["peak_memory"] or 0) for v in summary["by_prompt"].values())
        res[s]["summary"] = summary
    res_rss = {"rss_now": rss_now(), "rss_max": rss_max()}
    for s in systems:
        loaded[s].free()
    loaded.clear()
    gc.collect()
    settle()
    out["systems"] = res
    out["process_rss_with_all_loaded"] = res_rss
    if short is not None:
        out["like_for_like"] = key(*short.items[0])
    return out


# ---------------------------------------------------- MLX's own BLAS (probe)


def probe_main(argv: list[str]) -> None:
    """``speed.py --probe FOLDER PROMPT GENERATE REPEATS``: mlx_local alone, JSON on stdout.

    run.py starts this in a subprocess with ``MLX_LOCAL_BLAS=off`` to show
    what OpenBLAS is worth (the BLAS is chosen once per process).
    """
    import json

    folder, p, g, reps = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    m, seconds = load("mlx_local", folder)
    ids = prompt_ids(m.tokenizer, p)
    m.run(ids[:4], 2)  # warm-up
    runs = [m.run(ids, g).as_dict() for _ in range(reps)]
    print(json.dumps({
        "blas": mlx_local._runtime.current().blas,
        "load_seconds": seconds,
        "prompt_tokens": p,
        "generated": g,
        "ttft": med([r["ttft"] for r in runs]),
        "prompt_tps": med([r["prompt_tps"] for r in runs]),
        "decode_tps": med([r["decode_tps"] for r in runs]),
        "runs": runs,
    }))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2:])
    else:
        sys.exit("usage: speed.py --probe FOLDER PROMPT GENERATE REPEATS (run.py is the benchmark)")
