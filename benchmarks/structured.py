"""What a JSON schema costs: decode tokens/s with and without one, same model, same run.

    .venv/bin/python benchmarks/structured.py [--models smollm2-135m-4bit qwen3-0.6b-shape-4bit]
                                             [--repeats 3] [--max-tokens 96]

For each model (benchmarks/models.py: SmolLM2-135M from the embedded GGUF,
4-bit, the default model; and the random-weight Qwen3-0.6B-shaped 4-bit
model) the same prompt is generated ``--repeats`` rounds, each round once
plain and once constrained to a schema (an array of at least 40 city objects,
so the constrained answer never ends before ``max_tokens``), the order
alternating round by round so that drift and other load on the machine hit
both alike. Greedy decoding, ``stop_loops=False`` (a long list repeats
itself), ``max_tokens`` fixed. Reported: median decode tokens/s per mode and
their ratio (target: at least 0.8x), median time to first token, and the
first constrained call's time to first token, which also converts the
tokenizer for llguidance (once per model).

Writes benchmarks/results/structured.json (with the device it ran on) and
structured.png.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path
from typing import Any

import mlx_local

import models
from common import device, median, write

DEFAULT_MODELS = ["smollm2-135m-4bit", "qwen3-0.6b-shape-4bit"]
PROMPT = "List 50 large cities of the world as a JSON array of objects with their name, country and population."
SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 40,
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["name", "country", "population"],
        "additionalProperties": False,
    },
}
MODES = ("plain", "schema")


def one_run(model: mlx_local.Model, mode: str, max_tokens: int) -> dict[str, Any]:
    """Generate once, plain or with the schema; the stats of the call."""
    schema = SCHEMA if mode == "schema" else None
    start = time.perf_counter()
    result = model.generate(PROMPT, schema=schema, max_tokens=max_tokens, temperature=0.0, stop_loops=False)
    wall = time.perf_counter() - start
    s = result.stats
    return {"mode": mode, "decode_tps": s.decode_tps, "ttft": s.time_to_first_token, "prompt_tokens": s.prompt_tokens,
            "generated_tokens": s.generated_tokens, "finish_reason": result.finish_reason, "seconds": wall,
            "text_start": result.text[:120], "token_ids": list(result.token_ids)}  # fmt: skip


def mask_cost(model: mlx_local.Model, token_ids: list[int]) -> list[float]:
    """Seconds per token of the grammar's logits processor alone, replaying a constrained answer's tokens.

    The processor (the one ``generate(schema=...)`` builds) follows each token and masks a logits row of
    the model's vocabulary size, evaluated; no model forward. Less sensitive to a loaded machine than
    the decode ratio, since it times only the extra work.
    """
    import mlx.core as mx

    _, (processor,) = model.constrain(schema=SCHEMA)
    cfg = model.config.get("text_config") or model.config
    logits = mx.random.normal((1, int(cfg["vocab_size"])), key=mx.random.key(0))
    mx.eval(logits)
    times = []
    for i in range(len(token_ids)):
        last = mx.array([token_ids[i - 1] if i else 0])  # only the last token is read (none on the first call)
        mx.eval(last)
        start = time.perf_counter()
        mx.eval(processor(last, logits))
        times.append(time.perf_counter() - start)
    return times


def bench_model(bm: models.BenchModel, repeats: int, max_tokens: int) -> dict[str, Any]:
    """Load one model, warm it up, then ``repeats`` interleaved rounds of both modes."""
    model = mlx_local.Model.load(bm.folder)
    print(f"\n{bm.label}: {model}")
    model.generate(PROMPT, max_tokens=4, temperature=0.0)  # warm up the plain path
    first = one_run(model, "schema", 8)  # the first constrained call also converts the tokenizer
    print(f"  first constrained call: time to first token {first['ttft']:.2f} s (tokenizer conversion included)")
    runs: list[dict[str, Any]] = []
    answer: list[int] = []
    for i in range(repeats):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            r = one_run(model, mode, max_tokens)
            r["round"] = i + 1
            if mode == "schema":
                answer = r["token_ids"]
            del r["token_ids"]
            runs.append(r)
            print(f"  round {i + 1} {mode:6} decode {r['decode_tps']:6.2f} tok/s  ttft {r['ttft']:5.2f} s  "
                  f"{r['generated_tokens']:4d} tokens [{r['finish_reason']}]  load {os.getloadavg()[0]:.2f}")
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {"decode_tps": median([r["decode_tps"] for r in mine]),
                         "ttft": median([r["ttft"] for r in mine]),
                         "generated_tokens": median([r["generated_tokens"] for r in mine])}  # fmt: skip
    # Per round ratios too: each round ran both modes back to back, so its ratio is the least drift-prone.
    per_round = [
        next(r["decode_tps"] for r in runs if r["round"] == i + 1 and r["mode"] == "schema")
        / next(r["decode_tps"] for r in runs if r["round"] == i + 1 and r["mode"] == "plain")
        for i in range(repeats)
    ]
    ratio = summary["schema"]["decode_tps"] / summary["plain"]["decode_tps"]
    mask = median(mask_cost(model, answer))
    step = 1 / summary["plain"]["decode_tps"]
    print(f"  the mask alone: {mask * 1000:.2f} ms per token, {mask / step:.1%} of a plain decode step "
          f"({step * 1000:.0f} ms)")
    print(f"  median decode: plain {summary['plain']['decode_tps']:.2f}, schema {summary['schema']['decode_tps']:.2f} "
          f"tok/s -> {ratio:.2f}x (per round: {', '.join(f'{x:.2f}' for x in per_round)})")
    del model
    gc.collect()
    return {"name": bm.name, "label": bm.label, "description": bm.description, "runs": runs, "median": summary,
            "decode_ratio": ratio, "decode_ratio_per_round": per_round, "decode_ratio_median_of_rounds":
            median(per_round), "first_constrained_ttft": first["ttft"],
            "mask_seconds_per_token": mask, "mask_fraction_of_plain_step": mask / step}  # fmt: skip


def chart(data: dict[str, Any], path: Path) -> Path | None:
    """Bars: median decode tokens/s per model, plain and with the schema, with their ratio."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = data["models"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    for k, (mode, color, label) in enumerate((("plain", "#7fb3e0", "no schema"), ("schema", "#1f77b4", "JSON schema"))):
        xs = [j + (k - 0.5) * width for j in range(len(rows))]
        vals = [r["median"][mode]["decode_tps"] for r in rows]
        bars = ax.bar(xs, vals, width, color=color, label=label)
        ax.bar_label(bars, [f"{v:.2f}" for v in vals], fontsize=8)
    for j, r in enumerate(rows):
        top = max(r["median"][m]["decode_tps"] for m in MODES)
        ax.annotate(f"{r['decode_ratio']:.2f}x", (j, top * 1.12), ha="center", fontsize=10, weight="bold")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], fontsize=9)
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_ylim(0, max(r["median"][m]["decode_tps"] for r in rows for m in MODES) * 1.3)
    s = data["settings"]
    ax.set_title(f"cost of a JSON schema: {s['repeats']} interleaved rounds, {s['max_tokens']} tokens, target >= 0.8x",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    d = data["device"]
    fig.suptitle(f"{d['backend']} / {d['processor']} ({d['cpu_count']} cores), {d['date'][:10]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="names from benchmarks/models.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()

    load_before = os.getloadavg()
    rows = [bench_model(bm, args.repeats, args.max_tokens) for bm in models.prepare(args.models)]
    data = {
        "benchmark": "structured",
        "device": device(),
        "settings": {**vars(args), "prompt": PROMPT, "schema": SCHEMA, "temperature": 0.0, "stop_loops": False},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "models": rows,
        "target_ratio": 0.8,
    }
    path = write("structured", data)
    png = chart(data, path.with_suffix(".png"))
    print(f"\nwrote {path}" + (f" and {png}" if png else " (no chart: pip install -e '.[bench]' for matplotlib)"))


if __name__ == "__main__":
    main()
