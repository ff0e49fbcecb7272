"""The server's models: which are loaded, what a request's ``model`` names, loading on demand, unloading idle ones.

- The model the server starts with (``-m``) is loaded at start and stays; it
  answers to the name ``/v1/models`` lists, to the source it was given by,
  and to ``"default"`` (clients must always send some name).
- Any other name a request gives (catalog name, repo id, path, converted or
  imported model's name) is loaded on demand, once (concurrent requests for
  it wait for the one load), after the memory check: a model that would not
  fit is refused with the estimate in the message, and nothing is unloaded
  to make room. Only models on disk are loaded unless downloads are allowed
  (``allow_download``), so a request cannot make the server fetch gigabytes.
- A model loaded on demand is unloaded once idle for ``keep_alive`` seconds.
- Each loaded model has a :class:`~mlx_local._worker.Worker` that owns its
  generation.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._model import Model
from ._sources import locate
from .errors import InsufficientMemoryError, MLXLocalError, ModelNotFoundError

__all__ = ["DEFAULT_NAME", "Registry", "Served", "parse_keep_alive"]

#: The name that always means the model the server started with.
DEFAULT_NAME = "default"


def parse_keep_alive(value: str | float | int | None) -> float | None:
    """Seconds from ``"5m"``, ``"30s"``, ``"1h"``, ``"90"`` or a number; None (never unload) for ``"-1"``, ``"never"``, None.

    Raises:
        InvalidOptionError: anything else.
    """
    from .errors import InvalidOptionError

    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    text = str(value).strip().lower()
    if text in ("-1", "never", "forever", "inf"):
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise InvalidOptionError(
            f"keep_alive={value!r}: give a duration such as 30s, 5m or 1h (0: unload when idle; -1 or never: keep).",
            option="keep_alive",
        )
    return seconds


@dataclass
class Served:
    """A loaded model and the worker generating with it.

    Attributes:
        name: its id in ``/v1/models``.
        model: the model.
        worker: the :class:`~mlx_local._worker.Worker` that owns its generation.
        pinned: the model the server started with (never unloaded).
        estimate: bytes its memory estimate said it needs.
        aliases: other names that reach it.
        keys: other sources that locate it (a .gguf file beside its import folder).
    """

    name: str
    model: Model
    worker: Any
    pinned: bool
    estimate: int = 0
    aliases: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    loaded_at: float = field(default_factory=time.time)


def _key(located: Any) -> str:
    """What makes two names the same model: the file, folder or repo they locate."""
    return f"{located.kind}:{located.path or located.repo}"


class Registry:
    """The loaded models of one server (see the module doc).

    Args:
        model: the model to serve from the start: a loaded :class:`Model`,
            a source for :meth:`Model.load`, or None for the embedded default.
        keep_alive: seconds an on-demand model may stay idle; None: forever.
        allow_load: load other models on demand at all.
        allow_download: on-demand loads may download from the hub.
        worker_factory: ``f(model) -> Worker``.
    """

    def __init__(self, model: Model | str | None, *, source: str | None = None, keep_alive: float | None = 300.0,
                 allow_load: bool = True, allow_download: bool = False, worker_factory: Callable[[Model], Any]) -> None:  # fmt: skip
        self.keep_alive = keep_alive
        self.allow_load = allow_load
        self.allow_download = allow_download
        self._factory = worker_factory
        self._served: dict[str, Served] = {}  # by the key of the folder it was loaded from
        self._lock = threading.Lock()
        self._load_lock: asyncio.Lock | None = None
        self._unloader: asyncio.Task[None] | None = None
        loaded = model if isinstance(model, Model) else Model.load(model)
        start = Served(loaded.name, loaded, worker_factory(loaded), pinned=True,
                       aliases={DEFAULT_NAME, loaded.name, str(loaded.path)})  # fmt: skip
        source = model if isinstance(model, str) else source
        if source:
            start.aliases.add(source)
            try:
                start.keys.add(_key(locate(source, offline=True)))  # the same model by another name of it
            except MLXLocalError:
                pass
        self._served[f"folder:{loaded.path}"] = start
        self.default = start

    # ----------------------------------------------------------------- lookups

    def loaded(self) -> list[Served]:
        with self._lock:
            return list(self._served.values())

    def find(self, name: str) -> Served | None:
        """The loaded model ``name`` reaches, or None."""
        with self._lock:
            for s in self._served.values():
                if name == s.name or name in s.aliases:
                    return s
        return None

    async def get(self, name: str) -> Served:
        """The model a request's ``model`` names, loading it if need be.

        Raises:
            ModelNotFoundError: no such model (or not on disk, without downloads); HubUnreachableError for the hub.
            InsufficientMemoryError: it would not fit beside what is loaded.
        """
        if not name.strip():
            from .errors import InvalidOptionError

            raise InvalidOptionError(f"model is empty; send a name /v1/models lists, or {DEFAULT_NAME!r}.", option="model")
        found = self.find(name)
        if found is not None:
            return found
        if not self.allow_load:
            raise ModelNotFoundError(
                f"The model {name!r} is not loaded, and this server loads no other model than "
                f"{self.default.name!r} (also called {DEFAULT_NAME!r}).",
                source=name,
            )
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:  # one load at a time: the memory check must see what the last load took
            found = self.find(name)
            if found is not None:
                return found
            served = await asyncio.to_thread(self._load, name)
        if self.keep_alive is not None and self._unloader is None:  # (here, not at start: a mounted app has no lifespan)
            self._unloader = asyncio.get_running_loop().create_task(self.keep_unloading())
        return served

    def _load(self, name: str) -> Served:
        from . import _hub as hub

        offline = True if not self.allow_download else hub.is_offline(None)
        located = locate(name, offline=offline)
        key = _key(located)
        with self._lock:
            for s in self._served.values():
                if key in s.keys or key == f"folder:{s.model.path}":
                    s.aliases.add(name)
                    return s
        estimate = self._check_fits(located, offline)
        try:
            model = Model.load(name, offline=offline, force=True, progress=False)
        except ModelNotFoundError as e:
            if self.allow_download or located.kind != "repo":
                raise
            raise ModelNotFoundError(
                f"{name} is not on disk, and this server loads only models on disk: download it first "
                f"(`mlx-local pull {name}`), or start the server with --allow-download (allow_download=True).",
                source=name,
            ) from e
        served = Served(model.name, model, self._factory(model), pinned=False, estimate=estimate,
                        aliases={name, str(model.path)})  # fmt: skip
        served.keys.add(key)
        with self._lock:
            self._served[f"folder:{model.path}"] = served
        return served

    def _check_fits(self, located: Any, offline: bool) -> int:
        """The estimate of ``located`` in bytes, or InsufficientMemoryError if it would not fit now."""
        from . import _memory as memory
        from ._device import device_info
        from ._units import format_bytes

        try:
            est = memory.estimate_located(located, offline=offline)
        except ModelNotFoundError:
            return 0  # not on disk: loading it says so
        device = device_info()
        others = self.loaded()
        # Available RAM (the CPU's figure) already excludes what is loaded; Metal's working set does not.
        held = 0 if device.backend == "cpu" else sum(s.estimate for s in others)
        room = device.usable_memory - held
        if est.total <= room:
            return est.total
        loaded = ", ".join(s.name for s in others)
        raise InsufficientMemoryError(
            f"{located.name} needs about {format_bytes(est.total)} (weights {format_bytes(est.weights)}, KV cache "
            f"{format_bytes(est.kv_cache)} for {est.context} tokens, overhead {format_bytes(est.overhead)}) but "
            f"{format_bytes(max(room, 0))} is free ({device.usable_source}) with {loaded} loaded. "
            "Nothing was unloaded to make room; use a smaller model or a server without the others.",
            required=est.total,
            available=max(room, 0),
            suggestion=None,
        )

    # ---------------------------------------------------------------- unloading

    def unload_idle(self) -> list[str]:
        """Unload the on-demand models idle for at least ``keep_alive`` seconds; their names."""
        if self.keep_alive is None:
            return []
        with self._lock:
            idle = {k: s for k, s in self._served.items()
                    if not s.pinned and s.worker.idle_seconds >= self.keep_alive}  # fmt: skip
            for k in idle:
                del self._served[k]
        for s in idle.values():
            s.worker.close()
        if idle:
            gc.collect()
            import mlx.core as mx

            mx.clear_cache()
        return [s.name for s in idle.values()]

    async def keep_unloading(self) -> None:
        """Unload idle models until cancelled (the app runs this in the background)."""
        if self.keep_alive is None:
            return
        interval = min(max(self.keep_alive / 4, 0.1), 30.0)
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.unload_idle)

    def close(self) -> None:
        """Stop every worker and the unloading (the server is shutting down)."""
        if self._unloader is not None:
            try:
                self._unloader.get_loop().call_soon_threadsafe(self._unloader.cancel)
            except RuntimeError:  # its loop is closed already
                pass
        with self._lock:
            served, self._served = list(self._served.values()), {}
        for s in served:
            s.worker.close()

    # ------------------------------------------------------------------ listing

    def listing(self) -> list[dict[str, Any]]:
        """``/v1/models``' data: the loaded models first (``loaded: true``), then the others on disk."""
        from ._store import local_models

        rows = [{"id": s.name, "object": "model", "created": int(s.loaded_at), "owned_by": "mlx-local", "loaded": True,
                 "default": s.pinned} for s in self.loaded()]  # fmt: skip
        seen = {r["id"] for r in rows} | {str(s.model.path) for s in self.loaded()}
        try:
            on_disk = local_models()
        except Exception:  # noqa: BLE001 - a damaged cache must not break the listing of what is loaded
            on_disk = []
        for m in on_disk:
            if m.name in seen or str(m.path) in seen or not m.complete:
                continue
            seen.add(m.name)
            rows.append({"id": m.name, "object": "model", "created": int(_mtime(m.path)), "owned_by": "mlx-local",
                         "loaded": False, "default": False})  # fmt: skip
        return rows


def _mtime(path: Any) -> float:
    try:
        return float(path.stat().st_mtime)
    except OSError:
        return 0.0
