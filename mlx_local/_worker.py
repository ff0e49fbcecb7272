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

This version runs one request at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

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
    """Runs a model's requests on a thread of its own, in order of arrival.

    Args:
        model: the :class:`~mlx_local.Model` it owns.
        max_queue: the most requests waiting or running; more are refused
            with :class:`QueueFullError`.
    """

    def __init__(self, model: Model, *, max_queue: int = 64) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            from .errors import InvalidOptionError

            raise InvalidOptionError(f"max_queue={max_queue!r}: give a whole number of at least 1.", option="max_queue")
        self.model = model
        self.max_queue = max_queue
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

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                handle = self._queue.popleft()
                self._running += 1
            try:
                self._run(handle)
            finally:
                with self._cond:
                    self._running -= 1
                    self._last_active = time.monotonic()

    def _run(self, handle: Handle) -> None:
        if handle.cancelled:
            handle._push(_END)
            return
        chunks = self.model.execute(handle.request)
        try:
            for chunk in chunks:
                handle._push(chunk)
                if handle.cancelled or self._closed:
                    break
        except Exception as e:  # the caller gets it; the worker goes on with the next request
            handle._push(e)
            return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        handle._push(_END)
