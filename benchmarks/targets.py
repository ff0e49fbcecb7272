"""Issue 14's targets, checked against one run's measurements (peer.py's records).

Every target is a ratio or a time measured in the same run, so the load of
the machine cancels out where it can: "today" is mlx_local's pure-MLX path
(native mode ``off``), measured interleaved with the native kernels.
"""

from __future__ import annotations

from typing import Any

#: (name, what it measures, threshold, "min" (measured >= threshold) or "max" (measured <= threshold))
TARGETS = (
    ("decode_smollm2", "decode, SmolLM2-135M 4-bit: native {mode} / off", 3.0, "min"),
    ("decode_qwen3", "decode, Qwen3-0.6B-shaped 4-bit: native {mode} / off", 5.0, "min"),
    ("decode_vs_llama_smollm2", "decode, SmolLM2-135M 4-bit: native {mode} / llama.cpp on the same GGUF", 0.5, "min"),
    ("decode_vs_llama_qwen3", "decode, Qwen3-0.6B shape: native {mode} / llama.cpp on its Q4_0 GGUF", 0.5, "min"),
    ("chat_ttft", "chat turn of ~20 tokens after a cached conversation, 0.5B-class model: TTFT s ({mode})", 1.0, "max"),
    ("prefill_long", "{n}-token prefill, SmolLM2-135M 4-bit: speed-up of {mode} over off", 3.0, "min"),
    ("peak_memory", "peak memory (MLX), {mode} / off", 1.0, "max"),
    ("int8_kl", "int8 mode: mean KL against off on the evaluation text, {config}", 0.01, "max"),
    ("exact_greedy", "exact mode: greedy tokens identical to off, {config}", 1.0, "min"),
)


def _row(name: str, what: str, value: float | None, threshold: float, sense: str, **info: Any) -> dict[str, Any]:
    ok = None if value is None else (value >= threshold if sense == "min" else value <= threshold)
    return {"target": name, "what": what, "measured": value, "threshold": threshold,
            "sense": ">=" if sense == "min" else "<=", "pass": ok, **info}


def check(peer: dict[str, Any]) -> list[dict[str, Any]]:
    """The target table from run.json's ``peer`` section (missing measurements give ``measured: None``)."""
    spec = {t[0]: t[1:] for t in TARGETS}
    rows: list[dict[str, Any]] = []
    speed = {r["config"]: r for r in peer.get("speed", [])}
    for cfg, suffix in (("smollm2-135m-4bit", "smollm2"), ("qwen3-0.6b-shape-4bit", "qwen3")):
        r = speed.get(cfg)
        for md in ("exact", "int8"):
            what, thr, sense = spec[f"decode_{suffix}"]
            rows.append(_row(f"decode_{suffix}", what.format(mode=md), r and r["ratios"].get(f"{md}/off decode"),
                             thr, sense, mode=md))
        for md in ("exact", "int8"):
            what, thr, sense = spec[f"decode_vs_llama_{suffix}"]
            rows.append(_row(f"decode_vs_llama_{suffix}", what.format(mode=md),
                             r and r["ratios"].get(f"{md}/llama.cpp decode"), thr, sense, mode=md))
    chat = peer.get("chat")
    if chat:
        what, thr, sense = spec["chat_ttft"]
        md = chat["default_mode"]
        rows.append(_row("chat_ttft", what.format(mode=md), chat["ttft"].get(md), thr, sense, mode=md,
                         baseline_off=chat["ttft"].get("off"), config=chat["config"]))
    lp = peer.get("long_prefill")
    if lp:
        what, thr, sense = spec["prefill_long"]
        md, by = lp["default_mode"], lp["by"]
        sp = by["off"]["ttft"] / by[md]["ttft"] if md in by and by[md]["ttft"] else None
        rows.append(_row("prefill_long", what.format(n=lp["prompt_tokens"], mode=md), sp, thr, sense, mode=md))
    # Peak memory: each mode against off on the same workload (the decode/prompt rounds, the long prefill);
    # a difference below 1 MiB is the allocator's noise, not memory the kernels use.
    what, thr, sense = spec["peak_memory"]
    pairs = [(r["config"] + ", decode and prompt rounds", r["by"]) for r in speed.values()]
    if lp:
        pairs.append((f"{lp['config']}, {lp['prompt_tokens']}-token prefill", lp["by"]))
    for where, by in pairs:
        off = (by.get("off") or {}).get("peak_memory")
        for md in ("exact", "int8"):
            mine = (by.get(md) or {}).get("peak_memory")
            ratio = None if not (mine and off) else (1.0 if abs(mine - off) < 2**20 else mine / off)
            rows.append(_row("peak_memory", what.format(mode=md) + f", {where}", ratio, thr, sense, mode=md,
                             bytes=mine, off_bytes=off))
    for q in peer.get("quality", []):
        if "int8_vs_off" not in q:
            continue
        what, thr, sense = spec["int8_kl"]
        rows.append(_row("int8_kl", what.format(config=q["config"]), q["int8_vs_off"]["mean_kl"], thr, sense,
                         top1_agreement=q["int8_vs_off"]["top1_agreement"], config=q["config"]))
        what, thr, sense = spec["exact_greedy"]
        rows.append(_row("exact_greedy", what.format(config=q["config"]),
                         1.0 if q["greedy"]["exact_identical_to_off"] else 0.0, thr, sense, config=q["config"],
                         first_difference=q["greedy"]["exact_first_difference"]))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as printed at the end of run.py."""
    lines = [f"  {'target':78} {'measured':>9} {'target':>8}  result"]
    for r in rows:
        v = r["measured"]
        shown = "-" if v is None else f"{v:.4g}"
        verdict = "n/a" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        lines.append(f"  {r['what'][:78]:78} {shown:>9} {r['sense']}{r['threshold']:<6g}  {verdict}")
    return "\n".join(lines)
