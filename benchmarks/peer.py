"""mlx_local's kernel modes against each other and against llama.cpp, in one run (issue 14).

On one loaded model per configuration, in interleaved rounds (the order
rotates every round; medians over the rounds):

- ``off``: the pure-MLX path (``set_native_mode("off")``, what
  ``MLX_LOCAL_NATIVE=off`` gives): the baseline, "today's mlx_local";
- ``exact``: the native kernels in float32, the library's default;
- ``int8``: the native kernels with int8 activations (``MLX_LOCAL_NATIVE=int8``);
- ``llama.cpp``: ``llama-bench`` (llamacpp.py) on the configuration's GGUF
  (the SmolLM2 Q4_1 file mlx_local imports; the Q4_0 GGUF of the Qwen3
  shape's float weights), 2 threads, one repetition per round.

Each mlx_local mode runs the first prompt length followed by ``decode_tokens``
greedy tokens, then the other lengths with one token; llama.cpp runs
``pp<n>`` for each length and ``tg<decode_tokens>`` (generation from an
empty context, llama-bench's definition; mlx_local decodes after the first
prompt). The modes switch per forward pass (``set_native_mode``), so all
share one loaded model and one process.

llama.cpp's threads (OpenMP) spin while they wait for each other, so on a
machine busy with other work (a load average above the core count) it
loses much more than mlx_local does: each record keeps the load average
of its rounds (``loadavg``); compare ratios from a quiet machine.

Also here: long prefill (off against the default mode, and llama.cpp's
``pp<n>``), a chat turn's time to first token after a cached conversation,
and the int8 mode's quality (mean KL and top-1 agreement against ``off``
by mlx_local's own convert-quality machinery, :mod:`mlx_local._quality`)
and whether ``exact`` gives the same greedy tokens as ``off``.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any, Callable

import llamacpp

import mlx_local  # first: it picks the BLAS before mlx loads
import mlx_local.types
from mlx_local import _cpu_kernels, _native

from models import BenchModel
from speed import key, med, prompt_ids
from systems import load, settle

#: The configurations this phase runs on (each has a GGUF for llama.cpp).
CONFIGS = ("smollm2-135m-4bit", "qwen3-0.6b-shape-4bit")
MODES = ("off", "exact", "int8")
LLAMA = "llama.cpp"


def native_available() -> bool:
    """Whether the native kernels load in this process (else only ``off`` runs)."""
    return _native.load().module is not None


def modes() -> tuple[str, ...]:
    return MODES if native_available() else ("off",)


class mode:  # noqa: N801 - used as a context manager, like a function
    """``with mode("int8"):`` runs with that native mode, then restores the previous one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.previous = ""

    def __enter__(self) -> None:
        self.previous = _cpu_kernels.set_native_mode(self.name)

    def __exit__(self, *exc: object) -> None:
        _cpu_kernels.set_native_mode(self.previous)


def _llama_round(gguf: Path, lengths: list[int], decode_tokens: int) -> dict[str, Any]:
    tests = llamacpp.bench(gguf, n_prompt=lengths, n_gen=decode_tokens, repetitions=1)
    return {t["test"]: t for t in tests}


def speed(cfg: BenchModel, *, lengths: list[int], decode_tokens: int, repeats: int,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prompt and decode tokens/s of every mode and llama.cpp on ``cfg``, interleaved rounds."""
    m, _ = load("mlx_local", cfg.folder)
    ids = {n: prompt_ids(m.tokenizer, n) for n in lengths}
    items = [(lengths[0], decode_tokens)] + [(n, 1) for n in lengths[1:]]
    runners = [*modes(), *([LLAMA] if cfg.peer_gguf else [])]
    for md in modes():  # warm-up
        with mode(md):
            m.run(ids[lengths[0]][:16], 2)
    if cfg.peer_gguf:
        llamacpp.bench(cfg.peer_gguf, n_prompt=[16], n_gen=2)
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    for r in range(repeats):
        order = runners[r % len(runners):] + runners[: r % len(runners)]
        for who in order:
            if who == LLAMA:
                assert cfg.peer_gguf is not None
                t = _llama_round(cfg.peer_gguf, lengths, decode_tokens)
                one = {"prompt_tps": {n: t[f"pp{n}"]["tps"] for n in lengths},
                       "decode_tps": t[f"tg{decode_tokens}"]["tps"], "max_rss": t[f"tg{decode_tokens}"]["max_rss"],
                       "tests": t}
            else:
                with mode(who):
                    res = {key(p, g): m.run(ids[p], g) for p, g in items}
                one = {"prompt_tps": {p: res[key(p, g)].prompt_tps for p, g in items},
                       "decode_tps": res[key(*items[0])].decode_tps,
                       "peak_memory": max(x.peak_memory for x in res.values()),
                       "runs": {k: x.as_dict() for k, x in res.items()}}
            one["loadavg"] = os.getloadavg()[0]
            runs[who].append(one)
            log(f"  round {r + 1}/{repeats} {who:9}: decode {one['decode_tps']:7.2f} tok/s, prompt "
                + ", ".join(f"{n}: {v:7.1f}" for n, v in one["prompt_tps"].items()) + " tok/s")
    out: dict[str, Any] = {"config": cfg.name, "label": cfg.label, "model": repr(m.model),
                           "gguf": str(cfg.peer_gguf) if cfg.peer_gguf else None,
                           "lengths": lengths, "decode_tokens": decode_tokens, "repeats": repeats, "by": {}}
    for who, rs in runs.items():
        out["by"][who] = {
            "decode_tps": med([x["decode_tps"] for x in rs]),
            "prompt_tps": {str(n): med([x["prompt_tps"][n] for x in rs]) for n in lengths},
            "peak_memory": med([x.get("peak_memory") for x in rs]),
            "max_rss": med([x.get("max_rss") for x in rs]),
            "rounds": rs,
        }
    if cfg.peer_gguf:
        out["llama_cpp"] = {"build": llamacpp.build_record(), "threads": 2,
                            "about": {k: runs[LLAMA][0]["tests"][f"tg{decode_tokens}"][k]
                                      for k in ("cpu_info", "backends", "build_commit", "model_type", "model_size",
                                                "model_n_params", "n_threads", "n_batch", "n_ubatch")}}
    out["ratios"] = _ratios(out["by"], lengths)
    # The machine's 1-minute load average during the rounds: llama.cpp's OpenMP threads spin-wait,
    # so on a shared machine (load above the core count) it loses far more than mlx_local does.
    out["loadavg"] = [x["loadavg"] for rs in runs.values() for x in rs]
    m.free()
    del m
    gc.collect()
    settle()
    return out


def _ratios(by: dict[str, Any], lengths: list[int]) -> dict[str, float | None]:
    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    out: dict[str, float | None] = {}
    for num, den in (("exact", "off"), ("int8", "off"), ("exact", LLAMA), ("int8", LLAMA), ("off", LLAMA)):
        if num in by and den in by:
            out[f"{num}/{den} decode"] = div(by[num]["decode_tps"], by[den]["decode_tps"])
            for n in lengths:
                out[f"{num}/{den} prompt {n}"] = div(by[num]["prompt_tps"][str(n)], by[den]["prompt_tps"][str(n)])
    return out


def long_prefill(cfg: BenchModel, *, length: int, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """A ``length``-token prompt (one token generated): off against the default mode, and llama.cpp's pp."""
    m, _ = load("mlx_local", cfg.folder)
    ids = prompt_ids(m.tokenizer, length)
    default = _cpu_kernels._mode_from_env() if native_available() else "off"
    who = ["off"] + ([default] if default != "off" else []) + ([LLAMA] if cfg.peer_gguf else [])
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in who}
    for r in range(repeats):
        for w in (who if r % 2 == 0 else who[::-1]):
            if w == LLAMA:
                assert cfg.peer_gguf is not None
                t = llamacpp.bench(cfg.peer_gguf, n_prompt=[length], n_gen=0)[0]
                one = {"prompt_tps": t["tps"], "ttft": length / t["tps"], "max_rss": t["max_rss"]}
            else:
                with mode(w):
                    x = m.run(ids, 1)
                one = {"prompt_tps": x.prompt_tps, "ttft": x.ttft, "peak_memory": x.peak_memory}
            runs[w].append(one)
            log(f"  round {r + 1}/{repeats} {w:9}: {length}-token prompt {one['ttft']:6.2f} s "
                f"({one['prompt_tps']:6.1f} tok/s)")
    m.free()
    del m
    settle()
    by = {w: {"ttft": med([x["ttft"] for x in rs]), "prompt_tps": med([x["prompt_tps"] for x in rs]),
              "peak_memory": med([x.get("peak_memory") for x in rs]), "max_rss": med([x.get("max_rss") for x in rs]),
              "rounds": rs} for w, rs in runs.items()}
    return {"config": cfg.name, "prompt_tokens": length, "default_mode": default, "repeats": repeats, "by": by}


def chat_turn(cfg: BenchModel, *, history: int, words: int, repeats: int, max_tokens: int,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time to first token of a ~20-token user turn after ``history`` cached turns, off vs the default mode."""
    model = mlx_local.Model.load(cfg.folder, progress=False)
    filler = "Please tell me more about the mountains, the rivers and the old roads near the village today"
    message = " ".join(filler.split()[:words])
    turn_tokens = len(model.tokenizer.encode(message, add_special_tokens=False))
    default = _cpu_kernels._mode_from_env() if native_available() else "off"
    who = ["off"] + ([default] if default != "off" else [])
    runs: dict[str, list[float]] = {w: [] for w in who}
    for r in range(repeats):
        for w in (who if r % 2 == 0 else who[::-1]):
            with mode(w):
                model.prompt_cache.clear()
                chat = model.chat(temperature=0.0, max_tokens=max_tokens)
                for i in range(history):
                    chat.send(f"Question {i + 1}: what is a good place to walk in spring?")
                reply = chat.send(message)
            runs[w].append(reply.stats.time_to_first_token)
            log(f"  round {r + 1}/{repeats} {w:9}: turn {history + 1} ({turn_tokens}-token message) "
                f"TTFT {runs[w][-1] * 1000:6.0f} ms")
    out = {"config": cfg.name, "model": repr(model), "history_turns": history, "message_tokens": turn_tokens,
           "max_tokens": max_tokens, "default_mode": default,
           "ttft": {w: med(list(v)) for w, v in runs.items()}, "runs": runs}
    del model
    settle()
    return out


def quality(cfg: BenchModel, *, tokens: int, window: int, greedy_tokens: int,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The int8 mode against off (mean KL, top-1 agreement) and exact against off (same greedy tokens?).

    KL: mlx_local's convert-quality machinery (``_quality.Reference``: the
    reference is the model under ``off``, the compared one the same folder
    under ``int8``). Its forward passes read whole windows; a window of up to
    192 tokens stays under every layer's native row limit
    (``_cpu_kernels.native_row_limit``), and the kernels quantize activations
    per row, so the numbers are those of decoding token by token.
    """
    from mlx_local._quality import Reference

    out: dict[str, Any] = {"config": cfg.name, "tokens": tokens, "window": window}
    if not native_available():
        out["note"] = "native kernels not loaded: nothing to compare"
        return out
    with mode("off"):
        ref = Reference.compute(cfg.folder, tokens=tokens, window=window)
    try:
        with mode("int8"):
            q8 = ref.compare(cfg.folder)
        with mode("exact"):
            qe = ref.compare(cfg.folder)
    finally:
        ref.close()
    out["int8_vs_off"] = q8.as_dict()
    out["exact_vs_off"] = qe.as_dict()
    log(f"  int8 vs off: mean KL {q8.mean_kl:.5f}, top-1 agreement {q8.top1_agreement:.4f} ({q8.tokens} tokens); "
        f"exact vs off: KL {qe.mean_kl:.2e}, top-1 {qe.top1_agreement:.4f}")
    # Greedy tokens, decoding as the library does (one row at a time: the native kernels).
    model = mlx_local.Model.load(cfg.folder, progress=False)
    ids = prompt_ids(model.tokenizer, 64)
    opts = mlx_local.types.GenerationOptions(max_tokens=greedy_tokens, temperature=0.0, stop_loops=False)
    greedy: dict[str, list[int]] = {}
    for md in MODES:
        with mode(md):
            greedy[md] = [t for chunk in model.run(ids, opts) for t in chunk.token_ids]
    del model
    settle()

    def first_diff(a: list[int], b: list[int]) -> int | None:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))

    out["greedy"] = {"prompt_tokens": len(ids), "tokens": greedy_tokens,
                     "exact_identical_to_off": greedy["exact"] == greedy["off"],
                     "exact_first_difference": first_diff(greedy["exact"], greedy["off"]),
                     "int8_identical_to_off": greedy["int8"] == greedy["off"],
                     "int8_first_difference": first_diff(greedy["int8"], greedy["off"]),
                     "tokens_by_mode": greedy}
    log(f"  greedy {greedy_tokens} tokens: exact == off: {greedy['exact'] == greedy['off']}, "
        f"int8 == off: {greedy['int8'] == greedy['off']}")
    return out


def phase(cfgs: list[BenchModel], p: dict[str, Any], *, no_llama: bool, log: Callable[[str], None] = print,
          out: dict[str, Any] | None = None, saved: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """This module's measurements on the :data:`CONFIGS` among ``cfgs`` (run.py's issue-14 phase).

    ``p``: run.py's ``peer`` settings. llama.cpp is built first if needed; if that
    fails, the error is recorded and the phase runs without it. Results go into
    ``out`` (returned), and ``saved()`` is called after each step (run.py writes
    run.json then, so an interrupted run keeps what was measured).
    """
    out = {} if out is None else out
    out.update({"settings": p, "native": _cpu_kernels.native_status(), "speed": [], "quality": []})
    llama_ok = False
    if not no_llama:
        try:
            out["llama_cpp_build"] = llamacpp.ensure_built(log=log)
            llama_ok = True
        except Exception as e:  # the run goes on without the peer
            out["llama_cpp_build"] = {"error": f"{type(e).__name__}: {e}"[-3000:]}
            log(f"llama.cpp unavailable: {type(e).__name__}: {str(e)[:300]}")
    mine = [c for c in cfgs if c.name in CONFIGS]
    mine = [c if llama_ok else BenchModel(**{**c.__dict__, "peer_gguf": None}) for c in mine]
    log(f"native kernels: {out['native']}")
    for c in mine:
        log(f"{c.label}: native modes {', '.join(modes())}" + (" and llama.cpp" if c.peer_gguf else "")
            + f", prompts {p['lengths']}, {p['decode_tokens']} decoded tokens, {p['repeats']} rounds")
        out["speed"].append(speed(c, lengths=p["lengths"], decode_tokens=p["decode_tokens"],
                               repeats=p["repeats"], log=log))
        saved()
    small = next((c for c in mine if c.name == "smollm2-135m-4bit"), None)
    big = next((c for c in mine if c.name == "qwen3-0.6b-shape-4bit"), None)
    if small:
        log(f"{small.label}: {p['long_prefill']}-token prefill, {p['long_repeats']} rounds")
        out["long_prefill"] = long_prefill(small, length=p["long_prefill"], repeats=p["long_repeats"], log=log)
        saved()
    if big:
        log(f"{big.label}: a chat turn after {p['chat_history']} cached turns, {p['chat_repeats']} rounds")
        out["chat"] = chat_turn(big, history=p["chat_history"], words=p["chat_words"],
                                repeats=p["chat_repeats"], max_tokens=p["chat_max_tokens"], log=log)
        saved()
    for c in mine:
        log(f"{c.label}: int8 and exact against off, {p['quality_tokens']} tokens of the evaluation text")
        out["quality"].append(quality(c, tokens=p["quality_tokens"], window=p["quality_window"],
                                   greedy_tokens=p["greedy_tokens"], log=log))
        saved()
    return out


def _f(v: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if v is None else format(v, spec)


def summary(pr: dict[str, Any]) -> str:
    """The phase's speed table per configuration (run.json's ``peer``), as printed at the end of run.py."""
    build = pr.get("llama_cpp_build", {"error": "not run"})
    lines = [f"\nnative kernels: {pr['native']}; llama.cpp: "
             + (f"llama-cpp-python {build.get('llama_cpp_python')}'s vendored llama.cpp, llama-bench, 2 threads"
                if "error" not in build else "not run")]
    for r in pr["speed"]:
        lines.append(f"{r['label']} (median of {r['repeats']} interleaved rounds; tok/s)")
        lines.append(f"  {'':10} {'decode':>8} " + " ".join(f"{'p' + n:>8}" for n in r["by"]["off"]["prompt_tps"]))
        for who, v in r["by"].items():
            lines.append(f"  {who:10} {_f(v['decode_tps'], '8.2f')} "
                         + " ".join(_f(x, "8.1f") for x in v["prompt_tps"].values()))
        lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items() if v is not None))
    return "\n".join(lines)
