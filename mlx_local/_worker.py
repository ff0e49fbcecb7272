"""``Worker``: one thread owning a model's generation, fed by a queue.

MLX work on one model is best done by one thread (its streams and KV caches
are not meant to be shared), while a server has many callers at once. A
:class:`Worker` takes prepared :class:`~mlx_local._request.Request` s from any
thread in order of arrival (``submit``), runs them on its own thread, and
hands each caller a :class:`Handle` that yields the request's chunks as they
come, from plain code (``for``) or from an event loop (``async for``).
``handle.cancel()`` (a client that went away) stops that generation at its
next token; its KV cache is not given back. A full queue refuses at once
(:class:`QueueFullError`) instead of letting callers wait without bound.

Requests decode together, up to ``max_concurrency`` at once, on the batch
engine (:mod:`mlx_local._batch`: mlx-lm's ``BatchGenerator`` with each
request's own decoder, so each answer is what it would be alone). They are
admitted in order of arrival as places free up; a newcomer's prompt is
prefilled in chunks between the running decodes. A request that cannot be
batched (:func:`~mlx_local._batch.why_alone`: a ``seed`` with sampling)
waits for the batch to drain and runs on its own, and the requests behind
it wait for it (first come, first served). ``max_concurrency=1`` runs
everything one at a time through :meth:`Model.execute`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from ._batch import DEFAULT_MAX_CONCURRENCY, DEFAULT_PREFILL_STEP, BatchEngine, why_alone
from ._generation import Chunk
from ._request import Request
from .errors import MLXLocalError

if TYPE_CHECKING:
    from ._model import Model

__all__ = ["Worker", "Handle", "QueueFullError", "WorkerClosedError"]


class QueueFullError(MLXLocalError):
    """The worker's queue holds as many requests as it may: try again later."""


class WorkerClosedError(MLXLocalError):
    """The worker was closed: it takes no more requests."""


_END = object()


class Handle:
    """The chunks of one submitted request, as they come; iterate once."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._cancelled = threading.Event()
        #: when it was submitted, and when its first chunk came (time.perf_counter)
        self.submitted = time.perf_counter()
        self.first_chunk: float | None = None

    # ----------------------------------------------------------- the worker's side

    def _push(self, item: Any) -> None:
        if self.first_chunk is None and isinstance(item, Chunk):
            self.first_chunk = time.perf_counter()
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            loop, event = self._loop, self._event
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # ----------------------------------------------------------- the caller's side

    def cancel(self) -> None:
        """Stop this request's generation (at its next token) or drop it from the queue."""
        self._cancelled.set()

    def _take(self) -> Any:
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._take()
            if item is _END:
                return
            yield item

    async def _aiter(self) -> AsyncIterator[Chunk]:
        with self._cond:
            self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        event = self._event
        while True:
            with self._cond:
                item = self._take() if self._items else None
                if item is None:
                    event.clear()
            if item is None:
                await event.wait()
                continue
            if item is _END:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._aiter()


class Worker:
    """Runs a model's requests on a thread of its own, in order of arrival, several at once.

    Args:
        model: the :class:`~mlx_local.Model` it owns.
        max_queue: the most requests waiting or running; more are refused
            with :class:`QueueFullError`.
        max_concurrency: the most requests decoding together (1: one at a
            time).
        prefill_step_size: prompt tokens a newcomer is prefilled by between
            two decode steps of the running requests.
    """

    def __init__(self, model: Model, *, max_queue: int = 64, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 prefill_step_size: int = DEFAULT_PREFILL_STEP) -> None:  # fmt: skip
        from .errors import InvalidOptionError

        for name, value in (("max_queue", max_queue), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name}={value!r}: give a whole number of at least 1.", option=name)
        self.model = model
        self.max_queue = max_queue
        self.max_concurrency = max_concurrency
        self._engine = BatchEngine(model, max_concurrency=max_concurrency, prefill_step_size=prefill_step_size)
        self._batched: dict[int, Handle] = {}  # engine id -> handle, touched by the worker thread only
        self._queue: deque[Handle] = deque()
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False
        self._last_active = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"mlx_local worker ({model.name})", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Handle:
        """Queue ``request``; its chunks come through the returned handle."""
        handle = Handle(request)
        with self._cond:
            if self._closed:
                raise WorkerClosedError(f"The worker of {self.model.name} is closed.")
            if len(self._queue) + self._running >= self.max_queue:
                raise QueueFullError(
                    f"{self.model.name} has {self.max_queue} requests waiting or running already; try again later."
                )
            self._queue.append(handle)
            self._cond.notify_all()
        return handle

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._queue) + self._running

    @property
    def idle_seconds(self) -> float:
        """Seconds since the worker last had something to do (0 while busy)."""
        with self._cond:
            if self._queue or self._running:
                return 0.0
            return time.monotonic() - self._last_active

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, cancel the queued and running ones, and stop the thread."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for handle in waiting:
            handle.cancel()
            handle._push(WorkerClosedError(f"The worker of {self.model.name} was closed before this request ran."))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        try:
            while True:
                alone = self._admit()
                if alone is None and self._closed:
                    return
                if alone is not None:
                    self._run_alone(alone)
                    continue
                self._drop_cancelled()
                if self._batched:
                    self._step()
        finally:
            for handle in self._batched.values():  # closed while they ran
                handle._push(_END)
            self._batched.clear()
            self._engine.close()

    def _admit(self) -> Handle | None:
        """Move queued requests into the batch while there is room, in order; a request to run alone, if its turn came."""
        with self._cond:
            while not self._queue and not self._batched and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            ready: list[Handle] = []
            alone: Handle | None = None
            while self._queue:
                handle = self._queue[0]
                if handle.cancelled:
                    self._queue.popleft()
                    handle._push(_END)
                    continue
                if self.max_concurrency == 1 or why_alone(self.model, handle.request) is not None:
                    if self._batched or ready:
                        break  # first come, first served: it waits for the batch to drain
                    alone = self._queue.popleft()
                    break
                if len(ready) >= self._engine.free:
                    break
                ready.append(self._queue.popleft())
            self._running += len(ready) + (alone is not None)
        for handle in ready:
            self._start(handle)
        return alone

    def _start(self, handle: Handle) -> None:
        def emit(item: Chunk | BaseException) -> None:
            if isinstance(item, BaseException) or item.stats is not None:  # its last
                self._batched.pop(uid, None)
                self._done(1)
                handle._push(item)
                handle._push(_END)
            else:
                handle._push(item)

        try:
            uid = self._engine.add(handle.request, emit)
        except Exception as e:  # e.g. a prompt cache that cannot be merged: this request only
            self._done(1)
            handle._push(e)
            return
        self._batched[uid] = handle

    def _drop_cancelled(self) -> None:
        for uid, handle in list(self._batched.items()):
            if handle.cancelled:
                self._engine.cancel(uid)
                del self._batched[uid]
                self._done(1)
                handle._push(_END)

    def _step(self) -> None:
        try:
            self._engine.step()
        except Exception as e:  # the model failed on the batch: every request in it gets the error
            self._engine.abort(e)  # (through their emit, which ends each one)
            for handle in self._batched.values():  # (none should be left: but none may hang either)
                self._done(1)
                handle._push(e)
                handle._push(_END)
            self._batched.clear()

    def _done(self, n: int) -> None:
        with self._cond:
            self._running -= n
            self._last_active = time.monotonic()

    def _run_alone(self, handle: Handle) -> None:
        try:
            chunks = self.model.execute(handle.request)
            try:
                for chunk in chunks:
                    handle._push(chunk)
                    if handle.cancelled or self._closed:
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        except Exception as e:  # the caller gets it; the worker goes on with the next request
            self._done(1)
            handle._push(e)
            return
        self._done(1)
        handle._push(_END)
