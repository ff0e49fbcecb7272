"""Model.prepare / execute (a stateless turn) and the Worker that runs requests for callers on other threads.

On the real SmolLM2: a prepared request gives what a Chat with the same
messages gives; a worker serves callers from several threads and from an
event loop in order, refuses when full, stops a cancelled generation, and
survives a failing request.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import mlx_local
from mlx_local._worker import QueueFullError, Worker, WorkerClosedError
from mlx_local.errors import InvalidOptionError

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _text(chunks) -> str:
    return "".join(c.text for c in chunks if c.kind == "content")


def test_a_prepared_request_answers_like_a_chat(smollm2: mlx_local.Model):
    request = smollm2.prepare(QUESTION, max_tokens=12, temperature=0.0, reuse_cache=False)
    assert request.ids == smollm2.encode(QUESTION)
    chunks = list(smollm2.execute(request))
    chat = smollm2.chat(reuse_cache=False)
    reply = chat.send(QUESTION[0]["content"], max_tokens=12, temperature=0.0)
    assert _text(chunks) == reply.content
    assert "Paris" in reply.content
    last = chunks[-1]
    assert last.stats is not None and last.stats.prompt_tokens == len(request.ids)
    assert last.finish_reason in ("stop", "length")


def test_prepare_checks_everything_before_running(smollm2: mlx_local.Model):
    with pytest.raises(InvalidOptionError, match="temperature"):
        smollm2.prepare(QUESTION, temperature=-1)
    with pytest.raises(InvalidOptionError, match="Message 0"):
        smollm2.prepare([{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidOptionError, match="last message"):
        smollm2.prepare([*QUESTION, {"role": "assistant", "content": "Paris."}])
    with pytest.raises(InvalidOptionError, match="cannot think"):
        smollm2.prepare(QUESTION, thinking=True)
    with pytest.raises(InvalidOptionError, match="schema"):
        smollm2.prepare(QUESTION, schema={"type": "no-such-type"})


def test_a_growing_conversation_reuses_the_prompt_cache(smollm2: mlx_local.Model):
    smollm2.prompt_cache.clear()
    first = list(smollm2.execute(smollm2.prepare(QUESTION, max_tokens=8, temperature=0.0)))
    answer = _text(first)
    grown = [*QUESTION, {"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    second = list(smollm2.execute(smollm2.prepare(grown, max_tokens=8, temperature=0.0)))
    stats = second[-1].stats
    assert stats is not None and stats.cached_tokens >= len(smollm2.encode(QUESTION)) - 1
    assert stats.cached_tokens < stats.prompt_tokens


def test_the_worker_serves_threads_with_the_answers_of_one_at_a_time(smollm2: mlx_local.Model):
    prompts = ["Name a colour.", "Name a fruit.", "Name a planet."]
    alone = [_text(smollm2.execute(smollm2.prepare([{"role": "user", "content": p}], max_tokens=6, temperature=0.0,
                                                   reuse_cache=False))) for p in prompts]  # fmt: skip
    worker = Worker(smollm2)
    try:
        handles = [worker.submit(smollm2.prepare([{"role": "user", "content": p}], max_tokens=6, temperature=0.0,
                                                 reuse_cache=False)) for p in prompts]  # fmt: skip
        results: dict[int, str] = {}

        def read(i: int) -> None:
            results[i] = _text(handles[i])

        threads = [threading.Thread(target=read, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [results[i] for i in range(len(prompts))] == alone
        assert all(h.first_chunk is not None and h.first_chunk >= h.submitted for h in handles)
        assert worker.pending == 0 and worker.idle_seconds >= 0.0
    finally:
        worker.close()


def test_the_worker_from_an_event_loop_cancel_and_a_full_queue(smollm2: mlx_local.Model):
    worker = Worker(smollm2, max_queue=2)
    try:
        long = smollm2.prepare([{"role": "user", "content": "Count from one to a thousand."}], max_tokens=400,
                               temperature=0.0, stop_loops=False, reuse_cache=False)  # fmt: skip
        short = smollm2.prepare(QUESTION, max_tokens=8, temperature=0.0, reuse_cache=False)
        first = worker.submit(long)
        second = worker.submit(short)
        with pytest.raises(QueueFullError, match="try again"):
            worker.submit(smollm2.prepare(QUESTION, max_tokens=2))

        async def main() -> tuple[int, str]:
            n = 0
            async for _ in first:
                n += 1
                if n == 3:
                    first.cancel()  # the client went away: the generation stops at its next token
            return n, "".join([c.text async for c in second if c.kind == "content"])

        n, answer = asyncio.run(main())
        assert n <= 5  # stopped, not 400 tokens
        assert "Paris" in answer
    finally:
        worker.close()
    with pytest.raises(WorkerClosedError):
        worker.submit(short)


def test_a_failing_request_reaches_its_caller_and_the_worker_goes_on(smollm2: mlx_local.Model):
    def broken(tokens, logits):
        raise RuntimeError("a processor failed")

    worker = Worker(smollm2)
    try:
        bad = worker.submit(smollm2.prepare(QUESTION, max_tokens=4, logits_processors=[broken], reuse_cache=False))
        good = worker.submit(smollm2.prepare(QUESTION, max_tokens=8, temperature=0.0, reuse_cache=False))
        with pytest.raises(RuntimeError, match="a processor failed"):
            list(bad)
        assert "Paris" in _text(good)
    finally:
        worker.close()
