"""One model on 1 vs 2 ranks (tensor parallel, ring backend over loopback): tokens/s and peak memory per rank.

    .venv/bin/python benchmarks/distributed.py [--models qwen3-0.6b-shape-bf16 qwen3-0.6b-shape-4bit]
                                              [--repeats 3] [--max-tokens 48]

SmolLM2-135M cannot be split over 2 ranks (9 attention heads, 3 KV heads:
tensor parallelism needs them divisible by the number of ranks; its llama
architecture has no pipeline() in mlx-lm), so this runs the random-weight
Qwen3-0.6B-shaped model of benchmarks/models.py (16 heads / 8 KV heads), as
stored (bfloat16, computed in float32 on the CPU) and 4-bit.

Each round runs one process (``distributed=None``) and one 2-rank launch
(``mlx.launch -n 2 --backend ring``, ``distributed="tensor"``), the order
alternating round by round; each run loads the model, warms up, then times
one greedy generation of ``--max-tokens`` tokens (``stop_loops=False``).
Reported per configuration: median decode and prompt tokens/s, and per rank
the MLX peak memory of the generation (weights included) and the process's
peak RSS. On this 2-core Linux machine both ranks share two cores and talk
over loopback: this is a record of the overhead, not a speed-up claim. What
two ranks buy is memory: each holds about half the layers' weights.

Writes benchmarks/results/distributed.json (with the device it ran on).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPT = "Write a long story about a lighthouse keeper and the sea, with many details."
DEFAULT_MODELS = ["qwen3-0.6b-shape-bf16", "qwen3-0.6b-shape-4bit"]
LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"


def worker(folder: str, mode: str, max_tokens: int) -> None:
    """One rank (or the single process): load, warm up, time one generation, print a RESULT line."""
    import mlx_local

    start = time.perf_counter()
    model = mlx_local.Model.load(folder, distributed=None if mode == "none" else mode, force=True)
    load_s = time.perf_counter() - start
    model.generate(PROMPT, max_tokens=4, stop_loops=False)
    r = model.generate(PROMPT, max_tokens=max_tokens, stop_loops=False)
    placement = getattr(model, "distributed", None)
    rank = placement.rank if placement else 0
    print("RESULT", json.dumps({
        "rank": rank, "load_s": load_s, "decode_tps": r.stats.decode_tps, "prompt_tps": r.stats.prompt_tps,
        "generated_tokens": r.stats.generated_tokens, "peak_memory": r.stats.peak_memory,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tokens": list(r.token_ids),
    }), flush=True)  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(folder: Path, ranks: int, max_tokens: int) -> list[dict[str, Any]]:
    """One run on ``ranks`` processes; each rank's RESULT."""
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder)]
    if ranks == 1:
        cmd = [*me, "none", str(max_tokens)]
    else:
        cmd = [sys.executable, "-c", LAUNCH, "-n", str(ranks), "--backend", "ring", "--starting-port", str(_port()),
               "--", *me, "tensor", str(max_tokens)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    out = subprocess.run(cmd, env=env, stdin=subprocess.PIPE, capture_output=True, text=True, timeout=1800)
    found = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or len(found) != ranks:
        raise SystemExit(f"run on {ranks} rank(s) failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return sorted(found, key=lambda r: r["rank"])


def main() -> None:
    import models
    from common import device, median, write

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    folders = {m.name: m for m in models.prepare([n for n in args.models if n != "qwen3-0.6b-shape-bf16"] or ["none"])}
    if "qwen3-0.6b-shape-bf16" in args.models:
        bf16 = models._build_once(models.bench_home() / f"qwen3-0.6b-shape-bf16-v{models.BUILD_VERSION}",
                                  models.write_qwen3_shaped, print)  # fmt: skip
        folders["qwen3-0.6b-shape-bf16"] = models.BenchModel(
            "qwen3-0.6b-shape-bf16", "Qwen3-0.6B-shaped bf16 (float32 compute)", bf16, None,
            "random weights shaped like Qwen3-0.6B, stored bfloat16, computed in float32 on the CPU")
    table: dict[str, Any] = {}
    for name in args.models:
        m = folders[name]
        runs: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
        for i in range(args.repeats):
            for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):
                print(f"{name}: round {i + 1}, {ranks} rank(s)", flush=True)
                runs[ranks].append(run(m.folder, ranks, args.max_tokens))
        same = all(r[0]["tokens"] == runs[1][0][0]["tokens"] for rs in runs.values() for r in rs)
        entry: dict[str, Any] = {"label": m.label, "description": m.description, "same_tokens_everywhere": same}
        for ranks, rs in runs.items():
            entry[f"{ranks}_rank"] = {
                "decode_tps": median([r[0]["decode_tps"] for r in rs]),
                "prompt_tps": median([r[0]["prompt_tps"] for r in rs]),
                "load_s": median([r[0]["load_s"] for r in rs]),
                "per_rank": [{"rank": k, "peak_memory": median([r[k]["peak_memory"] for r in rs]),
                              "peak_rss": median([r[k]["peak_rss"] for r in rs])} for k in range(ranks)],
            }  # fmt: skip
        entry["decode_ratio_2_vs_1"] = entry["2_rank"]["decode_tps"] / entry["1_rank"]["decode_tps"]
        entry["peak_memory_ratio_rank0_2_vs_1"] = (
            entry["2_rank"]["per_rank"][0]["peak_memory"] / entry["1_rank"]["per_rank"][0]["peak_memory"])
        table[name] = entry
        print(json.dumps(entry, indent=2), flush=True)
    path = write("distributed", {
        "what": "tensor parallel over 2 ranks (ring backend, loopback) vs 1 process; greedy, "
                f"{args.max_tokens} tokens, median of {args.repeats} interleaved rounds",
        "note": "2 ranks share the same 2 CPU cores here: no speed-up claim; the point is memory per rank",
        "device": device(), "models": table,
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(HERE.parent))
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
