"""Thinking mode with a thinking budget, and what happens on a model that cannot think.

    .venv/bin/python examples/chat_thinking.py
    MLX_LOCAL_MODEL=qwen3-0.6b .venv/bin/python examples/chat_thinking.py   # after mlx_local.pull("qwen3-0.6b")

With a thinking model (Qwen3, an R1 distill, ...) the first answer is reasoned
about in at most 64 thinking tokens (then the library closes the think block
and the model answers), the reasoning printed apart from the answer; the
second turn is asked without thinking. The embedded default model
(SmolLM2-135M-Instruct) cannot think: the script then shows the error that
asking it to think raises, and holds an ordinary two-turn chat. Offline either
way; a model that cannot be found falls back to the default.
"""

import os
import sys

import mlx_local

BUDGET = 64
source = os.environ.get("MLX_LOCAL_MODEL") or None
try:
    model = mlx_local.Model.load(source)
except mlx_local.ModelNotFoundError as e:
    if source is None:
        raise
    print(f"note: {e}\nUsing the embedded default model instead.\n", file=sys.stderr)
    model = mlx_local.Model.load()
print(model)


def turn(chat, question, **options):
    """Stream one answer, the thinking marked apart from it, then a line about the reply."""
    print(f"\n> {question}\n")
    kind = "content"
    for chunk in chat.stream(question, **options):
        if chunk.kind != kind:  # the thinking comes first, then the answer
            kind = chunk.kind
            print("[thinking] " if kind == "thinking" else "\n[answer] ", end="")
        print(chunk.text, end="", flush=True)
    reply = chat.replies[-1]
    s = reply.stats
    line = f"\n[{reply.finish_reason}] answer: {s.answer_tokens} tokens at {s.decode_tps:.1f} tok/s"
    if chat.support != "none":
        thought = "None" if reply.thinking is None else f"{len(reply.thinking)} characters"
        line += (
            f" | thinking: {s.thinking_tokens} tokens (budget {chat.thinking_budget}, "
            f"budget hit: {reply.thinking_budget_hit}) | reply.thinking: {thought}"
        )
    print(line)
    return reply


chat = model.chat(max_tokens=256)
print(f"\nThinking support: {chat.support!r}")  # "none", "switchable" (Qwen3) or "always" (R1 distills)

if chat.support == "none":
    print(f"{model.name} cannot think. Asking it to:")
    try:
        model.chat(thinking=True, thinking_budget=BUDGET)
    except mlx_local.InvalidOptionError as e:
        print(f"  InvalidOptionError (option {e.option!r}): {e}")
    print("\nAn ordinary chat instead:")
    chat = model.chat(system="You are a helpful assistant.", max_tokens=100)
    turn(chat, "What is the capital of France?")
    turn(chat, "Name a famous landmark in that city.")
else:
    # seed: the same run gives the same answers (Qwen3 samples at temperature 0.6 when thinking).
    chat = model.chat(thinking=True, thinking_budget=BUDGET, max_tokens=256, seed=0)
    turn(chat, "A bat and a ball cost $1.10 together. The bat costs $1.00 more than the ball. How much is the ball?")
    # No thinking for this one: thinking=False on the turn (or "/no_think" at the end of a Qwen3 message).
    turn(chat, "What is the capital of France? Answer in one sentence.", thinking=False, max_tokens=60)
