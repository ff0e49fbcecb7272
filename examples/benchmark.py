"""A short benchmark of one model: load time, prompt and decode speed, memory.

    .venv/bin/python examples/benchmark.py                  # the embedded default, offline
    .venv/bin/python examples/benchmark.py qwen3-0.6b       # or MLX_LOCAL_MODEL=qwen3-0.6b

Loads the model once, then three times processes a prompt of about 256 tokens
and generates up to 64 tokens greedily, and prints each run and the median:
time to first token, prompt tokens/s, decode tokens/s and peak memory (what
MLX held, weights included). Under a minute for SmolLM2-135M on a 2-core CPU.
"""

import os
import statistics
import sys
import time

import mlx_local

PROMPT_TOKENS, DECODE_TOKENS, RUNS = 256, 64, 3
source = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MLX_LOCAL_MODEL")) or None

print(f"device: {mlx_local.device_info()}")
start = time.perf_counter()
model = mlx_local.Model.load(source)
print(f"model:  {model}")
print(f"load:   {time.perf_counter() - start:.2f} s")

# A story long enough to fill the prompt, ending with a request for more of it.
sentences = [
    "The lighthouse keeper climbed the spiral stairs at dusk, as she had every evening for thirty years.",
    "Below her the harbour filled with fishing boats, their lamps swaying like slow fireflies.",
    "A storm was gathering beyond the headland, and the gulls had gone quiet hours ago.",
    "She trimmed the wick, polished the great lens and wrote the time in her log in neat small letters.",
    "Far out on the water a single light blinked three times, paused, and blinked three times again.",
]
story, i = "", 0
while len(model.encode(f"{story}\nContinue the story.")) < PROMPT_TOKENS:
    story += sentences[i % len(sentences)] + " "
    i += 1
prompt = f"{story}\nContinue the story."

print(f"\n{RUNS} runs: a {len(model.encode(prompt))}-token prompt, up to {DECODE_TOKENS} tokens generated greedily\n")
print(f"{'run':>6}  {'first token':>11}  {'prompt tok/s':>12}  {'decode tok/s':>12}  {'generated':>9}  {'peak memory':>11}")
rows = []
for run in range(1, RUNS + 1):
    s = model.generate(prompt, max_tokens=DECODE_TOKENS, temperature=0.0).stats
    rows.append(s)
    print(
        f"{run:>6}  {s.time_to_first_token:>9.2f} s  {s.prompt_tps:>12.1f}  {s.decode_tps:>12.1f}  "
        f"{s.generated_tokens:>9}  {s.peak_memory / 2**20:>7.0f} MiB",
        flush=True,
    )


def median(field):
    return statistics.median(getattr(s, field) for s in rows)


print(
    f"{'median':>6}  {median('time_to_first_token'):>9.2f} s  {median('prompt_tps'):>12.1f}  "
    f"{median('decode_tps'):>12.1f}  {median('generated_tokens'):>9.0f}  {median('peak_memory') / 2**20:>7.0f} MiB"
)
