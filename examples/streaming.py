"""Stream an answer token by token, then see what it cost.

    .venv/bin/python examples/streaming.py ["your question"]
    MLX_LOCAL_MODEL=Qwen/Qwen3-0.6B .venv/bin/python examples/streaming.py

Runs offline on the embedded default model (SmolLM2-135M-Instruct); set
MLX_LOCAL_MODEL to try another (if it cannot be found or downloaded, the
default answers instead). Text is printed as it comes; the last chunk carries
the stats: time to first token, prompt and decode speed, peak memory. Then the
same with a list of messages, a system prompt first.
"""

import os
import sys

import mlx_local

question = " ".join(sys.argv[1:]) or "What is the capital of France?"
source = os.environ.get("MLX_LOCAL_MODEL") or None
try:
    model = mlx_local.Model.load(source)
except mlx_local.ModelNotFoundError as e:
    if source is None:
        raise
    print(f"note: {e}\nUsing the embedded default model instead.\n", file=sys.stderr)
    model = mlx_local.Model.load()
print(model)


def show(prompt, **options):
    """Print the answer as it streams, then one line of stats."""
    for chunk in model.stream(prompt, max_tokens=100, **options):
        print(chunk.text, end="", flush=True)
        if chunk.stats:
            s = chunk.stats
            print(
                f"\n[{chunk.finish_reason}] time to first token {s.time_to_first_token:.2f} s | "
                f"prompt {s.prompt_tokens} tokens at {s.prompt_tps:.1f} tok/s | "
                f"decode {s.generated_tokens} tokens at {s.decode_tps:.1f} tok/s | "
                f"peak memory {s.peak_memory / 2**20:.0f} MiB"
            )


print(f"\n> {question}\n")
show(question)

# A list of messages works the same way: the chat template places the system prompt.
messages = [
    {"role": "system", "content": "You are a travel guide. Answer in one or two sentences."},
    {"role": "user", "content": "Name one famous landmark in Paris."},
]
print(f"\n> [system] {messages[0]['content']}\n> {messages[1]['content']}\n")
show(messages)
