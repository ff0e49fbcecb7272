"""``Model``: load a model from anywhere, then generate or stream text."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

from . import _hub as hub, _runtime as runtime, _sources as sources
from .errors import InvalidOptionError, ModelNotFoundError
from ._fileio import replace_dir
from ._generation import Chunk, GenerationOptions, Result, collect, generate_tokens
from ._loading import LoadedFolder, load_folder
from ._sources import DEFAULT_MODEL
from ._thinking import ThinkTags

if TYPE_CHECKING:
    from ._chat import Chat

__all__ = ["Model", "DEFAULT_MODEL"]

Prompt = Union[str, Sequence[Mapping[str, str]]]

_DTYPES = ("float32", "float16", "bfloat16")


def _check_fits(located: sources.Located, *, dtype: str | None, revision: str | None, offline: bool | None,
                gguf_weights: str) -> None:
    """Refuse a model that would not fit this machine, before any download or import."""
    from . import _memory as memory
    from .errors import InsufficientMemoryError

    context = memory.DEFAULT_CONTEXT
    try:
        est = memory.estimate_located(located, context=context, dtype=dtype, revision=revision,
                                      offline=hub.is_offline(offline), gguf_weights=gguf_weights)
    except ModelNotFoundError:
        return  # not on disk and the hub out of reach: loading says so itself
    device = memory.device_info()
    if est.total <= device.usable_memory:
        return
    family = located.entry.family if located.entry else None
    other = memory.largest_fitting(device.usable_memory, context=context, family=family)
    hint = f" {other.name} would fit (`Model.load({other.name!r})`)." if other else " No catalog model fits either."
    raise InsufficientMemoryError(
        f"{located.name} needs about {memory.format_bytes(est.total)} (weights {memory.format_bytes(est.weights)}, "
        f"KV cache {memory.format_bytes(est.kv_cache)} for {context} tokens, overhead {memory.format_bytes(est.overhead)}) "
        f"but this machine offers {memory.format_bytes(device.usable_memory)} ({device.usable_source}).{hint} "
        "Pass force=True to load it anyway.",
        required=est.total,
        available=device.usable_memory,
        suggestion=other.name if other else None,
    )


def _merge_system(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """Messages with a leading system message folded into the first user message."""
    if not messages or messages[0].get("role") != "system":
        return None
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{messages[0]['content']}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": str(messages[0]["content"])}] + rest


class Model:
    """A language model loaded for generation.

    Create one with :meth:`Model.load`. ``model.device``, ``model.dtype`` and
    ``repr(model)`` tell what the runtime chose.
    """

    def __init__(self, loaded: LoadedFolder, *, name: str, path: Path, dtype: str, rt: runtime.Runtime) -> None:
        self._loaded = loaded
        self._defaults = GenerationOptions.from_generation_config(loaded.generation_config)
        self.think_tags = ThinkTags.of(loaded.tokenizer)
        self.name = name
        self.path = path
        self.dtype = dtype
        self.runtime = rt

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | None = None,
        *,
        revision: str | None = None,
        dtype: str | None = None,
        offline: bool | None = None,
        gguf_weights: str = "quantized",
        quantized: bool = True,
        force: bool = False,
        progress: Callable[[str, float], None] | bool | None = None,
    ) -> "Model":
        """Load a model.

        Args:
            source: a catalog name (``"qwen3-0.6b"``, see
                :func:`mlx_local.models`), a Hugging Face repo id
                (``"Qwen/Qwen3-0.6B"``), a local model folder (HF or MLX
                layout), a ``.gguf`` file, or the name of a model converted
                into the models folder. ``None`` loads the embedded default,
                SmolLM2-135M-Instruct.
            revision: branch, tag or commit of a repo id.
            dtype: compute dtype (``"float32"``, ``"float16"``, ``"bfloat16"``).
                Default: the model's own on a GPU, float32 on the CPU.
            offline: never use the network (default: ``HF_HUB_OFFLINE``).
                The local cache is always tried first either way.
            gguf_weights: GGUF only; how to import the weights.
                ``"quantized"`` (default): formats MLX holds exactly (Q4_0,
                Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K) are repacked without loss,
                the others (Q2_K, Q3_K, Q6_K, ...) re-quantized by MLX.
                ``"exact"``: as "quantized", but the others kept in float32.
                ``"float"``: everything dequantized to float32.
            quantized: for a catalog name: its ready MLX 4-bit repo (default)
                or, with False, the original.
            force: load even if the memory estimate (at 4096 tokens of
                context, see :func:`mlx_local.estimate_memory`) exceeds
                what this machine offers.
            progress: None: downloads show huggingface_hub's progress bars
                on a terminal; False: nothing is shown; a callable
                ``progress(stage, fraction)`` also hears of a GGUF import
                (stage ``"import"``).

        Raises:
            ModelNotFoundError: no such path, repo or name (the message lists
                the closest catalog names), or not cached and offline.
            GatedModelError: the repo wants its licence accepted first.
            InsufficientMemoryError: it would not fit (checked before any
                download); the message names a catalog model that would.
            InvalidModelError: the model exists but is broken.
            UnsupportedArchitectureError: its architecture is not supported.

        >>> model = Model.load()                      # doctest: +SKIP
        >>> model.generate("What is the capital of France?").text  # doctest: +SKIP
        'The capital of France is Paris.'
        """
        if dtype is not None and dtype not in _DTYPES:
            raise InvalidOptionError(f"dtype={dtype!r}: choose one of {', '.join(_DTYPES)}", option="dtype")
        from ._gguf_import import WEIGHT_MODES

        if gguf_weights not in WEIGHT_MODES:
            raise InvalidOptionError(
                f"gguf_weights={gguf_weights!r}: choose one of {', '.join(WEIGHT_MODES)}", option="gguf_weights"
            )
        rt = runtime.current()
        located = sources.locate(source, quantized=quantized, offline=offline)
        if not force:
            _check_fits(located, dtype=dtype, revision=revision, offline=offline, gguf_weights=gguf_weights)
        folder = sources.local_folder(
            located, revision=revision, offline=offline, gguf_weights=gguf_weights, progress=progress
        )
        name = located.name
        from ._loading import model_dtype, read_config

        compute = dtype or rt.compute_dtype(model_dtype(read_config(folder)))
        loaded = load_folder(folder, dtype=compute)
        if not rt.on_gpu:
            from ._cpu_kernels import optimize_for_cpu

            optimize_for_cpu(loaded.module)
        return cls(loaded, name=name, path=folder, dtype=compute, rt=rt)

    # ---------------------------------------------------------------- facts

    @property
    def device(self) -> str:
        """Where it computes: ``"gpu"`` (Metal/CUDA) or ``"cpu"``."""
        return self.runtime.device

    @property
    def config(self) -> dict[str, Any]:
        return self._loaded.config

    @property
    def architecture(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def tokenizer(self) -> Any:
        """mlx-lm's tokenizer wrapper (a transformers tokenizer underneath)."""
        return self._loaded.tokenizer

    @property
    def module(self) -> Any:
        """The mlx-lm ``nn.Module``, for whatever this API does not cover."""
        return self._loaded.module

    @property
    def parameters(self) -> int:
        from mlx_lm.utils import get_total_parameters

        return int(get_total_parameters(self.module))

    @property
    def quantization(self) -> str:
        """e.g. ``"4-bit, group 32"``, or ``"none"``."""
        q = self.config.get("quantization")
        if not q:
            return "none"
        extra = sorted({v["bits"] for v in q.values() if isinstance(v, dict) and "bits" in v} - {q.get("bits")})
        more = f" (some layers {'/'.join(map(str, extra))}-bit)" if extra else ""
        return f"{q.get('bits')}-bit, group {q.get('group_size')}{more}"

    @property
    def default_options(self) -> GenerationOptions:
        """Sampling defaults, from the model's generation_config.json if it has one."""
        return self._defaults

    def __repr__(self) -> str:
        where = self.runtime.backend if self.device == "gpu" else f"cpu with {self.runtime.blas.split(' (')[0]}"
        return (
            f"Model({self.name!r}, {self.architecture}, {self.parameters / 1e6:.0f}M params, "
            f"quantization {self.quantization}, computes in {self.dtype} on {where})"
        )

    # ------------------------------------------------------------ prompting

    def encode(self, prompt: Prompt, *, raw: bool = False) -> list[int]:
        """The token ids ``generate`` would feed the model for ``prompt``."""
        return self._prepare(prompt, raw)[0]

    def _prepare(self, prompt: Prompt, raw: bool) -> tuple[list[int], bool]:
        """Token ids for ``prompt``, and whether the prompt opened a think block."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidOptionError("The prompt is empty; give the model something to respond to.", option="prompt")
            if raw or not tok.has_chat_template:
                return list(tok.encode(prompt)), False
            messages: list[dict[str, str]] = [{"role": "user", "content": prompt}]
        else:
            if raw:
                raise InvalidOptionError("raw=True needs a string prompt, not a list of messages.", option="raw")
            messages = self._check_messages(prompt)
            if not tok.has_chat_template:
                raise InvalidOptionError(
                    f"{self.name} has no chat template, so it cannot take a list of messages; "
                    "pass a string (it is sent as-is).",
                    option="prompt",
                )
        text = self.render(messages)
        return self.tokenize_rendered(text), self.opens_thinking(text)

    @staticmethod
    def _check_messages(prompt: Any) -> list[dict[str, str]]:
        if not isinstance(prompt, Sequence) or not prompt:
            raise InvalidOptionError(
                "The prompt must be a non-empty string or a non-empty list of "
                "{'role': ..., 'content': ...} messages.",
                option="prompt",
            )
        messages = []
        for i, m in enumerate(prompt):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidOptionError(
                    f"Message {i} must be a dict with string 'role' and 'content', got {m!r}.", option="prompt"
                )
            messages.append(dict(m))
        if not any(m["content"].strip() for m in messages):
            raise InvalidOptionError("Every message is empty; give the model something to respond to.", option="prompt")
        return messages

    def render(self, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any) -> str:
        """The prompt text the chat template makes of ``messages`` (generation prompt added).

        Templates that reject a system message (no system role) get it merged
        into the first user message instead, as those model families expect.
        """
        tok = self.tokenizer
        try:
            return str(tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False, **template_kwargs))
        except Exception as e:  # jinja2 TemplateError, raise_exception() in templates
            merged = _merge_system(messages)
            if merged is not None:
                try:
                    return str(tok.apply_chat_template(merged, add_generation_prompt=True, tokenize=False, **template_kwargs))
                except Exception:
                    pass
            raise InvalidOptionError(
                f"{self.name}'s chat template rejected these messages: {e}", option="prompt"
            ) from e

    def tokenize_rendered(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (the template wrote any BOS itself)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def opens_thinking(self, rendered: str) -> bool:
        """Whether a rendered prompt ends inside an open think block."""
        return self.think_tags is not None and rendered.rstrip().endswith(self.think_tags.start)

    # ----------------------------------------------------------- generating

    def stream(
        self,
        prompt: Prompt,
        *,
        raw: bool = False,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Iterator[Chunk]:
        """Generate, yielding text as it comes; the last chunk carries ``stats``.

        ``prompt`` is a string (sent through the chat template as one user
        message, or as-is with ``raw=True``) or a list of
        ``{"role", "content"}`` messages. ``options`` are the fields of
        :class:`GenerationOptions`; unset ones take the model's defaults.
        ``logits_processors`` (advanced) are mlx-lm logits processors,
        ``f(tokens, logits) -> logits``, applied after the sampling options.
        A thinking model's reasoning comes as ``kind="thinking"`` chunks.
        """
        opts = self._defaults.updated(**options)
        ids, inside = self._prepare(prompt, raw)
        return self.run(ids, opts, logits_processors=logits_processors, thinking_inside=inside)

    def run(self, ids: Sequence[int], opts: GenerationOptions, **kwargs: Any) -> Iterator[Chunk]:
        """Generate from token ids (the layer ``stream`` and ``Chat`` share).

        ``kwargs`` go to :func:`mlx_local._generation.generate_tokens`.
        """
        kwargs.setdefault("think_tags", self.think_tags)
        if self.runtime.backend == "metal":
            from mlx_lm.generate import wired_limit

            with wired_limit(self.module):
                yield from generate_tokens(self.module, self.tokenizer, ids, opts, **kwargs)
        else:
            yield from generate_tokens(self.module, self.tokenizer, ids, opts, **kwargs)

    def generate(
        self,
        prompt: Prompt,
        *,
        raw: bool = False,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Result:
        """Generate a whole answer. Same arguments as :meth:`stream`.

        >>> model.generate("Name a colour.", max_tokens=8, seed=1)  # doctest: +SKIP
        Result(text='Blue.', finish_reason='stop', stats=Stats(...))
        """
        chunks = self.stream(prompt, raw=raw, logits_processors=logits_processors, **options)
        text, thinking, finish, stats, ids = collect(chunks)
        return Result(text, finish, stats, ids, thinking)

    def chat(
        self,
        system: str | None = None,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        reuse_cache: bool = True,
        **default_options: Any,
    ) -> "Chat":
        """Start a :class:`~mlx_local.Chat` with this model (see there for the arguments)."""
        from ._chat import Chat

        return Chat(
            self, system=system, thinking=thinking, thinking_budget=thinking_budget, reuse_cache=reuse_cache, **default_options
        )

    # -------------------------------------------------------------- saving

    def save(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write this model as an MLX model folder (as stored, not as cast).

        A GGUF import saved this way loads without importing again, with
        ``Model.load`` and ``mlx_lm.load`` alike. The folder appears only
        when complete.

        Raises:
            InvalidOptionError: ``dest`` exists (without ``overwrite``) or is
                inside the model's own folder.
            StorageError: the folder could not be written (disk full,
                permissions); ``dest`` is left as it was.
        """
        from ._fileio import clear_stale, staged_folder, storage_errors

        dest = Path(dest).expanduser().resolve()
        with storage_errors(dest, "save the model"):
            clear_stale(dest)  # (first: a dest moved aside by a killed save is put back)
            if dest.exists() and not overwrite:
                raise InvalidOptionError(f"{dest} already exists; pass overwrite=True to replace it.", option="dest")
            if dest == self.path or self.path in dest.parents:
                raise InvalidOptionError(f"{dest} is inside the model's own folder {self.path}.", option="dest")
            with staged_folder(dest, overwrite=overwrite) as stage:
                shutil.copytree(self.path, stage.folder, dirs_exist_ok=True)
        return dest
