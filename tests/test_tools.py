"""Tool calling: tools described to the model, calls parsed and streamed, act() rounds, bad arguments, errors.

Real templates (Qwen3's renders tools; the Llama 3.1 asset's does not, so it
gets the generic format) with tiny random weights; scripted logits
processors make the model write the calls. And the real SmolLM2 (generic
format), where a required call is constrained by the grammar.
"""

from __future__ import annotations

import json
from typing import Literal

import mlx.core as mx
import pytest

import mlx_local
from mlx_local._tools import Tool, ToolCall
from mlx_local.errors import ChatError, InvalidOptionError

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: the city's name, e.g. Paris.
        unit: celsius or fahrenheit.
    """
    return f"22 degrees {unit} and sunny in {city}"


def switch(mode: Literal["on", "off"], room: Literal["kitchen", "hall"] = "hall") -> str:
    """Switch the lights.

    Args:
        mode: on or off.
        room: which room.
    """
    return f"lights {mode} in the {room}"


def broken(x: int) -> int:
    """Always fails."""
    raise RuntimeError("the sensor is offline")


class Writes:
    """Makes the model write each text of `texts` in turn, one per generation, then end its turn."""

    def __init__(self, model, *texts, end="<|im_end|>"):
        tok = model.tokenizer
        self.seqs = [self._ids(tok, t) + [tok.convert_tokens_to_ids(end)] for t in texts]
        self.turn, self.i, self.seen = -1, 0, -2

    @staticmethod
    def _ids(tok, text):
        out = []
        for piece in text.split("\x00"):  # \x00 separates special tokens written by name
            if piece.startswith("<") and piece.endswith(">") and tok.convert_tokens_to_ids(piece) not in (None, tok.unk_token_id):
                out.append(tok.convert_tokens_to_ids(piece))
            elif piece:
                out += tok.encode(piece, add_special_tokens=False)
        return out

    def __call__(self, tokens, logits):
        if len(tokens) != self.seen + 1:  # a new generation (mlx-lm passes prompt + tokens so far)
            self.turn, self.i = self.turn + 1, 0
        self.seen = len(tokens)
        seq = self.seqs[min(self.turn, len(self.seqs) - 1)]
        token = seq[min(self.i, len(seq) - 1)]
        self.i += 1
        mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
        return mx.put_along_axis(mask, mx.array([[token]]), mx.zeros((1, 1), logits.dtype), axis=-1)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("tq") / "qwen3", "qwen3", seed=6))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("tl") / "llama", "llama", seed=6))


QWEN_CALL = '\x00<tool_call>\x00\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n\x00</tool_call>\x00'


def test_schema_from_type_hints_and_docstring():
    tool = Tool.of(get_weather)
    assert tool.name == "get_weather" and tool.description == "Get the current weather in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city's name, e.g. Paris."},
                       "unit": {"type": "string", "description": "celsius or fahrenheit."}},
        "required": ["city"],
    }  # fmt: skip
    spec = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    assert Tool.of(spec).spec()["function"]["name"] == "f"
    assert Tool.of(get_weather).check({"city": 3}) and Tool.of(get_weather).check({"city": "Rome"}) is None


def test_template_renders_tools_and_calls_are_parsed_and_streamed(qwen3):
    chat = qwen3.chat(thinking=False, max_tokens=60)
    script = Writes(qwen3, "Let me check." + QWEN_CALL)
    chunks = list(chat.stream("Weather in Paris?", tools=[get_weather], logits_processors=[script]))
    reply = chat.replies[-1]
    assert reply.tool_format == "template" and reply.finish_reason == "tool_calls"
    assert reply.tool_calls == (ToolCall("call_0", "get_weather", {"city": "Paris"}),)
    assert reply.content == "Let me check."
    streamed = "".join(c.text for c in chunks if c.kind == "tool_call")
    assert json.loads(streamed) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert chunks[-1].tool_calls == reply.tool_calls
    prompt = qwen3.tokenizer.decode(qwen3.template.prompt(chat.messages[:1], tools=[Tool.of(get_weather).spec()]).ids)
    assert "<tools>" in prompt and "get_weather" in prompt  # the template's own tool section
    assert chat.messages[-1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_act_runs_tools_feeds_results_back_and_records_rounds(qwen3):
    chat = qwen3.chat(thinking=False, max_tokens=60)
    script = Writes(qwen3, QWEN_CALL, "It is sunny.")
    reply = chat.act("Weather in Paris?", [get_weather], logits_processors=[script])
    assert reply.content == "It is sunny." and reply.finish_reason == "stop"
    assert len(reply.rounds) == 1 and reply.rounds[0].tool_calls[0].name == "get_weather"
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert chat.messages[2]["content"] == "22 degrees celsius and sunny in Paris" and chat.messages[2]["tool_call_id"] == "call_0"


def test_tool_errors_and_bad_arguments_reach_the_model(qwen3):
    chat = qwen3.chat(thinking=False, max_tokens=80)
    bad_args = QWEN_CALL.replace('{"city": "Paris"}', '{"city": 12}')
    raises = '\x00<tool_call>\x00\n{"name": "broken", "arguments": {"x": 1}}\n\x00</tool_call>\x00'
    unknown = '\x00<tool_call>\x00\n{"name": "nope", "arguments": {}}\n\x00</tool_call>\x00'
    script = Writes(qwen3, bad_args, raises, unknown, "Sorry.")
    reply = chat.act("Weather?", [get_weather, broken], logits_processors=[script])
    results = [m["content"] for m in chat.messages if m["role"] == "tool"]
    assert "do not fit get_weather's parameters" in results[0] and "city" in results[0]
    assert "broken raised RuntimeError: the sensor is offline" in results[1]
    assert "no tool called 'nope'" in results[2]
    assert reply.content == "Sorry." and len(reply.rounds) == 3


def test_max_rounds_ends_with_its_finish_reason(qwen3):
    chat = qwen3.chat(thinking=False, max_tokens=60)
    reply = chat.act("Weather?", [get_weather], max_rounds=2, logits_processors=[Writes(qwen3, QWEN_CALL)])
    assert reply.finish_reason == "max_rounds" and len(reply.rounds) == 2


def test_thinking_then_a_call(qwen3):
    chat = qwen3.chat(thinking=True, max_tokens=80)
    script = Writes(qwen3, "\x00<think>\x00\nThe user wants weather.\n\x00</think>\x00\n\n" + QWEN_CALL)
    reply = chat.send("Weather in Paris?", tools=[get_weather], logits_processors=[script])
    assert reply.thinking == "The user wants weather." and reply.tool_calls[0].arguments == {"city": "Paris"}


def test_required_call_is_constrained_to_the_schema(qwen3):
    # Random weights, no script: the grammar alone makes a valid call (enums, so that it must end).
    chat = qwen3.chat(thinking=False, max_tokens=120, temperature=0.0)
    reply = chat.send("Lights?", tools=[switch], tool_choice="required")
    assert reply.finish_reason == "tool_calls", reply.content
    (call,) = reply.tool_calls
    assert call.name == "switch" and Tool.of(switch).check(call.arguments) is None
    for seed in range(3):  # sampled, not only greedy: always a valid call of the named tool
        named = qwen3.chat(thinking=False, max_tokens=120, temperature=1.0, seed=seed).send(
            "x", tools=[get_weather, switch], tool_choice="switch")
        assert [c.name for c in named.tool_calls] == ["switch"] and Tool.of(switch).check(named.tool_calls[0].arguments) is None


def test_generic_format_for_a_template_without_tools(llama):
    chat = llama.chat(max_tokens=80)
    script = Writes(llama, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', "Cold.",
                    end="<|eot_id|>")  # fmt: skip
    reply = chat.act("Weather in Oslo?", [get_weather], logits_processors=[script])
    assert reply.rounds[0].tool_format == "generic" and reply.rounds[0].tool_calls[0].arguments == {"city": "Oslo"}
    assert reply.content == "Cold."
    rendered = llama.tokenizer.decode(llama.template.prompt(chat.messages[:1]).ids)
    assert "get_weather" not in rendered  # plain messages carry no tools; the toolset adds them per call


def test_undo_save_and_load_understand_tool_turns(qwen3, tmp_path):
    chat = qwen3.chat(thinking=False, max_tokens=60)
    chat.act("Weather in Paris?", [get_weather], logits_processors=[Writes(qwen3, QWEN_CALL, "Sunny.")])
    path = chat.save(tmp_path / "tools.json")
    loaded = mlx_local.Chat.load(path, qwen3)
    assert loaded.messages == chat.messages and loaded.replies[-1].rounds[0].tool_calls == chat.replies[-1].rounds[0].tool_calls
    loaded.undo()
    assert loaded.messages == []


def test_bad_tool_input(qwen3):
    chat = qwen3.chat()
    for tools, match in (([], "non-empty list"), ([lambda x: x], "lambda"), ([get_weather, get_weather], "share a name"),
                         ([{"type": "function", "function": {}}], "OpenAI-style")):  # fmt: skip
        with pytest.raises(InvalidOptionError, match=match):
            chat.send("hi", tools=tools)
    with pytest.raises(InvalidOptionError, match="tool_choice='sometimes'"):
        chat.send("hi", tools=[get_weather], tool_choice="sometimes")
    with pytest.raises(InvalidOptionError, match="must be callables"):
        chat.act("hi", [Tool.of(get_weather).spec()])
    with pytest.raises(ChatError, match="no tool call 'call_9'"):
        chat.add_tool_result("call_9", "x")
    assert chat.messages == []


def test_smollm2_act_with_a_required_call(smollm2):
    chat = smollm2.chat(max_tokens=60)
    reply = chat.act("What is the weather in Paris?", [get_weather], tool_choice="required")
    assert reply.rounds and reply.rounds[0].tool_calls[0].name == "get_weather"
    assert reply.rounds[0].tool_calls[0].arguments["city"]
    assert "22" in reply.content  # the tool's result reached the final answer
