"""One model over several processes or Macs, on MLX's own distributed layer.

``mlx.launch`` (or ``mlx-local launch``) starts the same script once per
rank; ``mx.distributed`` (the ring backend over TCP, JACCL over Thunderbolt)
carries the tensors, and mlx-lm shards the model: ``model.shard(group)``
splits every layer's projections over the ranks (tensor parallel: each rank
holds 1/N of each layer), ``model.model.pipeline(group)`` gives each rank a
run of whole layers (pipeline parallel). No transport of our own.

Lockstep. Every rank runs every generation: the sharded layers end in an
``all_sum`` (tensor) or an ``all_gather`` of the last hidden state
(pipeline), so every rank computes bitwise the same logits, and samples the
same token when seeded the same. :class:`DistributedModel` makes sure of the
rest:

- at the start of each generation the ranks agree on one seed (rank 0's)
  and check they were asked the same thing (a hash of the prompt ids and
  options), else :class:`DistributedError`;
- a stream abandoned early is still run to its end (the other ranks run
  it to its end too: the collectives must pair up), its text discarded;
- at the end the ranks compare a hash of the tokens they generated.

"Rank 0 serves, the others follow" is :func:`lead` / :func:`follow`
(:mod:`mlx_local._lockstep`). Faults: a rank that dies makes the
ring report a lost connection, turned into :class:`DistributedError`; a rank
that hangs or never joins is caught by a watchdog (``MLX_LOCAL_DIST_TIMEOUT``
seconds, default 300; 0 turns it off) that ends the process with a message,
which makes ``mlx.launch`` end the others.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ._model import Model
from .errors import DistributedError, InvalidModelError, InvalidOptionError, UnsupportedArchitectureError

__all__ = ["MODES", "DistributedError", "Placement", "load", "lead", "follow", "watchdog", "timeout"]

MODES = ("tensor", "pipeline")
#: Exit status of a process the watchdog ends.
WATCHDOG_EXIT = 75
LAUNCH_HINT = (
    "Start one process per rank with MLX's launcher, e.g. on this machine "
    "`mlx.launch -n 2 --backend ring -- python script.py`, or on two Macs "
    "`mlx-local launch --hosts 10.0.0.1,10.0.0.2 -- python script.py`."
)


@dataclass(frozen=True)
class Placement:
    """What this rank holds of a distributed model."""

    mode: str  # "tensor" or "pipeline"
    rank: int
    size: int
    layers: tuple[int, int] | None = None  # pipeline: [start, end) of the layers held here

    def __str__(self) -> str:
        held = f", layers {self.layers[0]}-{self.layers[1] - 1}" if self.layers else ""
        return f"rank {self.rank} of {self.size}, {self.mode} parallel{held}"


# ------------------------------------------------------------------ watchdog


def timeout() -> float:
    """The watchdog's limit in seconds (``MLX_LOCAL_DIST_TIMEOUT``, default 300; 0: off)."""
    try:
        return max(0.0, float(os.environ.get("MLX_LOCAL_DIST_TIMEOUT", "300")))
    except ValueError:
        return 300.0


class _Watchdog:
    """Ends the process if a guarded step makes no progress for ``timeout()`` seconds.

    A collective blocked in MLX's C++ cannot be interrupted from Python, so
    ending the process is the only bounded way out; ``mlx.launch`` then ends
    the other ranks.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._what: str | None = None
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    def arm(self, what: str, rank: int) -> None:
        limit = timeout()
        if limit <= 0:
            return
        with self._lock:
            self._what, self._rank, self._limit = what, rank, limit
            self._deadline = time.monotonic() + limit
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="mlx_local-watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()

    def beat(self) -> None:
        if self._what is not None:
            self._deadline = time.monotonic() + self._limit

    def disarm(self) -> None:
        with self._lock:
            self._what = None
            self._lock.notify()

    def _watch(self) -> None:
        with self._lock:
            while True:
                if self._what is None:
                    self._lock.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                sys.stderr.write(_message(self._what, self._rank, self._limit))
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT)


_watchdog = _Watchdog()


def _message(what: str, rank: int, limit: float) -> str:
    return (
        f"mlx_local: rank {rank} waited {limit:.0f} s for the other ranks while {what}; "
        "a rank hangs, never started or lost its network. Ending this process "
        "(MLX_LOCAL_DIST_TIMEOUT sets the limit).\n"
    )


_GUARD = """
import os, sys, time
parent, limit, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + limit
while time.monotonic() < end:
    time.sleep(0.2)
    if os.getppid() != parent:
        sys.exit(0)
sys.stderr.write(message)
sys.stderr.flush()
os.kill(parent, 9)
"""


@contextmanager
def outside_watchdog(what: str, rank: int) -> Iterator[None]:
    """The watchdog as a small process of its own, for calls that hold the GIL (``mx.distributed.init``)."""
    import subprocess

    limit = timeout()
    if limit <= 0:
        yield
        return
    guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), str(limit), _message(what, rank, limit)],
                             stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        guard.kill()
        guard.wait()


@contextmanager
def watchdog(what: str, rank: int) -> Iterator[Callable[[], None]]:
    """Guard a step that waits on the other ranks; yields ``beat()``, to call on progress."""
    _watchdog.arm(what, rank)
    try:
        yield _watchdog.beat
    finally:
        _watchdog.disarm()


@contextmanager
def peer_errors(rank: int) -> Iterator[None]:
    """The ring backend's lost-connection ``RuntimeError`` as a :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as e:
        if "[ring]" in str(e) or "[jaccl]" in str(e) or "peer" in str(e):
            raise DistributedError(
                f"rank {rank} lost its connection to another rank ({e}): a rank died or its network went down.",
                rank=rank,
            ) from e
        raise


# --------------------------------------------------------------- collectives


def group() -> Any:
    """The launched group, or InvalidOptionError saying how to launch."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        raise InvalidOptionError(f"This MLX has no distributed backend. {LAUNCH_HINT}", option="distributed")
    rank = int(os.environ.get("MLX_RANK", "0") or 0)
    hostfile = os.environ.get("MLX_HOSTFILE")
    where = f" (hostfile {hostfile}: is every address in it right and reachable?)" if hostfile else ""
    with outside_watchdog(f"joining the group{where}", rank):  # init holds the GIL while it waits
        g = mx.distributed.init()
    if g.size() < 2:
        raise InvalidOptionError(
            "distributed= needs several processes, and this one was not started by a distributed launch "
            f"(or by a launch of one process). {LAUNCH_HINT}",
            option="distributed",
        )
    return g


def settle() -> None:
    """Wait for the forward passes in flight (mlx-lm computes the next token ahead, on its own stream).

    Their collectives must be done before ours start, or the two would mix
    on the ring.
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    mx.synchronize(generation_stream)


def gather_ints(values: Sequence[int], g: Any) -> list[list[int]]:
    """Every rank's ``values`` (same length everywhere), in rank order."""
    import mlx.core as mx

    with peer_errors(g.rank()):
        settle()
        out = mx.distributed.all_gather(mx.array(list(values), dtype=mx.int64), group=g, stream=mx.cpu)
        flat: list[int] = [int(v) for v in out.tolist()]  # type: ignore[union-attr, arg-type]
    n = len(values)
    return [flat[i * n:(i + 1) * n] for i in range(g.size())]


def barrier(g: Any) -> None:
    gather_ints([0], g)


def crc(*parts: Any) -> int:
    """A 31-bit hash of ``parts`` (their reprs)."""
    return zlib.crc32(repr(parts).encode("utf-8")) & 0x7FFFFFFF


# ----------------------------------------------------------------- loading


def folder_hash(folder: Path, samples: int = 16, block: int = 4096) -> int:
    """Hash of config.json and of each weight file: name, size, safetensors header and ``samples`` blocks of data.

    Reading a few blocks at fixed places (not the whole files: a 70B model is
    40 GB) tells apart two checkpoints of the same shapes.
    """
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:".encode())
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 100_000_000)))
            start = 8 + n
            for i in range(samples):
                fh.seek(start + (size - start - block) * i // max(1, samples - 1) if size - start > block else start)
                h.update(fh.read(block))
    return int.from_bytes(h.digest()[:7], "big")


def check_same_model(folder: Path, mode: str, dtype: str, g: Any) -> None:
    """DistributedError on every rank unless all ranks hold the same model files (before any compute)."""
    mine = [folder_hash(folder), crc(mode, dtype)]
    every = gather_ints(mine, g)
    odd = [r for r, v in enumerate(every) if v != every[0]]
    if odd:
        what = "model files (config.json or weights)" if any(every[r][0] != every[0][0] for r in odd) else "mode or dtype"
        raise DistributedError(
            f"rank {g.rank()}: ranks {', '.join(map(str, odd))} load different {what} than rank 0 "
            f"(this rank: {folder}). Every rank must load the same model: copy the same folder to every machine.",
            rank=g.rank(),
        )


def pipeline_range(layers: int, rank: int, size: int) -> tuple[int, int]:
    """The layers ``[start, end)`` mlx-lm's pipeline() gives ``rank`` (the last layers to rank 0)."""
    base, extra = divmod(layers, size)
    split = [base + (1 if r < extra else 0) for r in range(size)]
    start = sum(split[rank + 1:])
    return start, start + split[rank]


def check_splits(config: dict[str, Any], mode: str, size: int, name: str) -> None:
    """InvalidModelError if the model's heads (tensor) or layers (pipeline) do not split over ``size`` ranks."""
    from ._weight_sizes import text_config

    cfg = text_config(config)
    if mode == "tensor":
        for key in ("num_attention_heads", "num_key_value_heads"):
            n = cfg.get(key)
            if isinstance(n, int) and n % size:
                raise InvalidModelError(
                    f"{name}: its {n} {key.replace('num_', '').replace('_', ' ')} do not split evenly over "
                    f"{size} ranks, which tensor parallelism needs. Launch a number of ranks that divides "
                    f"{n}, or use distributed='pipeline' if the architecture supports it.",
                    path=name,
                )
    else:
        n = cfg.get("num_hidden_layers")
        if isinstance(n, int) and n < size:
            raise InvalidModelError(f"{name}: {n} layers cannot be split over {size} ranks.", path=name)


def sharder(mode: str, g: Any, name: str) -> Callable[[Any], None]:
    """What to do to the lazily loaded module before its weights are read: shard it (mlx-lm's methods)."""

    def prepare(module: Any) -> None:
        arch = str(getattr(getattr(module, "args", None), "model_type", None) or type(module).__module__.split(".")[-1])
        if mode == "tensor":
            if not hasattr(module, "shard"):
                raise UnsupportedArchitectureError(
                    f"{name}: mlx-lm cannot split architecture {arch!r} over ranks (its model has no shard()); "
                    "tensor parallelism works for llama, qwen2, qwen3, qwen3_5, deepseek and others"
                    f"{' (try distributed=' + repr('pipeline') + ')' if hasattr(getattr(module, 'model', None), 'pipeline') else ''}.",
                    path=name, architecture=arch,
                )  # fmt: skip
            shard = module.shard
        else:
            if not hasattr(getattr(module, "model", None), "pipeline"):
                raise UnsupportedArchitectureError(
                    f"{name}: mlx-lm cannot pipeline architecture {arch!r} (its model has no pipeline()); "
                    "pipeline parallelism works for qwen3_5, qwen3_next, ministral3, deepseek_v41 and a few others"
                    f"{' (try distributed=' + repr('tensor') + ')' if hasattr(module, 'shard') else ''}.",
                    path=name, architecture=arch,
                )  # fmt: skip
            shard = module.model.pipeline
        try:
            shard(g)
        except ValueError as e:
            raise InvalidModelError(f"{name}: mlx-lm could not split it over {g.size()} ranks ({e}).", path=name) from e

    return prepare


def optimize_sharded_for_cpu(module: Any) -> int:
    """Give the sharded quantized layers the CPU matmul of :mod:`mlx_local._cpu_kernels`, in place.

    ``shard()`` replaces QuantizedLinear layers by mlx's Quantized*Linear
    distributed layers, which :func:`~mlx_local._cpu_kernels.optimize_for_cpu`
    does not know; their CPU versions here compute the same thing through
    ``_qmm`` (dequantize + BLAS for prompts, native kernels for decoding).
    """
    import mlx.nn as nn

    from ._cpu_kernels import swap_classes

    return swap_classes(module, {nn.QuantizedAllToShardedLinear: CPUQuantizedAllToShardedLinear,
                                 nn.QuantizedShardedToAllLinear: CPUQuantizedShardedToAllLinear})  # fmt: skip


def _cpu_classes() -> tuple[type, type]:
    import mlx.core as mx
    import mlx.nn as nn

    from ._cpu_kernels import _qmm

    class _AllToSharded(nn.QuantizedAllToShardedLinear):  # type: ignore[misc]
        def __call__(self, x: mx.array) -> mx.array:
            if self.mode != "affine":
                out: mx.array = super().__call__(x)
                return out
            y = _qmm(x, self)
            return y + self["bias"] if "bias" in self else y

    class _ShardedToAll(nn.QuantizedShardedToAllLinear):  # type: ignore[misc]
        def __call__(self, x: mx.array) -> mx.array:
            if self.mode != "affine":
                out: mx.array = super().__call__(x)
                return out
            y = mx.distributed.all_sum(_qmm(x, self), group=self.group)
            return y + self["bias"] if "bias" in self else y

    _AllToSharded.__name__ = _AllToSharded.__qualname__ = "CPUQuantizedAllToShardedLinear"
    _ShardedToAll.__name__ = _ShardedToAll.__qualname__ = "CPUQuantizedShardedToAllLinear"
    return _AllToSharded, _ShardedToAll


CPUQuantizedAllToShardedLinear, CPUQuantizedShardedToAllLinear = _cpu_classes()


# ----------------------------------------------------------------- loading


def load(cls: type[Model], source: Any, mode: str, *, revision: str | None, dtype: str | None,
         offline: bool | None, gguf_weights: str, quantized: bool, force: bool, progress: Any) -> Model:
    """:meth:`Model.load` with ``distributed=mode``: this rank's shard, as a :class:`DistributedModel`."""
    from . import _hub as hub
    from . import _runtime as runtime
    from . import _sources as sources
    from ._distributed_memory import check_fits
    from ._loading import load_folder, model_dtype, read_config
    from ._lockstep import DistributedModel

    if mode not in MODES:
        raise InvalidOptionError(
            f"distributed={mode!r}: choose 'tensor' (every layer split over the ranks), 'pipeline' "
            "(each rank a run of layers) or None.",
            option="distributed",
        )
    g = group()
    rank, size = g.rank(), g.size()
    rt = runtime.current()
    located = sources.locate(source, quantized=quantized, offline=offline)
    if not force:
        guess = Placement(mode, rank, size)
        check_fits(located, guess, dtype=dtype, revision=revision, offline=hub.is_offline(offline),
                   gguf_weights=gguf_weights)  # fmt: skip
    first = located.kind in ("gguf", "default")  # an import into the shared models folder: rank 0 alone first
    if first and rank:
        barrier(g)
    folder = sources.local_folder(located, revision=revision, offline=offline, gguf_weights=gguf_weights,
                                  progress=progress)  # fmt: skip
    if first and not rank:
        barrier(g)
    config = read_config(folder)
    check_splits(config, mode, size, located.name)
    compute = dtype or rt.compute_dtype(model_dtype(config))
    check_same_model(folder, mode, compute, g)
    loaded = load_folder(folder, dtype=compute, prepare=sharder(mode, g, located.name))
    if not rt.on_gpu:
        from ._cpu_kernels import optimize_for_cpu

        optimize_for_cpu(loaded.module)
        optimize_sharded_for_cpu(loaded.module)
    layers = None
    if mode == "pipeline":
        inner = loaded.module.model
        layers = (int(inner.start_idx), int(inner.end_idx))
    barrier(g)  # every rank has its shard
    placement = Placement(mode, rank, size, layers)
    return DistributedModel(loaded, name=located.name, path=folder, dtype=compute, rt=rt, placement=placement, group=g)


def lead(model: Model) -> Any:
    """Rank 0 decides, the others follow: see :func:`mlx_local._lockstep.lead`."""
    from ._lockstep import lead as lead_

    return lead_(model)


def follow(model: Model) -> int:
    """Run rank 0's generations until it stops leading: see :func:`mlx_local._lockstep.follow`."""
    from ._lockstep import follow as follow_

    return follow_(model)
