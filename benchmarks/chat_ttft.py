"""Time to first token per turn over a 10-turn chat: mlx_local's Chat, which
reuses its KV cache across turns, against a plain mlx-lm loop that re-prefills
the whole history every turn, on the same loaded model, in the same run.

    .venv/bin/python benchmarks/chat_ttft.py [--model SOURCE] [--turns 10] [--repeats 3]

Writes benchmarks/results/chat_ttft.json and .png (with the device it ran on).
"""

from __future__ import annotations

import argparse
import time

import mlx_local

from common import device, median, write

QUESTIONS = [
    "Hi! My name is Ada. I'd like to plan a trip.",
    "Which season is best for visiting the mountains?",
    "What should I pack for a week of hiking?",
    "How do I keep my feet from getting blisters?",
    "Suggest a simple breakfast I can cook on a camp stove.",
    "How much water should I carry each day?",
    "What is a good way to navigate without a phone?",
    "Give me one tip for photographing sunsets.",
    "How do I store food away from animals?",
    "Summarise our conversation in two sentences.",
]


def with_chat(model, turns: int, max_tokens: int) -> tuple[list[float], list[str]]:
    model.prompt_cache.clear()  # each repeat starts cold: no cache left by the previous one
    chat = model.chat(temperature=0.0, max_tokens=max_tokens)
    ttft, answers = [], []
    for q in QUESTIONS[:turns]:
        r = chat.send(q)
        ttft.append(r.stats.time_to_first_token)
        answers.append(r.content)
    return ttft, answers


def with_mlx_lm(model, turns: int, max_tokens: int) -> tuple[list[float], list[str]]:
    """What a plain mlx-lm loop does: render the whole history, prefill it all."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    messages, ttft, answers = [], [], []
    for q in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": q})
        prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        start = time.perf_counter()
        first = None
        text = ""
        for r in stream_generate(model.module, model.tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(0.0)):
            if first is None:
                first = time.perf_counter() - start
            text += r.text
        ttft.append(first)
        answers.append(text)
        messages.append({"role": "assistant", "content": text})
    return ttft, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    model = mlx_local.Model.load(args.model)
    print(model)
    model.generate("Warm up.", max_tokens=4)
    runs: dict[str, list[list[float]]] = {"reuse": [], "mlx_lm": []}
    for i in range(args.repeats):  # interleaved, so drift hits both alike
        for name, fn in (("reuse", with_chat), ("mlx_lm", with_mlx_lm)):
            ttft, _ = fn(model, args.turns, args.max_tokens)
            runs[name].append(ttft)
            print(f"run {i + 1} {name:7} " + " ".join(f"{t * 1000:6.0f}" for t in ttft) + "  ms")
    med = {k: [median([r[t] for r in v]) for t in range(args.turns)] for k, v in runs.items()}
    ratio_reuse = med["reuse"][-1] / med["reuse"][0]
    ratio_plain = med["mlx_lm"][-1] / med["mlx_lm"][0]
    print(f"\nmedian TTFT turn 1 -> {args.turns}: reuse {med['reuse'][0]*1000:.0f} -> {med['reuse'][-1]*1000:.0f} ms "
          f"({ratio_reuse:.2f}x), mlx-lm re-prefill {med['mlx_lm'][0]*1000:.0f} -> {med['mlx_lm'][-1]*1000:.0f} ms ({ratio_plain:.2f}x)")
    data = {
        "benchmark": "chat_ttft",
        "model": repr(model),
        "device": device(),
        "settings": vars(args),
        "ttft_seconds": {"median": med, "runs": runs},
        "turn_last_over_first": {"reuse": ratio_reuse, "mlx_lm": ratio_plain},
    }
    path = write("chat_ttft", data)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {path} (no chart: pip install -e '.[bench]' for matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    turns = range(1, args.turns + 1)
    ax.plot(turns, [t * 1000 for t in med["reuse"]], "o-", label="mlx_local Chat (KV cache reused)")
    ax.plot(turns, [t * 1000 for t in med["mlx_lm"]], "s--", label="plain mlx-lm loop (re-prefill)")
    ax.set_xlabel("turn")
    ax.set_ylabel("time to first token (ms, median)")
    d = data["device"]
    ax.set_title(f"{model.name}: {d['backend']} / {d['processor']}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
