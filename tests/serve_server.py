"""A real uvicorn server for the server tests: an app on a free loopback port, in a thread, stopped at the end.

Also scripted logits processors that make a tiny model think or write given
text, through the real generation loop, for requests that come over HTTP
(``Scripts(model, make)`` wraps the model's ``prepare`` so that every
request gets a fresh processor from ``make()``).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import mlx.core as mx
import uvicorn


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port of its own); yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def force(logits: Any, token_id: int) -> Any:
    mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
    return mx.put_along_axis(mask, mx.array([[token_id]]), mx.zeros((1, 1), logits.dtype), axis=-1)


class Thinker:
    """Opens a think block unless the prompt did, thinks `word` `think_for` times (None: until something else
    closes the block), closes it, then writes `answer` and the end-of-turn token."""

    def __init__(self, model: Any, answer: str = "The answer is four.", word: str = " hmm", think_for: int | None = 3):
        tok = model.tokenizer
        self.start, self.end = model.think_tags.start_id, model.think_tags.end_id
        self.word = tok.encode(word, add_special_tokens=False)[0]
        self.answer = tok.encode(answer, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
        self.generated: list[int] = []
        self.prompt: list[int] = []  # the whole prompt, set by Scripts (mlx-lm shows a processor only its uncached end)
        self.calls = 0
        self.think_for = think_for

    def __call__(self, tokens: Any, logits: Any) -> Any:
        if self.calls:
            self.generated.append(int(tokens[-1]))
        self.calls += 1
        tail = self.prompt[-6:]
        closed = self.end in tail  # thinking off: the prompt closed the block empty
        opened = self.start in tail and not closed  # the prompt opened it
        g = self.generated
        if closed or self.end in g:
            i = len(g) - (g.index(self.end) + 1 if self.end in g else 0)
            return force(logits, self.answer[min(i, len(self.answer) - 1)])
        if self.start in g or opened:
            done = self.think_for is not None and g.count(self.word) >= self.think_for
            return force(logits, self.end if done else self.word)
        return force(logits, self.start)


class Scripts:
    """The scripted processors of a model's requests: ``make`` builds each (settable), ``made`` holds them, newest last."""

    def __init__(self, model: Any, make: Callable[[], Any]) -> None:
        self.make = make
        self.made: list[Any] = []
        prepare = model.prepare

        def with_script(messages: Any, **kwargs: Any) -> Any:
            self.made.append(self.make())
            request = prepare(messages, logits_processors=[self.made[-1]], **kwargs)
            self.made[-1].prompt = list(request.ids)
            return request

        model.prepare = with_script

    @property
    def last(self) -> Any:
        return self.made[-1]
