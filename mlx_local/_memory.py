"""Will it fit? The memory a model needs, before it is loaded.

:func:`estimate_memory` adds up three terms without loading any weight:

- weights: every tensor's size as it will sit in memory, read from the
  safetensors headers of a local folder, the header of a GGUF file, the hub's
  safetensors metadata (a few kilobytes of HTTP range requests) for a repo not
  downloaded yet, or, offline, the catalog's parameter count (all read by
  :mod:`mlx_local._weight_sizes`). Floating-point
  tensors count at the compute dtype the runtime will choose (float32 on the
  CPU, so a bfloat16 model doubles there), quantized ones at their bits plus a
  scale and a bias per group;
- KV cache: for the context, from the config: per attention layer 2 x KV heads
  x head dim x tokens (rounded up to mlx-lm's 256-token steps) at the compute
  dtype; sliding-window layers (Gemma 3) hold at most their window, and
  linear-attention layers (Qwen3.5) a fixed state;
- overhead: the working memory of generating, measured (see ``_overhead``);
  on the CPU, for a quantized model, mostly the layers dequantized for the
  prompt (see ``_DEQUANT_PEAK``).

The estimate is of the memory MLX allocates (what ``mx.get_peak_memory()``
reports after loading and generating); the Python process adds its own few
hundred megabytes on top, outside the model. What the machine offers is
:func:`mlx_local._device.device_info`'s.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from . import _runtime as runtime
from ._catalog import CatalogEntry
from ._device import DeviceInfo, device_info
from ._units import format_bytes
from ._weight_sizes import Weight, quantizable, text_config, weight_bytes, weights_of
from .errors import InvalidOptionError

__all__ = ["MemoryEstimate", "estimate_memory"]

#: The context ``Model.load`` checks against when none is given.
DEFAULT_CONTEXT = 4096

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}



@dataclass(frozen=True)
class MemoryEstimate:
    """How much memory a model needs, in bytes, by part.

    Attributes:
        source: what was estimated.
        weights: the weights as they sit in memory.
        kv_cache: the KV cache (and any recurrent state) for ``context`` tokens.
        overhead: working memory while generating.
        context: tokens of context (prompt plus answer) assumed.
        dtype: the compute dtype assumed.
        bits: the weights' quantization assumed (None: as stored).
        basis: where the weight sizes came from.
    """

    source: str
    weights: int
    kv_cache: int
    overhead: int
    context: int
    dtype: str
    bits: int | None
    basis: str
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def fits(self, device: DeviceInfo | None = None) -> bool:
        """Whether the total fits the usable memory of ``device`` (default: this one)."""
        return self.total <= (device or device_info()).usable_memory

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def __str__(self) -> str:
        quant = "as stored" if self.bits is None else f"{self.bits}-bit"
        return "\n".join(
            [
                f"{self.source}: {format_bytes(self.total)} at {self.context} tokens of context "
                f"({quant}, computing in {self.dtype}; weights from {self.basis})",
                f"  weights   {format_bytes(self.weights):>9}",
                f"  KV cache  {format_bytes(self.kv_cache):>9}",
                f"  overhead  {format_bytes(self.overhead):>9}",
            ]
        )


def _layer_kinds(cfg: dict[str, Any]) -> list[str]:
    """``"full"``, ``"sliding"`` or ``"linear"`` for each layer, as mlx-lm builds its caches."""
    n = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 0)
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        return ["linear" if "linear" in t else "sliding" if "sliding" in t else "full" for t in map(str, types)]
    pattern = cfg.get("sliding_window_pattern") or cfg.get("full_attention_every")
    if pattern and cfg.get("sliding_window"):
        p = int(pattern)
        return ["full" if i % p == p - 1 else "sliding" for i in range(n)]
    interval = cfg.get("full_attention_interval")
    if interval:
        return ["full" if (i + 1) % int(interval) == 0 else "linear" for i in range(n)]
    linear = int(cfg.get("linear_attention_layers") or 0)
    if linear:  # catalog summary of a hybrid model: full attention every n-th layer
        every = max(1, round(n / max(1, n - linear)))
        return ["full" if (i + 1) % every == 0 else "linear" for i in range(n)]
    return ["full"] * n


def _steps(tokens: int, step: int = 256) -> int:
    """``tokens`` rounded up to whole steps of mlx-lm's KV cache."""
    return -(-tokens // step) * step


def kv_cache_bytes(config: dict[str, Any], context: int, dtype_bytes: int) -> int:
    """KV-cache (and recurrent state) bytes for ``context`` tokens, from a config."""
    cfg = text_config(config)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size", 0)) // heads)
    per_token = 2 * kv_heads * head_dim * dtype_bytes
    window = int(cfg.get("sliding_window") or 0)
    total = 0
    for kind in _layer_kinds(cfg):
        if kind == "full" or (kind == "sliding" and not window):
            total += per_token * _steps(context)
        elif kind == "sliding":
            total += per_token * min(_steps(context), window)
        else:
            total += _linear_state_bytes(cfg, dtype_bytes)
    return total


def _linear_state_bytes(cfg: dict[str, Any], dtype_bytes: int) -> int:
    """One Gated DeltaNet layer's state (Qwen3.5): a conv state and a recurrent state, whatever the context."""
    kh = int(cfg.get("linear_num_key_heads") or 16)
    vh = int(cfg.get("linear_num_value_heads") or 32)
    kd = int(cfg.get("linear_key_head_dim") or 128)
    vd = int(cfg.get("linear_value_head_dim") or 128)
    conv = (int(cfg.get("linear_conv_kernel_dim") or 4) - 1) * (2 * kh * kd + vh * vd)
    return (conv + vh * vd * kd) * dtype_bytes


#: mlx-lm's generate_step prefills the prompt in chunks of this many tokens.
PREFILL_STEP = 2048
_KV_STEP = 256  # mlx-lm's KVCache grows in steps of this many tokens
# Fitted to measured peaks (78 runs: llama/qwen3/gemma3 shapes and SmolLM2,
# float32 and 4-bit, prompts of 16 to 4096 tokens; worst error 8.8%):
_ACTIVATIONS_FLOAT = 17  # hidden-size float vectors alive per prefill token next to the attention scores
_ACTIVATIONS_QUANTIZED = 8
_DECODE_VOCAB = 4  # vocab-size float vectors alive while sampling (logits, log-probs, ...)
# Dequantizing on the CPU (MLX 0.32), measured: mx.dequantize peaks at this many
# times its float output, whatever the group size. At 2, 4 and 8 bits it is one
# kernel, which MLX's lazy graph runs ahead of need: every layer holds about a
# quarter of its MLP's float size, less 0.62 hidden-size vectors per token of
# the chunk (evaluating layer by layer, nothing is held). At 3, 5 and 6 bits it
# is several ops and nothing is held, but one layer's MLP peaks while the
# attention scores are still alive. (SmolLM2 and a Qwen2.5-0.5B shape at 4 and
# 5 bits, prompts of 16 to 4096 tokens, one layer to all of them; the held part
# checked on four layers of a 7B Qwen2 shape: 194 MiB a layer, predicted 190.)
_DEQUANT_PEAK = {2: 2, 3: 4, 4: 2, 5: 6, 6: 7, 8: 2}
_DEQUANT_HELD = {2: 0.245, 4: 0.245, 8: 0.245}
_DEQUANT_HELD_LESS = 0.62
_MLP = re.compile(r"layers\.(\d+)\.(mlp|feed_forward)\.(?!.*experts)")
_LAYER = re.compile(r"layers\.\d+\.")


@dataclass(frozen=True)
class _Dequant:
    """What dequantizing a quantized model's layers for a prefill chunk costs on the CPU, in bytes.

    Per layer, its MLP's matrices as (bits, elements, native row limit): a chunk of at most that many
    tokens goes to the native kernels for that matrix (0: never), which dequantize nothing.
    """

    layers: tuple[tuple[tuple[int, int, int], ...], ...]
    dtype_bytes: int

    def _active(self, chunk: int) -> list[list[tuple[int, int]]]:
        return [[(b, n) for b, n, limit in mlp if chunk > limit] for mlp in self.layers]

    def peak_for(self, chunk: int) -> int:
        """One layer's MLP at its dequantizing peak, for a chunk of ``chunk`` tokens (0: nothing dequantized)."""
        return int(max((sum(_DEQUANT_PEAK.get(b, 2) * n for b, n in mlp) for mlp in self._active(chunk)), default=0)
                   * self.dtype_bytes)  # fmt: skip

    def with_scores_for(self, chunk: int) -> bool:
        """Whether that peak comes on top of the attention scores (several ops: 3, 5, 6 bits), not after them."""
        return any(b not in _DEQUANT_HELD for mlp in self._active(chunk) for b, _ in mlp)

    def held_for(self, chunk: int, vector_bytes: int) -> int:
        """Bytes held through a chunk of ``chunk`` tokens whose hidden vectors are ``vector_bytes`` each."""
        less = int(_DEQUANT_HELD_LESS * chunk * vector_bytes)
        held = (int(sum(_DEQUANT_HELD.get(b, 0) * n for b, n in mlp) * self.dtype_bytes) for mlp in self._active(chunk))
        return sum(max(0, h - less) for h in held)


def _dequant_work(config: dict[str, Any], weights: Iterable[Weight], dtype_bytes: int, bits: int | None,
                  group_size: int) -> _Dequant | None:
    """The dequantizing cost of ``weights`` (quantized to ``bits`` if given), from each layer's MLP."""
    weights = list(weights)
    layers: dict[int, list[tuple[int, int, int]]] = {}  # (bits, elements, input width)
    for w in weights:
        b = bits if bits is not None and (w.bits is not None or quantizable(w, group_size)) else w.bits
        m = _MLP.search(w.name)
        if b and m and len(w.shape) == 2:
            layers.setdefault(int(m.group(1)), []).append((b, w.numel, w.shape[-1]))
    if not layers and not any(_LAYER.search(w.name) for w in weights):
        # The catalog's summary: every layer's MLP at the model's bits, its size from the config or the body's.
        b = bits or next((w.bits for w in weights if w.bits), None)
        if b is None:
            return None
        cfg = text_config(config)
        n = len(_layer_kinds(cfg)) or 1
        hidden, heads = int(cfg.get("hidden_size") or 0), int(cfg.get("num_attention_heads") or 1)
        kv_heads, head_dim = int(cfg.get("num_key_value_heads") or heads), int(cfg.get("head_dim") or hidden // heads)
        body = sum(w.numel for w in weights if not w.name.endswith(("embed_tokens.weight", "lm_head.weight")))
        attention = 2 * hidden * (heads + kv_heads) * head_dim
        inter = cfg.get("intermediate_size")
        if inter:  # gate and up read the hidden size, down the intermediate one
            mlp = [(b, 2 * hidden * int(inter), hidden), (b, hidden * int(inter), int(inter))]
        else:
            mlp = [(b, max(0, body // n - attention), hidden)]
        layers = {i: mlp for i in range(n)}
    if not layers:
        return None
    limit = _native_limit()
    return _Dequant(tuple(tuple((b, size, limit(b, k)) for b, size, k in mlp) for mlp in layers.values()), dtype_bytes)


def _native_limit() -> Any:
    """``limit(bits, input_width)``: up to how many rows the native kernels take such a matrix (0: they do not)."""
    from . import _cpu_kernels as ck
    from ._native import supports

    mode = ck.native_mode()

    def limit(bits: int, k: int) -> int:
        return ck.native_row_limit(k, bits, mode) if mode != "off" and supports(bits, 64, k) else 0

    return limit


def _overhead(config: dict[str, Any], context: int, dtype_bytes: int, quantized: bool, on_gpu: bool,
              final_kv: int, dequant: _Dequant | None = None) -> int:
    """Working memory beyond the weights and the final KV cache, at its peak.

    Follows what mlx-lm does with ``context`` tokens: the prompt is prefilled
    in chunks of 2048 tokens, evaluating only the caches (no logits), then
    tokens are sampled one at a time. In a prefill chunk of L tokens over S
    keys, the CPU materialises the attention scores (heads x L x S floats,
    plus a boolean mask) one layer at a time, next to about 17 (float) or 8
    (quantized) hidden-size activations per token; a quantized model's layers
    are dequantized for the chunk (``cpu_kernels``): ``dequant`` says what that
    holds and what one layer's MLP adds at its peak (see ``_DEQUANT_PEAK``),
    unless the chunk is short enough for the native kernels, which allocate
    only their output.
    While sampling, a few vocabulary-sized vectors. On a GPU (measured on
    neither Metal nor CUDA here) attention is fused and quantized matmuls run
    directly, so only the activations and sampling terms are counted.
    """
    cfg = text_config(config)
    hidden = int(cfg.get("hidden_size") or 0)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = int(cfg.get("vocab_size") or 0)
    window = int(cfg.get("sliding_window") or 0)
    kinds = _layer_kinds(cfg)
    per_token = 2 * kv_heads * head_dim * dtype_bytes
    state = kinds.count("linear") * _linear_state_bytes(cfg, dtype_bytes)
    # Only the layers before the last attend during prefill (the last one feeds only the unused logits).
    attending = [k for k in kinds[:-1] if k != "linear"] or ["full"]

    rows = _ACTIVATIONS_QUANTIZED if quantized else _ACTIVATIONS_FLOAT
    if on_gpu:
        dequant = None
    peak = _DECODE_VOCAB * vocab * 4 + final_kv
    done, prompt = 0, max(context - 1, 1)
    while done < prompt:
        chunk = min(PREFILL_STEP, prompt - done)
        seen = done + chunk
        sliding_span = min(done, max(window - 1, 0)) + chunk
        kv = state
        for kind in kinds:
            if kind == "full" or (kind == "sliding" and not window):
                kv += per_token * _steps(seen, _KV_STEP)
            elif kind == "sliding":
                kv += per_token * sliding_span
        keys = seen if "full" in attending or not window else sliding_span
        # (With the fused CPU ops, attention is tiled and the measured peaks are lower at long prompts - 199 MB
        # instead of 253 for SmolLM2 4-bit at 1024 tokens - but not refitted yet: this stays the unfused figure.)
        scores = 0 if on_gpu else heads * chunk * keys * 4 + chunk * keys + 2 * chunk * heads * head_dim * 4
        activations = rows * chunk * hidden * dtype_bytes
        work = scores
        if dequant is not None and chunk >= 2 and (dequantized := dequant.peak_for(chunk)):
            held = dequant.held_for(chunk, hidden * dtype_bytes)
            work = held + (scores + dequantized if dequant.with_scores_for(chunk) else max(scores, dequantized))
        peak = max(peak, kv + activations + work)
        done = seen
    return max(0, peak - final_kv)


def _assemble(name: str, config: dict[str, Any], weights: list[Weight], basis: str, *, context: int,
              bits: int | None, group_size: int, dtype: str | None) -> MemoryEstimate:
    from ._loading import model_dtype

    rt = runtime.current()
    stored = model_dtype(config) if ("torch_dtype" in config or "dtype" in config) else "bfloat16"
    compute = dtype or rt.compute_dtype(stored)
    size = _DTYPE_BYTES[compute]
    quantized = bits is not None or any(w.bits for w in weights)
    kv = kv_cache_bytes(config, context, size)
    return MemoryEstimate(
        source=name,
        weights=weight_bytes(weights, size, bits, group_size),
        kv_cache=kv,
        overhead=_overhead(config, context, size, quantized, rt.on_gpu, kv,
                           _dequant_work(config, weights, size, bits, group_size) if quantized else None),
        context=context,
        dtype=compute,
        bits=bits,
        basis=basis,
        details={"parameters": sum(w.numel for w in weights), "layers": _layer_kinds(text_config(config))},
    )


def _check(context: Any, bits: Any, group_size: Any, dtype: Any) -> None:
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise InvalidOptionError(f"context={context!r}: give a positive number of tokens.", option="context")
    if bits is not None and bits not in (2, 3, 4, 5, 6, 8):
        raise InvalidOptionError(f"bits={bits!r}: choose 2, 3, 4, 5, 6 or 8 (or None: as stored).", option="bits")
    if group_size not in (32, 64, 128):
        raise InvalidOptionError(f"group_size={group_size!r}: choose 32, 64 or 128.", option="group_size")
    if dtype is not None and dtype not in _DTYPE_BYTES:
        raise InvalidOptionError(f"dtype={dtype!r}: choose one of {', '.join(_DTYPE_BYTES)}", option="dtype")


def estimate_memory(
    source: Any = None,
    *,
    context: int = DEFAULT_CONTEXT,
    bits: int | None = None,
    group_size: int = 64,
    dtype: str | None = None,
    quantized: bool = True,
    revision: str | None = None,
    offline: bool | None = None,
    gguf_weights: str = "quantized",
) -> MemoryEstimate:
    """How much memory ``source`` needs to load and generate with ``context`` tokens.

    Nothing is loaded and nothing big is downloaded: see the module docstring
    for where each number comes from. ``print()`` the result for a breakdown.

    Args:
        source: as :meth:`Model.load`: a catalog name, repo id, model folder,
            ``.gguf`` file, or None for the embedded default.
        context: tokens of prompt plus answer.
        bits: estimate as if quantized to this many bits (with
            ``group_size``, as ``convert`` would); None: as stored.
        dtype: the compute dtype (default: the runtime's choice).
        quantized: for catalog names, as in :meth:`Model.load`.
        revision, offline, gguf_weights: as in :meth:`Model.load`.

    Raises:
        InvalidOptionError: a bad ``context``, ``bits``, ``group_size`` or ``dtype``.
        ModelNotFoundError / InvalidModelError: as :meth:`Model.load`.

    >>> print(mlx_local.estimate_memory("qwen3-0.6b", context=8192))  # doctest: +SKIP
    """
    _check(context, bits, group_size, dtype)
    from . import _hub as hub
    from ._sources import locate

    located = locate(source, quantized=quantized, offline=offline)
    return estimate_located(located, context=context, bits=bits, group_size=group_size, dtype=dtype,
                            revision=revision, offline=hub.is_offline(offline), gguf_weights=gguf_weights)


def estimate_located(located: Any, *, context: int = DEFAULT_CONTEXT, bits: int | None = None, group_size: int = 64,
                     dtype: str | None = None, revision: str | None = None, offline: bool = True,
                     gguf_weights: str = "quantized") -> MemoryEstimate:
    """:func:`estimate_memory` for a source :func:`mlx_local._sources.locate` has already located."""
    config, weights, basis = weights_of(located, revision, offline, gguf_weights)
    return _assemble(located.name, config, weights, basis, context=context, bits=bits, group_size=group_size, dtype=dtype)


def estimate_for_entry(entry: CatalogEntry, *, quantized: bool = True, context: int = DEFAULT_CONTEXT) -> MemoryEstimate:
    """The estimate for a catalog model, offline: from its files if downloaded, else from the catalog."""
    from ._sources import Located

    located = Located("repo", entry.name, repo=entry.repo_for(quantized), entry=entry)
    return estimate_located(located, context=min(context, entry.context_length))


def largest_fitting(usable: int, *, context: int = DEFAULT_CONTEXT, family: str | None = None) -> CatalogEntry | None:
    """The biggest catalog model (4-bit) that fits ``usable`` bytes: of ``family`` if one does, else of any."""
    from . import _catalog as catalog

    fitting = [e for e in catalog.entries() if estimate_for_entry(e, context=context).total <= usable]
    same = [e for e in fitting if e.family == family]
    pool = same or fitting
    return max(pool, key=lambda e: e.parameters) if pool else None


def check_fits(located: Any, *, dtype: str | None, revision: str | None, offline: bool | None,
                gguf_weights: str) -> None:
    """Refuse a model (a ``_sources.Located``) that would not fit this machine, before any download or import."""
    from ._hub import is_offline
    from .errors import InsufficientMemoryError, ModelNotFoundError

    context = DEFAULT_CONTEXT
    try:
        est = estimate_located(located, context=context, dtype=dtype, revision=revision,
                                      offline=is_offline(offline), gguf_weights=gguf_weights)
    except ModelNotFoundError:
        return  # not on disk and the hub out of reach: loading says so itself
    device = device_info()
    if est.total <= device.usable_memory:
        return
    family = located.entry.family if located.entry else None
    other = largest_fitting(device.usable_memory, context=context, family=family)
    hint = f" {other.name} would fit (`Model.load({other.name!r})`)." if other else " No catalog model fits either."
    raise InsufficientMemoryError(
        f"{located.name} needs about {format_bytes(est.total)} (weights {format_bytes(est.weights)}, "
        f"KV cache {format_bytes(est.kv_cache)} for {context} tokens, overhead {format_bytes(est.overhead)}) "
        f"but this machine offers {format_bytes(device.usable_memory)} ({device.usable_source}).{hint} "
        "Pass force=True to load it anyway.",
        required=est.total,
        available=device.usable_memory,
        suggestion=other.name if other else None,
    )
