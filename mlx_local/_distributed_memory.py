"""The memory a rank of a distributed model needs: the estimate split the way the shards split."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._distributed import Placement, pipeline_range

__all__ = ["estimate_rank", "check_fits"]


def estimate_rank(located: Any, placement: Placement, *, dtype: str | None, revision: str | None, offline: bool,
                  gguf_weights: str) -> Any:
    """The memory estimate of the shard ``placement`` holds (a :class:`~mlx_local._memory.MemoryEstimate`).

    Split the way the shards split: tensor parallel divides each layer's
    matrices and the KV cache by the number of ranks (embeddings, head and
    norms stay whole on every rank); pipeline parallel keeps the layers of
    this rank (and their KV cache), plus embeddings, head and norms.
    """
    import re

    from . import _memory as memory
    from ._weight_sizes import Weight, text_config, weights_of

    config, weights, basis = weights_of(located, revision, offline, gguf_weights)
    layers = int(text_config(config).get("num_hidden_layers") or 1)
    layer_of = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    size = placement.size
    start, end = pipeline_range(layers, placement.rank, size) if placement.mode == "pipeline" else (0, layers)
    mine: list[Weight] = []
    for w in weights:
        m = layer_of.search(w.name)
        if m is None:
            mine.append(w)
        elif placement.mode == "pipeline":
            if start <= int(m.group(1)) < end:
                mine.append(w)
        elif len(w.shape) == 2 and w.shape[0] >= size and "norm" not in w.name:
            mine.append(replace(w, shape=(w.shape[0] // size, w.shape[1]), other_bytes=w.other_bytes // size))
        else:
            mine.append(w)
    est = memory._assemble(located.name, config, mine, basis, context=memory.DEFAULT_CONTEXT, bits=None,
                           group_size=64, dtype=dtype)  # fmt: skip
    share = 1 / size if placement.mode == "tensor" else (end - start) / layers
    return replace(est, kv_cache=int(est.kv_cache * share), details={**est.details, "placement": str(placement)})


def check_fits(located: Any, placement: Placement, *, dtype: str | None, revision: str | None,
               offline: bool, gguf_weights: str) -> None:
    """InsufficientMemoryError unless this rank's shard fits this machine."""
    from ._device import device_info
    from ._units import format_bytes
    from .errors import InsufficientMemoryError, ModelNotFoundError

    try:
        est = estimate_rank(located, placement, dtype=dtype, revision=revision, offline=offline, gguf_weights=gguf_weights)
    except ModelNotFoundError:
        return
    device = device_info()
    if est.total <= device.usable_memory:
        return
    raise InsufficientMemoryError(
        f"{located.name}: the share of {placement} needs about {format_bytes(est.total)} "
        f"(weights {format_bytes(est.weights)}, KV cache {format_bytes(est.kv_cache)}, overhead "
        f"{format_bytes(est.overhead)}) but this machine offers {format_bytes(device.usable_memory)} "
        f"({device.usable_source}). Launch more ranks, or pass force=True to load it anyway.",
        required=est.total, available=device.usable_memory, suggestion=None,
    )  # fmt: skip
