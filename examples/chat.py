"""A multi-turn chat, with thinking shown apart when the model thinks.

    .venv/bin/python examples/chat.py
    MLX_LOCAL_MODEL=Qwen/Qwen3-0.6B .venv/bin/python examples/chat.py   # a thinking model

Runs offline on the embedded default model (SmolLM2-135M-Instruct, which does
not think); with a Qwen3 model each answer's reasoning is printed dimmed, and
the last question is asked with a thinking budget of 64 tokens.
"""

import os

import mlx_local

model = mlx_local.Model.load(os.environ.get("MLX_LOCAL_MODEL"))
chat = model.chat(system="You are a helpful assistant.", max_tokens=100)
thinks = chat.support != "none"

questions = ["I have a dog called Biscuit.", "What is the capital of France?", "What is my dog called?"]
for i, question in enumerate(questions):
    print(f"\n> {question}")
    budget = {"thinking_budget": 64} if thinks and i == len(questions) - 1 else {}
    for chunk in chat.stream(question, **budget):
        if chunk.kind == "thinking":
            print(f"\033[2m{chunk.text}\033[0m", end="", flush=True)
        else:
            print(chunk.text, end="", flush=True)
    reply = chat.replies[-1]
    note = ", thinking budget hit" if reply.thinking_budget_hit else ""
    print(f"\n[{reply.finish_reason}{note}; {reply.stats.cached_tokens} of {reply.stats.prompt_tokens} prompt tokens from the cache]")
