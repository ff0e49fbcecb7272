"""The server under bad input, raw HTTP: each gets its status and an error in OpenAI's shape, and the server keeps serving.

One server for the module, with an API key, a small body limit, a queue of
one and a browser origin allowed, serving a tiny Llama whose logits are
scripted to write without end (distinct tokens, so no loop stops it): a
generation ends only by ``max_tokens`` or by being cancelled, which is what
the tests of clients that go away need to see.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

import mlx_local
from mlx_local._serve_app import create_app

from serve_server import Scripts, force, running
from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # a real server with a real (tiny) model

KEY = "sekrit-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
LIMIT = 64 * 1024


class Endless:
    """Writes distinct ordinary tokens for ever; counts the steps it was asked for."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, tokens, logits):
        self.steps += 1
        return force(logits, 1000 + (self.steps * 7919) % 100_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("se") / "tiny-llama", "llama", seed=5))
    scripts = Scripts(model, Endless)
    app = create_app(model, api_key=KEY, max_body_bytes=LIMIT, max_queue=1, cors_origins=["http://app.example"],
                     allow_download=True)  # fmt: skip
    with running(app) as url:
        yield url, app, scripts


def post(server, body, headers=AUTH, path="/v1/chat/completions", **kw):
    return httpx.post(server[0] + path, json=body, headers=headers, timeout=60, **kw)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def wait_idle(app, timeout=10.0):
    worker = app.state.registry.default.worker
    deadline = time.monotonic() + timeout
    while worker.pending:
        assert time.monotonic() < deadline, "the generation was not stopped"
        time.sleep(0.05)


def still_serving(server):
    r = post(server, ASK)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_a_good_request_answers(server):
    r = post(server, ASK)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])  # fmt: skip
def test_missing_or_wrong_api_key(server, headers):
    for r in (post(server, ASK, headers=headers), httpx.get(server[0] + "/v1/models", headers=headers)):
        error = assert_error(r, 401, code="invalid_api_key")
        assert "Bearer" in error["message"] and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}  # health needs no key
    from openai import AuthenticationError, OpenAI  # here: importing openai costs every worker ~1 s of collection

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0).models.list().data


def test_malformed_json(server):
    for raw in (b"{not json", b"", b'{"model": "default", "messages": [', "\xff".encode("latin-1")):
        assert_error(httpx.post(server[0] + "/v1/chat/completions", content=raw, headers=AUTH), 400, code="invalid_json")
    assert_error(post(server, [ASK]), 400, code="invalid_json")  # JSON, but not an object
    still_serving(server)


@pytest.mark.parametrize(("change", "param"), [
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"stream": "yes"}, "stream"),
    ({"model": 3}, "model"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
    ({"stop": [1]}, "stop"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])  # fmt: skip
def test_wrong_types_name_the_field(server, change, param):
    error = assert_error(post(server, {**ASK, **change}), 400, param)
    assert error["message"].startswith(param) and error["type"] == "invalid_request_error"


def test_missing_fields(server):
    assert_error(post(server, {"model": "default"}), 400, "messages", code="missing_field")
    assert_error(post(server, {"messages": ASK["messages"]}), 400, "model", code="missing_field")


@pytest.mark.parametrize(("change", "param"), [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"model": " "}, "model"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": -1}, "temperature"),
    ({"seed": -3}, "seed"),
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),  # the tiny Llama cannot think
    ({"thinking_budget": -1}, "thinking_budget"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, "response_format"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])  # fmt: skip
def test_bad_values_name_the_field(server, change, param):
    assert_error(post(server, {**ASK, **change}), 400, param)


def test_huge_bodies(server):
    big = {**ASK, "messages": [{"role": "user", "content": "x" * (LIMIT + 1)}]}
    error = assert_error(post(server, big), 413, code="body_too_large")
    assert str(LIMIT) in error["message"]

    def chunks():  # no Content-Length: counted as it comes
        yield b'{"model": "default", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 1024 + 1):
            yield b"y" * 1024
        yield b'"}]}'

    assert_error(httpx.post(server[0] + "/v1/chat/completions", content=chunks(), headers=AUTH), 413, code="body_too_large")
    still_serving(server)


def test_max_tokens_is_capped(tmp_path_factory, server):
    url, app, scripts = server
    capped = create_app(app.state.registry.default.model, max_tokens=5)
    with running(capped) as small:
        r = httpx.post(small + "/v1/chat/completions", json={**ASK, "max_tokens": 1000}, timeout=60)
        assert r.json()["usage"]["completion_tokens"] == 5 and r.json()["choices"][0]["finish_reason"] == "length"
        unset = httpx.post(small + "/v1/chat/completions", json={k: v for k, v in ASK.items() if k != "max_tokens"}, timeout=60)
        assert unset.json()["usage"]["completion_tokens"] == 5


def test_unknown_model_and_route(server):
    error = assert_error(post(server, {**ASK, "model": "no-such-model-anywhere"}), 404, "model", code="model_not_found")
    assert "no-such-model-anywhere" in error["message"]
    assert_error(post(server, {**ASK, "model": "/no/such/folder"}), 404, "model", code="model_not_found")
    assert_error(httpx.get(server[0] + "/v1/models/no-such-model", headers=AUTH), 404, "model")
    assert_error(httpx.get(server[0] + "/v1/nothing-here", headers=AUTH), 404, code="unknown_url")
    assert_error(httpx.get(server[0] + "/v1/chat/completions", headers=AUTH), 405)
    still_serving(server)


def test_hub_out_of_reach_is_503(server, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    start = time.monotonic()
    error = assert_error(post(server, {**ASK, "model": "tiny-org/absent"}), 503, "model", code="hub_unreachable")
    assert "could not be reached" in error["message"] and time.monotonic() - start < 30
    still_serving(server)


def test_a_model_that_would_not_fit_is_refused_with_its_estimate(server, tmp_path, monkeypatch):
    other = write_tiny_model(tmp_path / "other-qwen", "qwen3", seed=2)
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "1MB")
    error = assert_error(post(server, {**ASK, "model": str(other)}), 503, "model", code="insufficient_memory")
    assert "needs about" in error["message"] and "KV cache" in error["message"] and "Nothing was unloaded" in error["message"]
    assert [s.name for s in server[1].state.registry.loaded()] == ["tiny-llama"]
    still_serving(server)


def test_client_gone_mid_stream_stops_its_generation(server):
    url, app, scripts = server
    body = {**ASK, "max_tokens": 4096, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        lines = r.iter_lines()
        events = [next(lines) for _ in range(6)]
        assert all(e.startswith("data: ") or e == "" for e in events)
    wait_idle(app)
    steps = scripts.last.steps
    time.sleep(0.5)
    assert scripts.last.steps == steps < 4096  # stopped, and it stays stopped
    still_serving(server)


def test_client_gone_before_a_whole_answer_stops_its_generation(server):
    url, app, scripts = server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={**ASK, "max_tokens": 4096}, headers=AUTH, timeout=1.0)
    wait_idle(app)
    steps = scripts.last.steps
    time.sleep(0.5)
    assert scripts.last.steps == steps < 4096
    still_serving(server)


def test_full_queue_is_429(server):
    url, app, scripts = server
    body = {**ASK, "max_tokens": 4096, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # (kept: a dropped iterator closes the response)
        assert next(lines).startswith("data: ")  # it runs: the queue (of one) is full
        error = assert_error(post(server, ASK), 429, code="queue_full")
        assert "try again" in error["message"]
        assert post(server, ASK).headers["retry-after"] == "1"
    wait_idle(app)
    still_serving(server)


def test_cors_only_for_the_origin_allowed(server):
    allowed = httpx.options(server[0] + "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(server[0] + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in other.headers
    r = post(server, ASK, headers={**AUTH, "Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_text_completion_errors(server):
    assert_error(post(server, {"model": "default", "prompt": 5}, path="/v1/completions"), 400, "prompt")
    assert_error(post(server, {"model": "default", "prompt": ["a", "b"]}, path="/v1/completions"), 400, "prompt")
    assert_error(post(server, {"model": "default", "prompt": ""}, path="/v1/completions"), 400, "prompt")
    r = post(server, {"model": "default", "prompt": "Once", "max_tokens": 3}, path="/v1/completions")
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_errors_never_show_internals(server):
    for r in (post(server, {**ASK, "max_tokens": "ten"}), post(server, {**ASK, "model": "nope-nope"})):
        text = json.dumps(r.json())
        assert "Traceback" not in text and 'File "' not in text


@pytest.mark.parametrize(("flags", "culprit"), [(["--port", "70000"], "--port"), (["--keep-alive", "soon"], "--keep-alive soon"),
                                                (["--max-queue", "0"], "--max-queue")])  # fmt: skip
def test_the_command_checks_its_flags_before_loading(flags, culprit, capsys):
    from mlx_local._cli import main

    start = time.monotonic()
    assert main(["serve", "-m", "/no/such/model", *flags]) == 1
    assert culprit in capsys.readouterr().err and time.monotonic() - start < 5


def test_without_the_server_extra_the_command_says_what_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['fastapi'] = None\n"  # as if FastAPI were not installed
            "import mlx_local._serve as s\n"
            "try:\n    s.create_app()\nexcept ImportError as e:\n    print(e)\n"
            "from mlx_local._cli import main\nsys.exit(main(['serve']))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and 'pip install "mlx-local[server]"' in done.stderr
    assert 'pip install "mlx-local[server]"' in done.stdout


class Fails(Endless):
    """Writes a few tokens, then raises, as a broken logits processor (or a failing kernel) would."""

    def __call__(self, tokens, logits):
        if self.steps >= 3:
            raise RuntimeError("the kernel fell over")
        return super().__call__(tokens, logits)


def test_a_failing_generation_is_a_500_and_the_server_goes_on(server):
    url, app, scripts = server
    scripts.make = Fails
    try:
        error = assert_error(post(server, {**ASK, "max_tokens": 50}), 500)
        assert error["type"] == "server_error" and "kernel" not in error["message"]  # no internals
        with httpx.stream("POST", url + "/v1/chat/completions", json={**ASK, "max_tokens": 50, "stream": True},
                          headers=AUTH, timeout=60) as r:  # fmt: skip
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["error"]["type"] == "server_error"
    finally:
        scripts.make = Endless
    wait_idle(app)
    still_serving(server)


def test_only_loopback_addresses_count_as_private():
    from mlx_local._serve_app import _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "", "192.168.1.5", "example.com"))
