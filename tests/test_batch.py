"""Continuous batching: requests decoding together give what each gives alone.

The batch engine (mlx_local._batch) on the real SmolLM2 (greedy answers of
prompts of different lengths, stop strings, max_tokens and eos per request,
log-probabilities, cancel, a request joining mid-run, the prompt cache) and
on a tiny Qwen3 with the real template, where scripted logits processors
make one request call a tool and another think, batched with plain ones.
Then the Worker serving threads and an event loop with batching on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import mlx.core as mx
import pytest

import mlx_local
from mlx_local._batch import BatchEngine, why_alone
from mlx_local._worker import QueueFullError, Worker

from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models

PROMPTS = [
    "Name a colour.",
    "Write one short sentence about the sea, the wind over the mountains and the boats in the harbour at dawn.",
    "What is 2+2? Say it in a word.",
    "List three fruits and say which one you like best.",
]


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _shape(chunks: list[Any]) -> list[tuple[Any, ...]]:
    """Everything a chunk says but its timings."""
    return [(c.text, c.kind, c.token_ids, c.finish_reason, c.tool_calls) for c in chunks]


def _alone(model: mlx_local.Model, request: Any) -> list[Any]:
    return list(model.execute(request))


def _batched(model: mlx_local.Model, requests: list[Any], *, max_concurrency: int = 4,
             join: dict[int, Any] | None = None) -> list[list[Any]]:  # fmt: skip
    """Run `requests` together; `join` maps a step number to a request added then."""
    engine = BatchEngine(model, max_concurrency=max_concurrency)
    outs: list[list[Any]] = [[] for _ in requests]
    for i, r in enumerate(requests):
        engine.add(r, outs[i].append)
    extra = dict(join or {})
    step = 0
    try:
        while engine.active or extra:
            if step in extra:
                outs.append([])
                engine.add(extra.pop(step), outs[-1].append)
            engine.step()
            step += 1
    finally:
        engine.close()
    for out in outs:
        errors = [c for c in out if isinstance(c, BaseException)]
        assert not errors, errors
    return outs


def _text(chunks: Any) -> str:
    return "".join(c.text for c in chunks if c.kind == "content")


# ---------------------------------------------------------------- SmolLM2


def _plain(model: mlx_local.Model, prompt: str) -> Any:
    return model.prepare(_ask(prompt), max_tokens=8, temperature=0.0, reuse_cache=False)


@pytest.fixture(scope="module")
def alone(smollm2: mlx_local.Model) -> list[list[Any]]:
    """Each of PROMPTS answered on its own (greedy, 8 tokens at most)."""
    return [_alone(smollm2, _plain(smollm2, p)) for p in PROMPTS]


def test_greedy_answers_batched_are_those_alone(smollm2: mlx_local.Model, alone: list[list[Any]]):
    def requests() -> list[Any]:
        return [_plain(smollm2, p) for p in PROMPTS]

    batched = _batched(smollm2, requests())
    assert len({len(r.ids) for r in requests()}) == len(PROMPTS)  # different prompt lengths
    for a, b in zip(alone, batched):
        assert _shape(b) == _shape(a)
        assert b[-1].stats.prompt_tokens == a[-1].stats.prompt_tokens
        assert b[-1].stats.generated_tokens == a[-1].stats.generated_tokens
        assert b[-1].stats.time_to_first_token > 0 and b[-1].stats.total_time >= b[-1].stats.time_to_first_token


def test_stop_strings_max_tokens_and_eos_per_request(smollm2: mlx_local.Model):
    question = _ask("What is the capital of France? Answer in one sentence.")
    word = "Paris"

    def requests() -> list[Any]:
        return [
            smollm2.prepare(question, max_tokens=30, temperature=0.0, reuse_cache=False, stop=[word]),
            smollm2.prepare(question, max_tokens=3, temperature=0.0, reuse_cache=False),
            smollm2.prepare(question, max_tokens=30, temperature=0.0, reuse_cache=False),
        ]

    alone = [_alone(smollm2, r) for r in requests()]
    alone_text = _text(alone[2])
    assert word in alone_text
    batched = _batched(smollm2, requests())
    assert [b[-1].finish_reason for b in batched] == ["stop_string", "length", "stop"]
    assert _text(batched[0]) == alone_text[: alone_text.index(word)]
    assert batched[1][-1].stats.generated_tokens == 3
    for a, b in zip(alone, batched):
        assert _shape(b) == _shape(a)


def test_logprobs_batched_match_alone(smollm2: mlx_local.Model):
    def requests() -> list[Any]:
        return [smollm2.prepare(_ask(p), max_tokens=5, temperature=0.0, reuse_cache=False, logprobs=3) for p in PROMPTS[:2]]

    alone = [_alone(smollm2, r) for r in requests()]
    batched = _batched(smollm2, requests())
    for a, b in zip(alone, batched):
        la = [lp for c in a for lp in c.logprobs]
        lb = [lp for c in b for lp in c.logprobs]
        assert len(lb) == len(la) == b[-1].stats.generated_tokens
        for x, y in zip(la, lb):
            assert y.token == x.token and [t for t, _ in y.top] == [t for t, _ in x.top]
            assert y.logprob == pytest.approx(x.logprob, abs=1e-3)


def test_cancel_one_and_a_request_joining_mid_run(smollm2: mlx_local.Model, alone: list[list[Any]]):
    engine = BatchEngine(smollm2, max_concurrency=4)
    outs: list[list[Any]] = [[], [], []]
    counting = smollm2.prepare(_ask("Count from one to a hundred."), max_tokens=200, temperature=0.0, reuse_cache=False)
    victim = engine.add(counting, outs[0].append)
    engine.add(_plain(smollm2, PROMPTS[0]), outs[1].append)
    steps = 0
    try:
        while engine.active:
            engine.step()
            steps += 1
            if steps == 3:
                assert engine.cancel(victim) and not engine.cancel(victim)
                engine.add(_plain(smollm2, PROMPTS[1]), outs[2].append)  # joins while the other decodes
    finally:
        engine.close()
    assert outs[0] and all(c.finish_reason is None for c in outs[0])  # cut off, no last chunk
    assert _shape(outs[1]) == _shape(alone[0])
    assert _shape(outs[2]) == _shape(alone[1])


def test_the_prompt_cache_serves_a_batched_request(smollm2: mlx_local.Model):
    smollm2.prompt_cache.clear()
    first = _batched(smollm2, [smollm2.prepare(_ask(PROMPTS[2]), max_tokens=8, temperature=0.0)])[0]
    grown = [*_ask(PROMPTS[2]), {"role": "assistant", "content": _text(first)}, {"role": "user", "content": "And 3+3?"}]
    fresh = _alone(smollm2, smollm2.prepare(grown, max_tokens=8, temperature=0.0, reuse_cache=False))
    second, other = _batched(smollm2, [smollm2.prepare(grown, max_tokens=8, temperature=0.0),
                                       smollm2.prepare(_ask(PROMPTS[0]), max_tokens=4, temperature=0.0)])  # fmt: skip
    stats = second[-1].stats
    assert stats.cached_tokens >= len(smollm2.encode(_ask(PROMPTS[2]))) - 1
    assert stats.cached_tokens < stats.prompt_tokens == fresh[-1].stats.prompt_tokens
    assert _shape(second) == _shape(fresh)
    assert len(smollm2.prompt_cache) >= 1 and other[-1].stats.cached_tokens == 0


# ---------------------------------------------------------------- tiny Qwen3: tools and thinking


def _force(logits: Any, token_id: int) -> Any:
    mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
    return mx.put_along_axis(mask, mx.array([[token_id]]), mx.zeros((1, 1), logits.dtype), axis=-1)


class Writes:
    """Makes the model write `ids`, one per call, then end its turn."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.calls = ids, 0

    def __call__(self, tokens: Any, logits: Any) -> Any:
        i, self.calls = self.calls, self.calls + 1
        return _force(logits, self.ids[min(i, len(self.ids) - 1)])


def _ids(model: mlx_local.Model, *pieces: str) -> list[int]:
    """Token ids of `pieces`: special tokens by name, text encoded."""
    tok = model.tokenizer
    out: list[int] = []
    for piece in pieces:
        special = tok.convert_tokens_to_ids(piece)
        if piece.startswith("<") and special not in (None, tok.unk_token_id):
            out.append(special)
        else:
            out += tok.encode(piece, add_special_tokens=False)
    return out


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: the city's name.
    """
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: Any) -> mlx_local.Model:
    return mlx_local.Model.load(write_tiny_model(tmp_path_factory.mktemp("bq") / "qwen3", "qwen3", seed=11))


def test_a_tool_call_and_a_thinking_request_batched_with_plain_ones(qwen3: mlx_local.Model):
    call = _ids(qwen3, "Let me check.", "<tool_call>", '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
                "</tool_call>", "<|im_end|>")  # fmt: skip
    think = _ids(qwen3, "<think>", "Two and two", "</think>", "Four.", "<|im_end|>")

    def requests() -> list[Any]:
        return [
            qwen3.prepare(_ask("Weather in Paris?"), tools=[get_weather], thinking=False, max_tokens=40,
                          logits_processors=[Writes(call)], reuse_cache=False),
            qwen3.prepare(_ask("What is 2+2?"), thinking=True, max_tokens=20, logits_processors=[Writes(think)],
                          reuse_cache=False),
            qwen3.prepare(_ask("Hello"), thinking=False, max_tokens=12, temperature=0.0, reuse_cache=False),
            qwen3.prepare(_ask("Something longer to say hello with"), thinking=False, max_tokens=7, temperature=0.0,
                          reuse_cache=False),
        ]  # fmt: skip

    alone = [_alone(qwen3, r) for r in requests()]
    batched = _batched(qwen3, requests())
    for a, b in zip(alone, batched):
        assert _shape(b) == _shape(a)
    tool, thought = batched[0], batched[1]
    assert tool[-1].finish_reason == "tool_calls" and tool[-1].tool_calls[0].name == "get_weather"
    assert tool[-1].tool_calls[0].arguments == {"city": "Paris"}
    assert _text(tool) == "Let me check."
    assert "".join(c.text for c in thought if c.kind == "thinking") == "Two and two"
    assert _text(thought) == "Four." and thought[-1].stats.thinking_tokens > 0


def test_a_failing_processor_fails_its_request_only(qwen3: mlx_local.Model):
    def broken(tokens: Any, logits: Any) -> Any:
        raise RuntimeError("a processor failed")

    plain = qwen3.prepare(_ask("Hello"), thinking=False, max_tokens=6, temperature=0.0, reuse_cache=False)
    alone = _alone(qwen3, qwen3.prepare(_ask("Hello"), thinking=False, max_tokens=6, temperature=0.0, reuse_cache=False))
    engine = BatchEngine(qwen3)
    bad: list[Any] = []
    good: list[Any] = []
    engine.add(qwen3.prepare(_ask("Hi"), max_tokens=6, logits_processors=[broken], reuse_cache=False), bad.append)
    engine.add(plain, good.append)
    while engine.active:
        engine.step()
    engine.close()
    assert len(bad) == 1 and isinstance(bad[0], RuntimeError)
    assert _shape(good) == _shape(alone)


def test_which_requests_run_alone(qwen3: mlx_local.Model):
    assert why_alone(qwen3, qwen3.prepare(_ask("a"), temperature=0.0, seed=3)) is None  # greedy: the seed is moot
    assert why_alone(qwen3, qwen3.prepare(_ask("a"), temperature=0.7)) is None
    reason = why_alone(qwen3, qwen3.prepare(_ask("a"), temperature=0.7, seed=3))
    assert reason is not None and "seed" in reason
    with pytest.raises(mlx_local.InvalidOptionError, match="max_concurrency"):
        BatchEngine(qwen3, max_concurrency=0)


# ---------------------------------------------------------------- the Worker, batching


def test_the_worker_decodes_concurrent_requests_together(smollm2: mlx_local.Model, alone: list[list[Any]]):
    worker = Worker(smollm2, max_concurrency=4, max_queue=5)
    try:
        handles = [worker.submit(_plain(smollm2, p)) for p in PROMPTS]
        seeded = worker.submit(smollm2.prepare(_ask(PROMPTS[0]), max_tokens=6, temperature=0.8, seed=5, reuse_cache=False))
        with pytest.raises(QueueFullError):
            worker.submit(_plain(smollm2, PROMPTS[0]))
        results: dict[int, list[Any]] = {}
        ended: dict[int, float] = {}

        def read(i: int) -> None:
            results[i] = list(handles[i])
            ended[i] = time.perf_counter()

        threads = [threading.Thread(target=read, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()

        async def read_seeded() -> str:
            return "".join([c.text async for c in seeded if c.kind == "content"])

        seeded_text = asyncio.run(read_seeded())
        for t in threads:
            t.join(120)
        assert [_shape(results[i]) for i in range(len(PROMPTS))] == [_shape(a) for a in alone]
        firsts = [h.first_chunk for h in handles]
        assert all(f is not None for f in firsts)
        assert max(firsts) < min(ended.values())  # type: ignore[type-var]  # they ran together, not one after another
        again = smollm2.prepare(_ask(PROMPTS[0]), max_tokens=6, temperature=0.8, seed=5, reuse_cache=False)
        assert seeded_text == _text(_alone(smollm2, again))  # run alone: reproducible
        assert worker.pending == 0
    finally:
        worker.close()


def test_the_worker_cancels_one_batched_request(smollm2: mlx_local.Model, alone: list[list[Any]]):
    worker = Worker(smollm2, max_concurrency=4)
    try:
        long = worker.submit(smollm2.prepare(_ask("Count from one to a thousand."), max_tokens=300, temperature=0.0,
                                             stop_loops=False, reuse_cache=False))  # fmt: skip
        short = worker.submit(_plain(smollm2, PROMPTS[2]))
        n = 0
        for _ in long:
            n += 1
            if n == 2:
                long.cancel()
        assert n <= 6
        assert _shape(list(short)) == _shape(alone[2])
    finally:
        worker.close()
