"""The benchmark: mlx_local against mlx-lm on the same model folders, in one run.

    .venv/bin/python benchmarks/run.py            # the full run (~25 min on the 2-core dev machine)
    .venv/bin/python benchmarks/run.py --quick    # a ~3 min smoke run, into benchmarks/results/quick/

Writes into benchmarks/results/ (or --out): run.json (every number, the
device, memory bandwidth, library versions, date), tokens_per_second.png,
context_scaling.png, native_vs_llama_cpp.png, chat_ttft.json/.png
(benchmarks/chat_ttft.py) and structured.json/.png (benchmarks/structured.py),
both called from here.

Configurations: SmolLM2-135M-Instruct from the embedded GGUF in float32,
8-bit and 4-bit, and a random-weight model shaped like Qwen3-0.6B in 4-bit
(models.py builds the folders once, under $MLX_LOCAL_HOME/bench).

Systems (systems.py), all in this process on the same folders:
  (a) mlx_local: Model.load + model.run, the library's defaults;
  (b) mlx_lm: mlx_lm.load + generate_step, mlx-lm's defaults (stored dtype);
  (c) mlx_lm_ours: mlx_lm.load + our dtype cast and CPU layers + generate_step.
(a) vs (c) is the cost of our layer; (b) vs (c) what the runtime's choices win.

Per configuration and system (speed.py), median of --repeats interleaved
rounds: load time, time to first token and prompt tokens/s at each of
--lengths, decode tokens/s over --decode-tokens tokens, MLX peak memory,
RSS, bytes on disk, and the decode speed the memory bandwidth allows.
mlx-lm's defaults can be hundreds of times slower on a CPU (bfloat16/float16
in software): its runs are cut to about --slow-cap seconds each, the cut is
printed and recorded, and the other systems also run the cut workload.

Then (memory.py): TTFT, peak memory, KV cache and estimate_memory() against
prompt length on SmolLM2 4-bit, with a 4-bit KV cache at --kv-lengths; on
the CPU, mlx_local with and without OpenBLAS (MLX_LOCAL_BLAS=off) in two
subprocesses; the chat benchmark; and the cost of a JSON schema (structured.py).

Issue 14 (peer.py, run.json's "peer" and "targets"; ``--no-peer`` skips it):
on SmolLM2 4-bit and the Qwen3 shape, mlx_local's kernel modes (``off``: the
pure-MLX path, today's baseline; ``exact``: the native kernels, the
default; ``int8``) and llama.cpp, interleaved rounds on the same loaded
model, medians: decode and prompt tokens/s and their ratios
(mlx_local / llama.cpp). llama.cpp is llama-cpp-python's sdist's vendored
llama.cpp, downloaded from PyPI and built once with cmake (llama-bench
only, CPU, llama.cpp's default flags: -march=native, so AVX2 here;
2 threads) into $MLX_LOCAL_HOME/bench/llama.cpp-<version>/ (llamacpp.py;
``--no-llama`` skips it; about 230 compile units: it took 64 min on the
shared dev machine under a load average of ~14, the time is in build.json
there). It runs on the very GGUF mlx_local imports
for SmolLM2 (Q4_1) and, for the Qwen3 shape, on a Q4_0 GGUF of the same
float weights written beside its folder (gguf_writer.py). Then a
4096-token prefill (off, the default mode, llama.cpp), a ~20-token chat
turn after cached turns on the Qwen3 shape (the 0.5B-class model: the
time to first token), and the int8 mode's quality (mean KL and top-1
agreement against off on the evaluation text, by mlx_local._quality's
machinery; whether exact and off decode the same greedy tokens). The
targets (targets.py: decode >= 3x off on SmolLM2, >= 5x on the Qwen3 shape,
>= 0.5x llama.cpp, chat TTFT < 1 s, 4096-token prefill >= 3x, peak memory
no higher, KL <= 0.01, exact greedy == off) are printed at the end with
pass/fail. The modes switch per forward pass (set_native_mode), so one
process measures all of them; without the native build only "off" runs.

The full run's defaults fit about 25 minutes on the 2-core dev machine
(quiet): 3 rounds; prompts of 128 and 512 tokens, 128 tokens decoded after
the first; 2048- and 4096-token prompts only in the scaling phase (SmolLM2
4-bit, one run each), since 2048 in the matrix would add ~12 minutes
(``--lengths 128 512 2048`` measures it anyway); mlx-lm's defaults cut to
~20 s a run; chat_ttft with its own defaults (~5 minutes, ``--no-chat``
skips it); structured with its own defaults (~6 minutes, ``--no-structured``
skips it); the issue-14 phase ~8 minutes (3 rounds, 64 decoded tokens).
``--peer-only`` runs that phase alone (~10 minutes; into results/peer/).
``--quick`` runs every phase small (one length, 16 decoded tokens, 2 rounds
in the peer phase, a 1024-token long prefill) in a few minutes, once the
model folders and llama.cpp are built. run.json records how long each
phase took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import peer
import targets

import mlx_local

import charts
import common  # first: `import mlx_local` picks the BLAS before mlx loads
import memory
import models
import speed
from systems import LABELS, SYSTEMS

HERE = Path(__file__).parent

FULL = {
    "repeats": 3,
    # 2048-token prompts are measured by the scaling phase (SmolLM2 4-bit, with
    # 4096); in this matrix they would add ~12 minutes: --lengths 128 512 2048.
    "lengths": [128, 512],
    "decode_tokens": 128,
    "slow_cap": 20.0,
    "scaling_lengths": [128, 512, 1024, 2048, 4096],
    "scaling_generate": 8,
    "scaling_repeats": 1,
    "kv_lengths": [2048, 4096],
    "blas_off": {"prompt": 128, "generate": 16, "repeats": 3},
    "chat_args": [],  # chat_ttft.py's own defaults: 10 turns, 3 repeats, 32 tokens
    "structured_args": [],  # structured.py's own defaults: both models, 3 rounds, 96 tokens
    "peer": {"lengths": [128, 512], "decode_tokens": 64, "repeats": 3, "long_prefill": 4096, "long_repeats": 2,
             "chat_history": 3, "chat_words": 16, "chat_repeats": 3, "chat_max_tokens": 16,
             "quality_tokens": 1024, "quality_window": 256, "greedy_tokens": 48},
}
QUICK = {
    "repeats": 1,
    "lengths": [128],
    "decode_tokens": 8,
    "slow_cap": 6.0,
    "scaling_lengths": [128, 512],
    "scaling_generate": 4,
    "scaling_repeats": 1,
    "kv_lengths": [512],
    "blas_off": {"prompt": 32, "generate": 4, "repeats": 1},
    "chat_args": ["--turns", "3", "--repeats", "1", "--max-tokens", "8"],
    "structured_args": ["--models", "smollm2-135m-4bit", "--repeats", "1", "--max-tokens", "8"],
    "peer": {"lengths": [128], "decode_tokens": 16, "repeats": 2, "long_prefill": 1024, "long_repeats": 1,
             "chat_history": 1, "chat_words": 16, "chat_repeats": 1, "chat_max_tokens": 8,
             "quality_tokens": 256, "quality_window": 128, "greedy_tokens": 16},
}

START = time.perf_counter()


def log(msg: str) -> None:
    t = time.perf_counter() - START
    print(f"[{int(t // 60):02d}:{int(t % 60):02d}] {msg}", flush=True)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in ("mlx", "mlx-lm", "mlx-local", "numpy", "transformers", "matplotlib", "gguf"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


@contextmanager
def argv(args: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = args
    try:
        yield
    finally:
        sys.argv = saved


# --------------------------------------------------------------- the table


def fmt(v: float | None, spec: str = ".1f") -> str:
    """``v`` formatted, or a dash as wide as the format."""
    if v is not None:
        return format(v, spec)
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return "-".rjust(int(width or 1))


def summarize(cfg: dict[str, Any], lengths: list[int]) -> list[str]:
    """The table rows of one configuration, and its ratios."""
    rows = []
    notes = []
    for s in SYSTEMS:
        sm = cfg["systems"].get(s, {}).get("summary")
        if not sm:
            continue
        bp = sm["by_prompt"]
        first = sm["workload"]["runs"][0]
        star = "*" if sm["workload"]["note"] else " "
        prompt_cols = []
        for n in lengths:
            hit = next((v for v in bp.values() if v["prompt_tokens"] == n), None)
            prompt_cols.append(fmt(hit and hit["prompt_tps"], "8.1f"))
        head = bp[f"prompt{first['prompt']}+gen{first['generate']}"]
        bound = cfg["bandwidth_bound_decode_tps"].get(s)
        rows.append(
            f"  {LABELS[s]:24}{star} {sm['compute_dtype']:9} {fmt(sm['load_seconds'], '6.2f')} "
            f"{fmt(head['ttft'], '8.2f')} " + " ".join(prompt_cols)
            + f" {fmt(sm['decode_tps'], '8.2f')} ({sm['decode_tokens']:3}) {fmt(bound, '8.1f')} "
            f"{sm['peak_memory'] / 2**20:8.0f} {sm['weights_in_memory'] / 2**20:8.0f}"
        )
        if sm["workload"]["note"]:
            notes.append(f"  * {LABELS[s]}: {sm['workload']['note']}")
    r = cfg.get("ratios", {})
    for k, v in r.items():
        if v is not None:
            notes.append(f"  {k}: {v:.3f}")
    return rows + notes


def header(lengths: list[int]) -> str:
    cols = " ".join(f"{'p' + str(n):>8}" for n in lengths)
    return (f"  {'system':25} {'dtype':9} {'load s':>6} {'TTFT s':>8} {cols} {'decode':>8} {'(tok)':5} "
            f"{'bw bound':>8} {'peak MiB':>8} {'wts MiB':>8}")


def ratios(cfg: dict[str, Any]) -> dict[str, float | None]:
    """(a)/(c) at the full workload, and (c)/(b) like for like and headline."""
    sy = cfg["systems"]

    def get(s: str, k: str, metric: str) -> float | None:
        sm = sy.get(s, {}).get("summary")
        return sm and sm["by_prompt"].get(k, {}).get(metric)

    def div(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    out: dict[str, float | None] = {}
    a, c = sy.get("mlx_local", {}).get("summary"), sy.get("mlx_lm_ours", {}).get("summary")
    if a and c:
        for k in a["by_prompt"]:
            out[f"ours/mlx_lm_ours prompt tok/s, {k}"] = div(get("mlx_local", k, "prompt_tps"),
                                                              get("mlx_lm_ours", k, "prompt_tps"))
        out["ours/mlx_lm_ours decode tok/s"] = div(a["decode_tps"], c["decode_tps"])
    b = sy.get("mlx_lm", {}).get("summary")
    if b and c:
        k = f"prompt{b['workload']['runs'][0]['prompt']}+gen{b['workload']['runs'][0]['generate']}"
        out[f"mlx_lm_ours/mlx_lm prompt tok/s, like for like ({k})"] = div(get("mlx_lm_ours", k, "prompt_tps"),
                                                                          get("mlx_lm", k, "prompt_tps"))
        out[f"mlx_lm_ours/mlx_lm decode tok/s, like for like ({k})"] = div(get("mlx_lm_ours", k, "decode_tps"),
                                                                          get("mlx_lm", k, "decode_tps"))
        out["mlx_lm_ours/mlx_lm decode tok/s, each at its own workload"] = div(c["decode_tps"], b["decode_tps"])
    return out


# ------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~3 minute smoke run (fewer lengths, tokens, rounds)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default benchmarks/results, or benchmarks/results/quick with --quick)")
    ap.add_argument("--configs", nargs="+", default=None, help="only these configurations (names from models.py)")
    ap.add_argument("--repeats", type=int, help="rounds per measurement (median reported)")
    ap.add_argument("--lengths", type=int, nargs="+", help="prompt lengths; decoding follows the first")
    ap.add_argument("--decode-tokens", type=int, help="tokens generated after the first prompt length (all configs)")
    ap.add_argument("--slow-cap", type=float, help="seconds a run of mlx-lm's defaults may take before it is cut")
    ap.add_argument("--scaling-lengths", type=int, nargs="+")
    ap.add_argument("--kv-lengths", type=int, nargs="+")
    ap.add_argument("--no-chat", action="store_true", help="skip chat_ttft")
    ap.add_argument("--no-structured", action="store_true", help="skip structured (the cost of a JSON schema)")
    ap.add_argument("--no-blas-off", action="store_true", help="skip the MLX_LOCAL_BLAS=off subprocess")
    ap.add_argument("--no-peer", action="store_true",
                    help="skip the native modes / llama.cpp / targets / int8 quality phase (peer.py)")
    ap.add_argument("--no-llama", action="store_true", help="in that phase, do not build or run llama.cpp")
    ap.add_argument("--peer-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help='override settings of that phase, e.g. repeats=2 lengths=[128] (values in JSON)')
    ap.add_argument("--peer-only", action="store_true",
                    help="only that phase (on the two 4-bit configurations), into benchmarks/results/peer/")
    args = ap.parse_args()
    if args.peer_only:
        args.no_chat = args.no_structured = args.no_blas_off = True

    plan = dict(QUICK if args.quick else FULL)
    for k in ("repeats", "lengths", "decode_tokens", "slow_cap", "scaling_lengths", "kv_lengths"):
        if getattr(args, k) is not None:
            plan[k] = getattr(args, k)
    plan["peer"] = dict(plan["peer"])
    for item in args.peer_set:
        k, _, v = item.partition("=")
        if k not in plan["peer"]:
            ap.error(f"--peer-set {item}: no setting {k!r}; the settings are {', '.join(plan['peer'])}")
        plan["peer"][k] = json.loads(v)
    out_dir = args.out or (common.RESULTS / ("quick" if args.quick else "") / ("peer" if args.peer_only else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    common.RESULTS = out_dir  # chat_ttft and structured write through common.write
    json_path = out_dir / "run.json"

    rt = mlx_local._runtime.current()
    data: dict[str, Any] = {
        "benchmark": "run",
        "complete": False,
        "quick": args.quick,
        "settings": plan,
        "device": common.device(),
        "versions": versions(),
        "systems": {s: LABELS[s] for s in SYSTEMS},
        "configs": [],
    }

    phase_start = [time.perf_counter()]

    def save(phase: str | None = None) -> None:
        """Write run.json now (a crash keeps what was measured); time the phase that ended."""
        now = time.perf_counter()
        if phase:
            data.setdefault("phase_seconds", {})[phase] = now - phase_start[0]
            phase_start[0] = now
        data["elapsed_seconds"] = now - START
        json_path.write_text(json.dumps(data, indent=2))

    d = data["device"]
    log(f"device: {d['backend']} / {d['processor']}, {d['cpu_count']} cores, {d['memory_bytes'] / 2**30:.1f} GiB, "
        f"BLAS: {d['blas']}; mlx {d['versions']['mlx']}, mlx-lm {d['versions']['mlx-lm']}")
    log(f"plan: {json.dumps(data['settings'])}")

    # Memory bandwidth, first, on a quiet process.
    bw = memory.bandwidth(2**28 if args.quick else 2**30, 3 if args.quick else 5)
    data["bandwidth"] = bw
    log(f"memory bandwidth: {bw['gb_per_s']:.1f} GB/s ({bw['method']})")

    log("model folders (built once, then cached):")
    cfgs = models.prepare(args.configs or (list(peer.CONFIGS) if args.peer_only else None), log=log)
    for c in cfgs:
        log(f"  {c.name:24} {models.folder_bytes(c.folder) / 1e6:7.1f} MB  {c.folder}")
    save("bandwidth and model folders")

    # Speed and memory per configuration.
    for c in [] if args.peer_only else cfgs:
        settings = plan
        log(f"{c.label}: prompt lengths {settings['lengths']}, {settings['decode_tokens']} decoded tokens, "
            f"{settings['repeats']} rounds")
        rec = speed.bench_config(c, lengths=settings["lengths"], decode_tokens=settings["decode_tokens"],
                                 repeats=settings["repeats"], slow_cap=settings["slow_cap"], log=log)
        rec["settings"] = {k: settings[k] for k in ("lengths", "decode_tokens", "repeats", "slow_cap")}
        rec["bandwidth_bound_decode_tps"] = {
            s: bw["gb_per_s"] * 1e9 / v["summary"]["bytes_read_per_token"] for s, v in rec["systems"].items()
        }
        rec["ratios"] = ratios(rec)
        data["configs"].append(rec)
        save(c.name)
        print(header(settings["lengths"]))
        print("\n".join(summarize(rec, settings["lengths"])), flush=True)

    gguf_cfg = next((c for c in cfgs if c.name == "smollm2-135m-4bit"), None)

    # Issue 14: the native kernel modes against the pure-MLX path and llama.cpp, the targets, int8's quality.
    if not args.no_peer:
        data["peer"] = {}

        def peer_saved() -> None:
            data["targets"] = targets.check(data["peer"])
            save()

        peer.phase(cfgs, plan["peer"], no_llama=args.no_llama, log=log, out=data["peer"], saved=peer_saved)
        data["targets"] = targets.check(data["peer"])
        save("peer (native modes, llama.cpp, targets)")

    # Scaling with the prompt, and the 4-bit KV cache.
    scaling_folder = gguf_cfg.folder if gguf_cfg else cfgs[0].folder
    if not args.peer_only:
        log(f"context scaling (mlx_local, {scaling_folder.name}): {plan['scaling_lengths']}, "
            f"4-bit KV cache at {plan['kv_lengths']}")
        data["scaling"] = memory.scaling(scaling_folder, label=gguf_cfg.label if gguf_cfg else cfgs[0].label,
                                         lengths=plan["scaling_lengths"], generate=plan["scaling_generate"],
                                         repeats=plan["scaling_repeats"], kv_lengths=plan["kv_lengths"], log=log)
        save("scaling")

    # What OpenBLAS is worth (CPU only): the same small run in two subprocesses,
    # with OpenBLAS and with MLX's bundled BLAS (the BLAS is chosen once per process).
    if rt.backend == "cpu" and not args.no_blas_off:
        p = plan["blas_off"]
        log(f"mlx_local with and without OpenBLAS (subprocesses): prompt {p['prompt']}, {p['generate']} tokens, "
            f"{p['repeats']} rounds")
        data["blas"] = {}
        for name, env in (("openblas", {}), ("reference", {"MLX_LOCAL_BLAS": "off"})):
            proc = subprocess.run([sys.executable, str(HERE / "speed.py"), "--probe", str(scaling_folder),
                                   str(p["prompt"]), str(p["generate"]), str(p["repeats"])],
                                  env={**os.environ, **env}, capture_output=True, text=True, cwd=HERE)
            if proc.returncode == 0:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                log(f"  {r['blas']}: TTFT {r['ttft']:.2f} s ({r['prompt_tps']:.1f} tok/s), "
                    f"decode {fmt(r['decode_tps'], '.2f')} tok/s")
            else:
                r = {"error": proc.stderr[-2000:]}
                log(f"  {name} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            data["blas"][name] = r
        save("blas")

    # The chat benchmark, by its own script's main() (it writes chat_ttft.json/.png into out_dir).
    if not args.no_chat:
        import chat_ttft

        log(f"chat_ttft {' '.join(plan['chat_args']) or '(its defaults)'}:")
        with argv(["chat_ttft.py", *plan["chat_args"]]):
            chat_ttft.main()
        chat = json.loads((out_dir / "chat_ttft.json").read_text())
        data["chat_ttft"] = {"file": "chat_ttft.json", "median_ttft_seconds": chat["ttft_seconds"]["median"],
                             "turn_last_over_first": chat["turn_last_over_first"]}
        save("chat_ttft")

    # The cost of a JSON schema, by structured.py's main() (it writes structured.json/.png into out_dir).
    if not args.no_structured:
        import structured

        log(f"structured {' '.join(plan['structured_args']) or '(its defaults)'}:")
        with argv(["structured.py", *plan["structured_args"]]):
            structured.main()
        st = json.loads((out_dir / "structured.json").read_text())
        data["structured"] = {"file": "structured.json",
                              "decode_ratio": {m["name"]: m["decode_ratio"] for m in st["models"]}}
        save("structured")

    data["complete"] = True
    save()
    written = [json_path]
    try:
        if data["configs"]:
            written.append(charts.tokens_per_second(data, out_dir / "tokens_per_second.png"))
        if "scaling" in data:
            written.append(charts.context_scaling(data, out_dir / "context_scaling.png"))
        if "peer" in data:
            written.append(charts.peer(data, out_dir / "native_vs_llama_cpp.png"))
    except ImportError:
        log("no charts: matplotlib is not installed (pip install -e '.[bench]')")

    # The summary again, all configurations together.
    print()
    log(f"done in {(time.perf_counter() - START) / 60:.1f} min; memory bandwidth {bw['gb_per_s']:.1f} GB/s")
    print("time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in data.get("phase_seconds", {}).items()))
    for rec in data["configs"]:
        rss = rec["process_rss_with_all_loaded"]
        print(f"\n{rec['label']}  ({rec['folder_bytes'] / 1e6:.1f} MB on disk"
              + (f", GGUF {rec['gguf_bytes'] / 1e6:.1f} MB" if rec["gguf_bytes"] else "")
              + f"; process RSS with the 3 systems loaded {fmt(rss['rss_now'] and rss['rss_now'] / 2**20, '.0f')} MiB, "
              f"high-water {rss['rss_max'] / 2**20:.0f} MiB)")
        print(header(rec["settings"]["lengths"]))
        print("\n".join(summarize(rec, rec["settings"]["lengths"])))
    if "peer" in data:
        print(peer.summary(data["peer"]))
        print("\ntargets (issue 14):")
        print(targets.table(data["targets"]))
    print("\nwrote " + ", ".join(str(p) for p in written)
          + ("" if args.no_chat else f", {out_dir / 'chat_ttft.json'}, {out_dir / 'chat_ttft.png'}")
          + ("" if args.no_structured else f", {out_dir / 'structured.json'}, {out_dir / 'structured.png'}"))


if __name__ == "__main__":
    main()
