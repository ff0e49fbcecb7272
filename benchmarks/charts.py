"""The charts of run.py's results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from systems import LABELS, SYSTEMS

COLORS = {"mlx_local": "#1f77b4", "mlx_lm_ours": "#7fb3e0", "mlx_lm": "#d62728", "llama_cpp": "#2ca02c"}
#: peer.py's runners: the native kernel modes and llama.cpp
PEER_COLORS = {"off": "#aec7e8", "exact": "#1f77b4", "int8": "#9467bd", "llama.cpp": "#2ca02c"}
PEER_LABELS = {"off": "mlx_local, pure MLX (native off)", "exact": "mlx_local, native exact (default)",
               "int8": "mlx_local, native int8", "llama.cpp": "llama.cpp (llama-bench, 2 threads)"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(data: dict[str, Any]) -> str:
    d = data["device"]
    blas = f", {d['blas'].split(' (')[0]}" if d["backend"] == "cpu" else ""
    return f"{d['backend']} / {d['processor']} ({d['cpu_count']} cores{blas}), {d['date'][:10]}"


def _bar_label(ax: Any, bars: Any, values: list[float | None], reduced: list[bool]) -> None:
    for b, v, r in zip(bars, values, reduced):
        if v is None:
            continue
        text = f"{v:.3g}" + ("*" if r else "")
        ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")


def tokens_per_second(data: dict[str, Any], path: Path) -> Path:
    """Prompt and decode tokens/s per configuration and system (log scale)."""
    plt = _plt()
    configs = data["configs"]
    systems = [s for s in SYSTEMS if any(s in c["systems"] for c in configs)]
    llama = {r["config"]: r for r in data.get("peer", {}).get("speed", []) if "llama.cpp" in r["by"]}
    columns = systems + (["llama_cpp"] if llama else [])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    width = 0.8 / len(columns)
    names = [c["label"] for c in configs]
    first_len = data["settings"]["lengths"][0]
    for ax, metric in zip(axes, ("prompt_tps", "decode_tps")):
        for i, s in enumerate(columns):
            values, reduced = [], []
            for c in configs:
                if s == "llama_cpp":  # measured by peer.py (llama-bench), interleaved with mlx_local's modes
                    row = llama.get(c["name"])
                    by = row and row["by"]["llama.cpp"]
                    values.append(by and (by["decode_tps"] if metric == "decode_tps" else
                                          by["prompt_tps"].get(str(first_len))))
                    reduced.append(False)
                    continue
                sm = c["systems"].get(s, {}).get("summary")
                if not sm:
                    values.append(None)
                    reduced.append(False)
                    continue
                first = sm["workload"]["runs"][0]
                k = f"prompt{first['prompt']}+gen{first['generate']}"
                values.append(sm["by_prompt"][k][metric])
                reduced.append(bool(sm["workload"]["note"]))
            xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(configs))]
            bars = ax.bar(xs, [v or 0 for v in values], width, color=COLORS[s], label=LABELS[s],
                          hatch=["//" if r else "" for r in reduced] if any(reduced) else None)
            _bar_label(ax, bars, values, reduced)
        if metric == "decode_tps":  # the memory-bandwidth ceiling, for mlx_local's weights
            for j, c in enumerate(configs):
                bound = c.get("bandwidth_bound_decode_tps", {}).get("mlx_local")
                if bound:
                    ax.plot([j - 0.45, j + 0.45], [bound, bound], "k--", lw=1)
            ax.plot([], [], "k--", lw=1, label="bandwidth bound (mlx_local's weights)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(names, fontsize=8, rotation=10)
        ax.set_ylabel("tokens/s (median, log scale)")
        ax.set_title(f"prompt tokens/s ({first_len}-token prompt)" if metric == "prompt_tps"
                     else f"decode tokens/s ({data['settings']['decode_tokens']} tokens)", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.margins(y=0.25)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(_title(data) + "   * = shorter workload (see run.json)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def context_scaling(data: dict[str, Any], path: Path) -> Path:
    """TTFT and memory against prompt length, with the estimate and a 4-bit KV cache."""
    plt = _plt()
    sc = data["scaling"]
    pts = sc["points"]
    n = [p["prompt_tokens"] for p in pts]
    mib = 2**20
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(n, [p["ttft"] for p in pts], "o-", color=COLORS["mlx_local"], label="mlx_local")
    if sc["kv4"]:
        ax1.plot([p["prompt_tokens"] for p in sc["kv4"]], [p["ttft"] for p in sc["kv4"]], "s", color="#ff7f0e",
                 label="4-bit KV cache (mlx-lm kv_bits=4)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("prompt tokens")
    ax1.set_ylabel("time to first token (s)")
    ax1.set_xticks(n)
    ax1.set_xticklabels([str(x) for x in n])
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)

    ax2.plot(n, [p["peak_memory"] / mib for p in pts], "o-", color=COLORS["mlx_local"], label="MLX peak (measured)")
    ax2.plot(n, [p["estimate"]["total"] / mib for p in pts], "x--", color="gray",
             label="mlx_local.estimate_memory()")
    ax2.plot(n, [p["kv_cache_bytes"] / mib for p in pts], "^:", color=COLORS["mlx_local"], label="KV cache")
    if sc["kv4"]:
        k = [p["prompt_tokens"] for p in sc["kv4"]]
        ax2.plot(k, [p["peak_memory"] / mib for p in sc["kv4"]], "s", color="#ff7f0e", label="MLX peak, 4-bit KV cache")
        ax2.plot(k, [p["kv_cache_bytes"] / mib for p in sc["kv4"]], "v", color="#ff7f0e", label="4-bit KV cache")
    ax2.axhline(sc["weights_in_memory"] / mib, color="k", lw=0.8, alpha=0.5)
    ax2.annotate("weights", (n[0], sc["weights_in_memory"] / mib), fontsize=7, va="bottom")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(n)
    ax2.set_xticklabels([str(x) for x in n])
    ax2.set_xlabel("prompt tokens")
    ax2.set_ylabel("MiB")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{sc['label']}, mlx_local: " + _title(data), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def serve_load(data: dict[str, Any], path: Path) -> Path:
    """serve_load.py: total tokens/s, TTFT and latency (p50, p99) per configuration, and decode step cost by rows."""
    plt = _plt()
    configs = data["configs"]
    names = list(configs)
    panels = 3 if data.get("step_ms_by_rows") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    colors = ["#7fb3e0", "#d62728", "#1f77b4"][-len(names):] if len(names) == 3 else ["#7fb3e0", "#1f77b4"]
    ax = axes[0]
    values = [configs[n]["tokens_per_s"] for n in names]
    bars = ax.bar(range(len(names)), values, color=colors)
    _bar_label(ax, bars, values, [False] * len(names))
    ax.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=8)
    ax.set_ylabel("generated tokens/s, all clients")
    ratio = data.get("ratio_batched_vs_one_client")
    ax.set_title(f"throughput (x{ratio:.2f} vs 1 client)" if ratio else "throughput", fontsize=9)
    ax = axes[1]
    width = 0.2
    for j, (key, label) in enumerate([("ttft_p50", "TTFT p50"), ("ttft_p99", "TTFT p99"),
                                      ("latency_p50", "latency p50"), ("latency_p99", "latency p99")]):  # fmt: skip
        vals = [configs[n][key] or 0.0 for n in names]
        ax.bar([i + (j - 1.5) * width for i in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=8)
    ax.set_ylabel("seconds per request (client side)")
    ax.legend(fontsize=7)
    ax.set_title("time to first token and latency", fontsize=9)
    if panels == 3:
        ax = axes[2]
        rows = data["step_ms_by_rows"]
        xs = [int(k) for k in rows]
        ax.plot(xs, [rows[k] for k in rows], "o-", label="ms per decode step")
        ax.plot(xs, [rows[k] / int(k) for k in rows], "s--", label="ms per token")
        ax.set_xticks(xs)
        ax.set_xlabel("sequences decoding together (rows)")
        ax.legend(fontsize=7)
        ax.set_title("what a batch step costs", fontsize=9)
    fig.suptitle(f"serve_load: {data['model']} ({data.get('dtype')}, {data.get('quantization')}), "
                 f"{data['clients']} clients, {data['duration_s']:.0f}s x {data['repeats']}\n{_title(data)}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def peer(data: dict[str, Any], path: Path) -> Path:
    """Decode and prompt tokens/s of the native modes and llama.cpp per 4-bit configuration (peer.py)."""
    plt = _plt()
    rows = data["peer"]["speed"]
    lengths = rows[0]["lengths"] if rows else []
    panels = ["decode"] + [str(n) for n in lengths]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    runners = [w for w in PEER_COLORS if any(w in r["by"] for r in rows)]
    width = 0.8 / max(1, len(runners))
    for ax, panel in zip(axes[0], panels):
        for i, w in enumerate(runners):
            values: list[float | None] = []
            for r in rows:
                by = r["by"].get(w)
                values.append(by and (by["decode_tps"] if panel == "decode" else by["prompt_tps"].get(panel)))
            xs = [j + (i - (len(runners) - 1) / 2) * width for j in range(len(rows))]
            bars = ax.bar(xs, [v or 0 for v in values], width, color=PEER_COLORS[w], label=PEER_LABELS[w])
            _bar_label(ax, bars, values, [False] * len(values))
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["label"] for r in rows], fontsize=8)
        ax.set_ylabel("tokens/s (median of interleaved rounds, log scale)")
        ax.set_title(f"decode tokens/s ({rows[0]['decode_tokens']} tokens)" if panel == "decode"
                     else f"prompt tokens/s ({panel}-token prompt)", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.margins(y=0.25)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"native kernels ({data['peer']['native']}) and llama.cpp: " + _title(data), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
