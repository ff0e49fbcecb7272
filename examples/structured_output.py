"""Answers that always parse, and a model that calls your functions.

    .venv/bin/python examples/structured_output.py

Runs offline on the embedded default model (SmolLM2-135M-Instruct); set
MLX_LOCAL_MODEL to try another (if it cannot be found or downloaded, the
default answers instead). Four things, each constrained while it is decoded,
so the output cannot fail to parse:

1. ``schema=`` a JSON Schema dict: ``result.parsed`` is the dict.
2. ``schema=`` a pydantic class: ``result.parsed`` is an instance of it.
3. ``choices=``: the answer is exactly one of the given strings.
4. ``chat.act(...)`` with a Python function as a tool and
   ``tool_choice="required"``: the model must call it, mlx_local runs it and
   feeds the result back, and the model answers with it.
"""

import os
import sys

from pydantic import BaseModel

import mlx_local

source = os.environ.get("MLX_LOCAL_MODEL") or None
try:
    model = mlx_local.Model.load(source)
except mlx_local.ModelNotFoundError as e:
    if source is None:
        raise
    print(f"note: {e}\nUsing the embedded default model instead.\n", file=sys.stderr)
    model = mlx_local.Model.load()
print(model)

# 1. A JSON Schema: the answer is compact JSON that matches it; .parsed is the dict.
# The shape is guaranteed, the facts are not: a 135M model is no almanac.
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}
question = "Give the capital of France as JSON with its country and population."
result = model.generate(question, schema=CITY, temperature=0, max_tokens=80)
print(f"\n> {question}\n{result.text}")
print(f"parsed: {result.parsed!r}")


# 2. A pydantic class: the schema comes from the class; .parsed is an instance.
class Place(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


question = "Name a big city in Italy."
result = model.generate(question, schema=Place, temperature=0, max_tokens=60)
print(f"\n> {question}\n{result.text}")
print(f"parsed: {result.parsed!r}")

# 3. Choices: one of these strings, nothing else.
question = "Is Paris in France? Answer yes or no."
result = model.generate(question, choices=["yes", "no"], temperature=0)
print(f"\n> {question}\nchoice: {result.parsed!r}")


# 4. A tool: a plain function; its schema comes from the type hints and the docstring.
def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: the city's name, e.g. Paris.
    """
    return f"22 degrees and sunny in {city}"


question = "What is the weather in Paris?"
chat = model.chat(system="Answer in one short sentence.", temperature=0, max_tokens=60)
reply = chat.act(question, [get_weather], tool_choice="required")
print(f"\n> {question}")
for rnd in reply.rounds:
    for call in rnd.tool_calls:
        print(f"tool call ({rnd.tool_format} format): {call.name}({call.arguments})")
for message in chat.messages:
    if message["role"] == "tool":
        print(f"tool result: {message['content']}")
print(f"answer: {reply.content}")  # a small model often just repeats the result
print(f"[{reply.finish_reason}] after {len(reply.rounds)} round(s) of tool calls")
