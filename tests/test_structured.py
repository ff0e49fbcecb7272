"""Structured output: answers constrained to a JSON schema, choices or a pattern.

On the real SmolLM2 (what a user gets), and on a tiny Qwen3 with the real
template where a scripted logits processor makes it think first.
"""

from __future__ import annotations

import json

import jsonschema
import mlx.core as mx
import pytest
from pydantic import BaseModel

import mlx_local
from mlx_local.errors import InvalidOptionError, OutputError

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "country", "population"],
}


class City(BaseModel):
    name: str
    country: str


def test_schema_answer_validates_and_is_compact(smollm2):
    result = smollm2.generate("Give the capital of France as JSON with its country and population.",
                              schema=CITY, max_tokens=80)  # fmt: skip
    assert result.finish_reason == "stop"
    value = result.parsed
    jsonschema.validate(value, CITY)
    assert json.loads(result.text) == value
    assert not any(c in result.text for c in "\n\t") and ": " not in result.text  # compact by default


def test_pydantic_class_round_trip(smollm2):
    result = smollm2.generate("Name a big city in Italy.", schema=City, max_tokens=60)
    assert isinstance(result.parsed, City) and result.parsed.name and result.parsed.country


def test_any_json_object_choices_and_pattern(smollm2):
    obj = smollm2.generate("Describe a cat as JSON.", schema="json", max_tokens=60)
    assert obj.finish_reason == "stop" and isinstance(obj.parsed, dict)
    yes = smollm2.generate("Is Paris in France? Answer yes or no.", choices=["yes", "no"])
    assert yes.text in ("yes", "no") and yes.parsed == yes.text
    year = smollm2.generate("In which year did the Second World War end?", pattern=r"[0-9]{4}")
    assert len(year.text) == 4 and year.text.isdigit() and year.finish_reason == "stop"


def test_streamed_text_equals_generated_and_chat_takes_a_schema(smollm2):
    prompt = "Give the capital of Spain as JSON with its country and population."
    streamed = "".join(c.text for c in smollm2.stream(prompt, schema=CITY, max_tokens=80))
    assert streamed == smollm2.generate(prompt, schema=CITY, max_tokens=80).text
    chat = smollm2.chat(max_tokens=80)
    reply = chat.send("Give the capital of Germany as JSON with its country and population.", schema=CITY)
    jsonschema.validate(reply.parsed, CITY)
    assert chat.messages[-1]["content"] == reply.content


def test_cut_by_max_tokens_says_so(smollm2):
    result = smollm2.generate("Describe Paris as JSON.", schema=CITY, max_tokens=4)
    assert result.finish_reason == "length"
    with pytest.raises(OutputError, match="cut short.*max_tokens") as e:
        result.parsed
    assert e.value.text == result.text
    with pytest.raises(InvalidOptionError, match="parsed needs schema"):
        smollm2.generate("Hi", max_tokens=2).parsed


@pytest.mark.parametrize(
    ("kwargs", "match", "option"),
    [
        ({"schema": {"type": "strang"}}, "not a valid JSON Schema", "schema"),
        ({"schema": {"type": "object", "properties": {"a": {"type": "string", "format": "xyz"}}}}, "Unknown format", "schema"),
        ({"schema": 42}, "JSON Schema dict, a pydantic model class", "schema"),
        ({"pattern": "(ab"}, "not a valid regular expression", "pattern"),
        ({"choices": []}, "non-empty list", "choices"),
        ({"choices": ["a", ""]}, "non-empty string", "choices"),
        ({"schema": "json", "pattern": "a+"}, "one of schema, choices or pattern", "pattern"),
    ],
)
def test_bad_constraints_fail_before_any_token(smollm2, kwargs, match, option):
    with pytest.raises(InvalidOptionError, match=match) as e:
        smollm2.stream("Hi", **kwargs)  # raised by the call itself: nothing was generated
    assert e.value.option == option


# ------------------------------------------------------------ thinking first


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("sq") / "qwen3", "qwen3", seed=5))


class ThinkFirst:
    """Forces `<think>`, a few thinking tokens and `</think>`; then leaves the model to the grammar."""

    def __init__(self, model, words=3):
        tok = model.tokenizer
        word = tok.encode(" hmm", add_special_tokens=False)[0]
        self.script = [model.think_tags.start_id] + [word] * words + [model.think_tags.end_id]
        self.calls = 0

    def __getitem__(self, cut):  # the same script, cut (e.g. [:1]: only open the block)
        self.script = self.script[cut]
        return self

    def __call__(self, tokens, logits):
        i, self.calls = self.calls, self.calls + 1
        if i >= len(self.script):
            return logits
        mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
        return mx.put_along_axis(mask, mx.array([[self.script[i]]]), mx.zeros((1, 1), logits.dtype), axis=-1)


def test_thinking_is_free_and_the_answer_constrained(qwen3):
    # The scripted processor runs before the grammar, which lets a think block through untouched.
    chat = qwen3.chat(thinking=True, max_tokens=120, temperature=0.0)
    reply = chat.send("Pick.", choices=["alpha", "beta"], logits_processors=[ThinkFirst(qwen3)])
    assert reply.thinking and "hmm" in reply.thinking
    assert reply.content in ("alpha", "beta") and reply.parsed == reply.content and reply.finish_reason == "stop"


def test_budget_and_schema_together(qwen3):
    # A random-weight model, once in a think block, thinks on; the budget closes the block, then the schema holds.
    chat = qwen3.chat(thinking=True, thinking_budget=5, max_tokens=300, temperature=0.0)
    reply = chat.send("Answer.", schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                              "additionalProperties": False},
                      logits_processors=[ThinkFirst(qwen3, words=0)[:1]])  # fmt: skip
    assert reply.thinking_budget_hit and reply.thinking
    assert reply.finish_reason == "stop", reply.content
    assert isinstance(reply.parsed["ok"], bool)
