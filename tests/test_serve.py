"""The OpenAI-compatible server, through the official ``openai`` client and raw HTTP, on real uvicorn servers.

One server per model for the module (SmolLM2, the real chat model; a tiny
Qwen3 with the real Qwen3 template, driven by scripted logits so that it
thinks deterministically). Short answers keep it quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from pydantic import BaseModel

import mlx_local
from mlx_local._serve_app import create_app

from serve_server import Scripts, Thinker, running
from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models behind real servers

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(smollm2, smollm2_gguf):
    app = create_app(smollm2, source=str(smollm2_gguf), keep_alive="1s")
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(smol):
    from openai import OpenAI  # here, not at the top: importing openai costs every worker ~1 s of collection

    return OpenAI(base_url=smol[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    model = mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("sq") / "qwen3", "qwen3", seed=11))
    thinkers = Scripts(model, lambda: Thinker(model))
    from openai import OpenAI

    with running(create_app(model, allow_load=False)) as url:
        yield OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60), model, thinkers


def test_plain_answer(client, smollm2):
    r = client.chat.completions.create(model="default", messages=CAPITAL, temperature=0, max_tokens=30)
    choice = r.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and r.model == smollm2.name and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(smollm2.encode(CAPITAL)) and 0 < r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model=smollm2.name, messages=CAPITAL, temperature=0, max_tokens=30)
    assert again.choices[0].message.content == choice.message.content  # by its own name too


def test_streamed_deltas_join_to_the_whole_answer(client):
    ask = dict(model="default", messages=[{"role": "user", "content": "Tell me a story about a cat."}],
               temperature=0.8, seed=7, max_tokens=16)  # fmt: skip
    whole = client.chat.completions.create(**ask)
    events = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == whole.choices[0].message.content and len(text) > 10
    finishes = [e.choices[0].finish_reason for e in events if e.choices and e.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert events[-1].choices == [] and events[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({e.id for e in events}) == 1


def test_raw_stream_is_server_sent_events_ending_in_done(smol):
    body = {"model": "default", "messages": CAPITAL, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", smol[0] + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert "usage" not in json.loads(lines[-2][6:])  # only with stream_options.include_usage


def test_cached_tokens_across_a_growing_conversation(client):
    convo = [{"role": "system", "content": "You are a geography teacher, terse."}, *CAPITAL]
    first = client.chat.completions.create(model="default", messages=convo, temperature=0, max_tokens=16)
    convo += [{"role": "assistant", "content": first.choices[0].message.content},
              {"role": "user", "content": "And of Italy?"}]  # fmt: skip
    second = client.chat.completions.create(model="default", messages=convo, temperature=0, max_tokens=16)
    assert first.usage.prompt_tokens_details.cached_tokens < 10  # at most the template's opening: a new system prompt
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens


def test_logprobs(client):
    r = client.chat.completions.create(model="default", messages=CAPITAL, temperature=0, max_tokens=10,
                                       logprobs=True, top_logprobs=3)  # fmt: skip
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries).startswith(r.choices[0].message.content)
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and e.bytes == list(e.token.encode())
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)  # greedy: the best is the one taken
    events = client.chat.completions.create(model="default", messages=CAPITAL, temperature=0, max_tokens=10,
                                            logprobs=True, top_logprobs=3, stream=True)  # fmt: skip
    streamed = [x for e in events if e.choices and e.choices[0].logprobs for x in e.choices[0].logprobs.content]
    assert [(x.token, round(x.logprob, 4)) for x in streamed] == [(x.token, round(x.logprob, 4)) for x in entries]


def test_structured_output_parse(client):
    class City(BaseModel):
        city: str
        country: str

    r = client.chat.completions.parse(model="default", messages=[{"role": "user", "content": "The capital of France, as JSON."}],
                                      response_format=City, temperature=0, max_tokens=40)  # fmt: skip
    assert isinstance(r.choices[0].message.parsed, City) and r.choices[0].finish_reason == "stop"
    obj = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "A JSON object about Paris."}],
                                         response_format={"type": "json_object"}, temperature=0, max_tokens=40)  # fmt: skip
    assert obj.choices[0].finish_reason == "stop" and isinstance(json.loads(obj.choices[0].message.content), dict)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


def test_tool_call_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="default", messages=ask, tools=[WEATHER], tool_choice="required",
                                       temperature=0, max_tokens=40)  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # streamed: the same call, in deltas carrying its index
    events = list(client.chat.completions.create(model="default", messages=ask, tools=[WEATHER], tool_choice="required",
                                                 temperature=0, max_tokens=40, stream=True))  # fmt: skip
    deltas = [d for e in events if e.choices for d in (e.choices[0].delta.tool_calls or [])]
    assert deltas and {d.index for d in deltas} == {0}
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [d.function.name for d in deltas if d.function.name] == ["get_weather"]
    assert events[-1].choices[0].finish_reason == "tool_calls"
    # the result goes back; the model answers
    ask += [choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}]  # fmt: skip
    answer = client.chat.completions.create(model="default", messages=ask, tools=[WEATHER], temperature=0, max_tokens=6)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")


def test_reasoning_fields_apart_from_the_answer(qwen):
    client, model, thinkers = qwen
    r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "2+2?"}], max_tokens=30)
    message = r.choices[0].message
    assert message.content == "The answer is four."
    assert message.reasoning_content == message.reasoning and message.reasoning.split() == ["hmm"] * 3
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    events = list(client.chat.completions.create(model="default", messages=[{"role": "user", "content": "2+2?"}],
                                                 max_tokens=30, stream=True))  # fmt: skip
    deltas = [e.choices[0].delta for e in events if e.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == message.reasoning
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == message.reasoning
    assert "".join(d.content or "" for d in deltas) == "The answer is four."


@pytest.mark.parametrize("switch", [{"reasoning_effort": "none"}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}])
def test_thinking_switched_off(qwen, switch):
    client, model, thinkers = qwen
    r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "2+2?"}], max_tokens=30, **switch)
    assert r.choices[0].message.content == "The answer is four."
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    assert "<think>\n\n</think>" in model.tokenizer.decode(thinkers.last.prompt)  # the template's own switch


def test_thinking_budget_extension_and_effort(qwen):
    client, model, thinkers = qwen
    thinkers.make = lambda: Thinker(model, think_for=None)  # thinks until the budget closes the block
    try:
        r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "2+2?"}], max_tokens=60,
                                           extra_body={"thinking_budget": 2})  # fmt: skip
        assert r.choices[0].message.reasoning_content.count("hmm") == 2
        assert r.choices[0].message.content == "The answer is four."
        low = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "2+2?"}], max_tokens=30,
                                             reasoning_effort="low")  # fmt: skip
        assert low.choices[0].finish_reason == "length"  # a budget of 512 is not hit in 30 tokens
        assert low.choices[0].message.reasoning_content.count("hmm") > 20
    finally:
        thinkers.make = lambda: Thinker(model)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_incoming_assistant_reasoning_reaches_the_template(qwen, field):
    client, model, thinkers = qwen
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", field: "I should call the tool first.",
                 "tool_calls": [{"id": "call_0", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "22 degrees"}]  # fmt: skip
    r = client.chat.completions.create(model="default", messages=messages, tools=[WEATHER], max_tokens=30)
    assert r.choices[0].message.content == "The answer is four."
    prompt = model.tokenizer.decode(thinkers.last.prompt)
    assert "I should call the tool first." in prompt and '"city": "Paris"' in prompt and "22 degrees" in prompt


def test_text_completions(client, smollm2):
    r = client.completions.create(model="default", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(smollm2.encode("The capital of France is", raw=True))
    streamed = "".join(e.choices[0].text for e in client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if e.choices)  # fmt: skip
    assert streamed == r.choices[0].text


def test_models_listed_loaded_on_demand_and_unloaded_when_idle(client, smol, smollm2, smollm2_gguf, tmp_path, monkeypatch):
    url, app = smol
    ids = {m.id: m for m in client.models.list().data}
    assert smollm2.name in ids and ids[smollm2.name].model_extra["loaded"] is True
    assert client.models.retrieve("default").id == smollm2.name
    by_file = client.chat.completions.create(model=str(smollm2_gguf), messages=CAPITAL, max_tokens=2)
    assert by_file.model == smollm2.name and len(app.state.registry.loaded()) == 1  # the same model, not a second copy
    monkeypatch.setenv("MLX_LOCAL_MODELS", str(tmp_path))
    write_tiny_model(tmp_path / "tiny-llama", "llama", seed=3)
    listed = {m.id: m.model_extra["loaded"] for m in client.models.list().data}
    assert listed["tiny-llama"] is False  # on disk, not loaded
    r = client.chat.completions.create(model="tiny-llama", messages=CAPITAL, max_tokens=3)
    assert r.model == "tiny-llama" and r.usage.completion_tokens <= 3
    assert {m.id: m.model_extra["loaded"] for m in client.models.list().data}["tiny-llama"] is True
    deadline = time.monotonic() + 20
    while {m.id: m.model_extra["loaded"] for m in client.models.list().data}["tiny-llama"]:
        assert time.monotonic() < deadline, "the idle model was not unloaded after keep_alive (1 s)"
        time.sleep(0.3)
    assert app.state.registry.find("default").model is smollm2  # the start model stays
    absent = httpx.post(url + "/v1/chat/completions", json={"model": "qwen3-0.6b", "messages": CAPITAL}, timeout=30)
    assert absent.status_code == 404 and "mlx-local pull qwen3-0.6b" in absent.json()["error"]["message"]  # no download


def test_concurrent_requests_get_their_own_answers(client):
    prompts = ["Name a colour.", "Name an animal."]
    alone = [client.chat.completions.create(model="default", messages=[{"role": "user", "content": p}], temperature=0.7,
                                            seed=i, max_tokens=8).choices[0].message.content for i, p in enumerate(prompts)]  # fmt: skip
    together: list[str | None] = [None] * len(prompts)

    def ask(i: int) -> None:
        together[i] = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompts[i]}],
                                                     temperature=0.7, seed=i, max_tokens=8).choices[0].message.content  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone


def test_no_cors_headers_unless_asked(smol):
    r = httpx.get(smol[0] + "/v1/models", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(smol[0] + "/v1/chat/completions", headers={"Origin": "http://evil.example",
                                                                    "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in pre.headers


def test_the_command_serves(tmp_path):
    import socket

    folder = write_tiny_model(tmp_path / "tiny-llama", "llama", seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlx_local", "serve", "-m", str(folder), "--port", str(port),
                             "--api-key", "sekrit"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        from openai import OpenAI

        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekrit", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="default", messages=CAPITAL, max_tokens=3)
        assert r.model == "tiny-llama" and r.usage.completion_tokens <= 3
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode in (0, -15)
    assert f"http://127.0.0.1:{port}/v1" in proc.stderr.read()  # it says where it listens


# ------------------------------------------------------------------ /v1/responses


def test_responses_text_whole_and_streamed(client):
    ask = dict(model="default", input="What is the capital of France?", max_output_tokens=20, temperature=0)
    r = client.responses.create(**ask)
    assert r.status == "completed" and "Paris" in r.output_text and r.object == "response"
    assert r.usage.input_tokens > 0 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    events = list(client.responses.create(**ask, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert [e.sequence_number for e in events] == sorted({e.sequence_number for e in events})
    assert events[-1].response.output_text == r.output_text
    cut = client.responses.create(**{**ask, "max_output_tokens": 2})
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_responses_function_call_round_trip(client):
    tool = {"type": "function", **WEATHER["function"]}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(model="default", input=ask, tools=[tool], tool_choice="required", temperature=0,
                                max_output_tokens=40)  # fmt: skip
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    events = list(client.responses.create(model="default", input=ask, tools=[tool], tool_choice="required",
                                          temperature=0, max_output_tokens=40, stream=True))  # fmt: skip
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == call.arguments
    follow = ask + [call.model_dump(exclude_none=True), {"type": "function_call_output", "call_id": call.call_id,
                                                         "output": "22 degrees and sunny"}]  # fmt: skip
    answer = client.responses.create(model="default", input=follow, tools=[tool], temperature=0, max_output_tokens=6)
    assert answer.output_text


def test_responses_reasoning(qwen):
    client, model, thinkers = qwen
    r = client.responses.create(model="default", input="2+2?", max_output_tokens=30)
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"] and r.output_text == "The answer is four."
    assert r.output[0].content[0].text.split() == ["hmm"] * 3 and r.usage.output_tokens_details.reasoning_tokens == 3
    events = list(client.responses.create(model="default", input="2+2?", max_output_tokens=30, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == r.output[0].content[0].text
    off = client.responses.create(model="default", input="2+2?", max_output_tokens=30, reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"]


def test_responses_bad_input(smol):
    url = smol[0] + "/v1/responses"
    for body, param in (({"model": "default", "input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
                        ({"model": "default", "input": [{"type": "image", "url": "x"}]}, "input[0].type"),
                        ({"model": "default", "input": "Hi", "max_output_tokens": -1}, "max_output_tokens"),
                        ({"model": "default", "input": "Hi", "reasoning": {"effort": "high"}}, "reasoning.effort"),
                        ({"model": "default", "input": 7}, "input")):  # fmt: skip
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
