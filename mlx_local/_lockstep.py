"""Generations that every rank of a distributed model runs together (see :mod:`mlx_local._distributed`).

Two ways to drive the ranks:

- **Same script everywhere** (the usual ``mlx.launch`` style): every rank
  calls ``model.generate(...)`` / ``stream`` / ``Chat`` with the same
  arguments. Each generation starts with a check that the ranks were asked
  the same thing, and the seed of rank 0 for all.
- **Rank 0 serves, the others follow**: rank 0 wraps its work in
  ``with lead(model):`` and the other ranks call ``follow(model)``. Each
  generation rank 0 starts is sent to the followers first (a pickled
  :class:`Request`: prompt ids, options, seed, constraint, tools; its length
  then its bytes, each with one ``all_sum``), and they run it alongside;
  leaving the ``with`` block sends the end, and ``follow`` returns::

      model = Model.load(path, distributed="tensor")
      if model.distributed.rank == 0:
          with lead(model):
              serve(model)          # any code calling model.generate / stream / Chat
      else:
          follow(model)

Either way one generation runs at a time (a server calls the model from one
thread at a time; a second generation while one runs raises
``InvalidOptionError``), and a stream abandoned early still runs to its end (its remaining text is discarded) so that the ranks'
collectives pair up.
"""

from __future__ import annotations

import pickle
import random
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from ._distributed import Placement, crc, gather_ints, peer_errors, settle, watchdog
from ._generation import Chunk, GenerationOptions
from ._loading import LoadedFolder
from ._model import Model
from ._prompt_cache import PromptCache
from .errors import DistributedError, InvalidOptionError

__all__ = ["DistributedModel", "Request", "lead", "follow"]


@dataclass(frozen=True)
class Request:
    """One generation, as rank 0 sends it to the followers."""

    ids: tuple[int, ...]
    opts: GenerationOptions  # with the seed every rank uses
    processors: tuple[tuple[str, Any], ...]  # ("grammar", (grammar, think, thinking_open)) or ("pickled", bytes)
    thinking_open: bool
    cache: int | None  # None: no prompt cache; 0: model.prompt_cache; n: the n-th other cache rank 0 used
    tools: tuple[tuple[tuple[str, str, dict[str, Any]], ...], Any] | None  # (name, description, parameters)s, choice


class DistributedModel(Model):
    """A :class:`~mlx_local.Model` whose shard is one rank of several.

    ``distributed`` (a :class:`~mlx_local._distributed.Placement`) says
    which rank, of how many, in which mode. Everything else is the Model API.
    """

    def __init__(self, loaded: LoadedFolder, *, name: str, path: Any, dtype: str, rt: Any, placement: Placement,
                 group: Any) -> None:
        super().__init__(loaded, name=name, path=path, dtype=dtype, rt=rt)
        self.distributed = placement
        self._group = group
        self._leading = False
        self._busy = False
        self._cache_keys: weakref.WeakKeyDictionary[PromptCache, int] = weakref.WeakKeyDictionary()
        self._mirrors: dict[int, PromptCache] = {}

    def run(
        self,
        ids: Sequence[int],
        opts: GenerationOptions,
        *,
        logits_processors: Sequence[Any] = (),
        thinking_open: bool = False,
        prompt_cache: PromptCache | None = None,
        tools: Any = None,
    ) -> Iterator[Chunk]:
        """:meth:`Model.run`, on every rank at once (see :mod:`mlx_local._lockstep`)."""
        return self._generation(list(ids), opts, list(logits_processors), thinking_open, prompt_cache, tools, None)

    # ------------------------------------------------------------ internals

    def _generation(self, ids: list[int], opts: GenerationOptions, processors: list[Any], thinking_open: bool,
                    prompt_cache: PromptCache | None, tools: Any, seed: int | None) -> Iterator[Chunk]:
        rank = self.distributed.rank
        if self._busy:
            raise InvalidOptionError(
                "A distributed model runs one generation at a time: finish (or close) the other stream first.",
                option="stream",
            )
        self._busy = True
        try:
            if seed is None:
                seed = self._send(ids, opts, processors, thinking_open, prompt_cache, tools) if self._leading \
                    else self._agree(ids, opts, processors, thinking_open, prompt_cache, tools)
            inner = Model.run(self, ids, opts.updated(seed=seed), logits_processors=processors,
                              thinking_open=thinking_open, prompt_cache=prompt_cache, tools=tools)  # fmt: skip
            h, done = 0, False

            def pull() -> Chunk | None:
                with watchdog("generating", rank) as beat, peer_errors(rank):
                    chunk = next(inner, None)
                    beat()
                    return chunk

            try:
                while (chunk := pull()) is not None:
                    h = zlib.crc32(repr((chunk.text, chunk.token_ids)).encode("utf-8"), h)
                    yield chunk
                done = True
            finally:
                if not done:  # abandoned (or failed): run it to the end like the others, when they can still answer
                    try:
                        while (chunk := pull()) is not None:
                            h = zlib.crc32(repr((chunk.text, chunk.token_ids)).encode("utf-8"), h)
                        done = True
                    except DistributedError:
                        pass
                if done:
                    with watchdog("comparing tokens", rank):
                        every = gather_ints([h & 0x7FFFFFFF], self._group)
                    odd = [r for r, (v,) in enumerate(every) if v != every[0][0]]
                    if odd:
                        raise DistributedError(
                            f"rank {rank}: ranks {', '.join(map(str, odd))} generated other tokens than rank 0. "
                            "The ranks ran different code or options; every rank must make the same calls.",
                            rank=rank,
                        )
        finally:
            self._busy = False

    def _describe(self, ids: list[int], opts: GenerationOptions, processors: list[Any], thinking_open: bool,
                  prompt_cache: PromptCache | None, tools: Any) -> int:
        kinds = [getattr(p, "spec", None) or type(p).__qualname__ for p in processors]
        names = [t.name for t in tools.tools] if tools is not None else None
        return crc(ids, asdict(opts), kinds, thinking_open, prompt_cache is not None, names)

    def _agree(self, ids: list[int], opts: GenerationOptions, processors: list[Any], thinking_open: bool,
               prompt_cache: PromptCache | None, tools: Any) -> int:
        """Rank 0's seed, after checking every rank was asked the same thing."""
        rank = self.distributed.rank
        seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
        asked = self._describe(ids, opts, processors, thinking_open, prompt_cache, tools)
        with watchdog("starting a generation", rank):
            every = gather_ints([seed, asked], self._group)
        odd = [r for r, v in enumerate(every) if v[1] != every[0][1]]
        if odd:
            raise DistributedError(
                f"rank {rank}: ranks {', '.join(map(str, odd))} were asked to generate something else than rank 0 "
                "(the prompt, options, constraint or tools differ). Every rank must make the same calls, or "
                "rank 0 alone decides with lead(model) while the others run follow(model).",
                rank=rank,
            )
        return every[0][0]

    def _send(self, ids: list[int], opts: GenerationOptions, processors: list[Any], thinking_open: bool,
              prompt_cache: PromptCache | None, tools: Any) -> int:
        """Rank 0 (leading): send the request to the followers; the seed."""
        seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
        specs: list[tuple[str, Any]] = []
        for p in processors:
            if getattr(p, "spec", None) is not None:
                specs.append(("grammar", p.spec))
                continue
            try:
                specs.append(("pickled", pickle.dumps(p)))
            except Exception as e:
                raise InvalidOptionError(
                    f"The logits processor {p!r} cannot be sent to the other ranks ({e}); use one that pickles.",
                    option="logits_processors",
                ) from e
        cache = None
        if prompt_cache is not None:
            cache = 0 if prompt_cache is self.prompt_cache else self._cache_keys.setdefault(
                prompt_cache, len(self._cache_keys) + 1)
        tool_specs = None
        if tools is not None:
            tool_specs = (tuple((t.name, t.description, t.parameters) for t in tools.tools), tools.choice)
        request = Request(tuple(ids), opts.updated(seed=seed), tuple(specs), thinking_open, cache, tool_specs)
        broadcast(pickle.dumps(request), self._group)
        return seed

    def _run_request(self, request: Request) -> None:
        """A follower: run rank 0's request to its end."""
        from ._structured import GrammarProcessor, grammar_tokenizer
        from ._tools import Tool, Toolset

        processors: list[Any] = []
        for kind, value in request.processors:
            if kind == "grammar":
                grammar, think, thinking_open = value
                processors.append(GrammarProcessor(grammar_tokenizer(self), grammar, think=think,
                                                   thinking_open=thinking_open, on_gpu=self.runtime.backend == "metal"))  # fmt: skip
            else:
                processors.append(pickle.loads(value))
        cache = None
        if request.cache is not None:
            cache = self.prompt_cache if request.cache == 0 else self._mirrors.setdefault(request.cache, PromptCache())
        tools = None
        if request.tools is not None:
            defs, choice = request.tools
            tools = Toolset([Tool(n, d, p) for n, d, p in defs], self.template, choice)
        assert request.opts.seed is not None
        for _ in self._generation(list(request.ids), request.opts, processors, request.thinking_open, cache, tools,
                                  request.opts.seed):  # fmt: skip
            pass


# ---------------------------------------------------------------- requests


def broadcast(payload: bytes | None, g: Any) -> None:
    """Rank 0: send ``payload`` (None: the end) to every rank: its length, then its bytes."""
    import mlx.core as mx
    import numpy as np

    n = len(payload) if payload else 0
    with watchdog("sending a request", g.rank()), peer_errors(g.rank()):
        settle()
        mx.eval(mx.distributed.all_sum(mx.array([n], dtype=mx.int64), group=g, stream=mx.cpu))
        if payload:
            data = mx.array(np.frombuffer(payload, dtype=np.uint8))
            mx.eval(mx.distributed.all_sum(data, group=g, stream=mx.cpu))


def receive(g: Any) -> bytes | None:
    """The other ranks: what rank 0 broadcast (waits as long as it takes: rank 0 may be idle)."""
    import mlx.core as mx
    import numpy as np

    with peer_errors(g.rank()):
        settle()
        n = int(mx.distributed.all_sum(mx.array([0], dtype=mx.int64), group=g, stream=mx.cpu).item())  # type: ignore[arg-type]
        if n == 0:
            return None
        data = mx.distributed.all_sum(mx.zeros((n,), dtype=mx.uint8), group=g, stream=mx.cpu)
        return bytes(np.array(data, copy=False))


def _distributed_model(model: Model, who: str) -> DistributedModel:
    if not isinstance(model, DistributedModel):
        raise InvalidOptionError(
            f"{who} needs a model loaded with Model.load(..., distributed='tensor' or 'pipeline').", option="model"
        )
    return model


@contextmanager
def lead(model: Model) -> Iterator[Model]:
    """On rank 0: every generation inside the block is sent to the ranks running :func:`follow`.

    Leaving the block (also by an exception) tells them to stop, and their
    ``follow`` returns. Generations inside the block are not checked against
    the other ranks' calls: rank 0 alone decides.
    """
    m = _distributed_model(model, "lead()")
    if m.distributed.rank != 0:
        raise InvalidOptionError(
            f"lead() is for rank 0; rank {m.distributed.rank} runs follow(model) instead.", option="model"
        )
    m._leading = True
    try:
        yield m
    finally:
        m._leading = False
        broadcast(None, m._group)


def follow(model: Model) -> int:
    """On every rank but 0: run each generation rank 0 starts in :func:`lead`, until it leaves the block.

    Returns how many generations were run. Waits as long as rank 0 is
    idle; if rank 0 dies, raises :class:`~mlx_local.errors.DistributedError`.
    """
    m = _distributed_model(model, "follow()")
    if m.distributed.rank == 0:
        raise InvalidOptionError("follow() is for the ranks other than 0; rank 0 uses `with lead(model):`.", option="model")
    count = 0
    while (payload := receive(m._group)) is not None:
        request = pickle.loads(payload)
        m._run_request(request)
        count += 1
    return count
