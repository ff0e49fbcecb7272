"""``Model``: load a model from anywhere, then generate or stream text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

from . import _runtime as runtime
from . import _sources as sources
from ._conversation import check_messages
from ._generation import Chunk, GenerationOptions, Result, collect
from ._loading import LoadedFolder, load_folder
from ._prompt_cache import PromptCache
from ._request import Request
from ._sources import DEFAULT_MODEL
from ._template import ChatTemplate, Prompt
from ._thinking import ThinkTags
from .errors import InvalidOptionError

if TYPE_CHECKING:
    from ._chat import Chat
    from ._decoder import Decoder

__all__ = ["Model", "DEFAULT_MODEL"]

PromptInput = Union[str, Sequence[Mapping[str, Any]]]

_DTYPES = ("float32", "float16", "bfloat16")


class Model:
    """A language model loaded for generation.

    Create one with :meth:`Model.load`. ``model.device``, ``model.dtype`` and
    ``repr(model)`` tell what the runtime chose.
    """

    def __init__(self, loaded: LoadedFolder, *, name: str, path: Path, dtype: str, rt: runtime.Runtime) -> None:
        self._loaded = loaded
        self._defaults = GenerationOptions.from_generation_config(loaded.generation_config)
        self.think_tags = ThinkTags.of(loaded.tokenizer)
        self.template = ChatTemplate(loaded.tokenizer, self.think_tags, name)
        #: KV caches kept for reuse (by chats, and by ``reuse_cache=True`` calls).
        self.prompt_cache = PromptCache()
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
        distributed: str | None = None,
    ) -> Model:
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
            distributed: ``"tensor"`` or ``"pipeline"``: in a process started
                by ``mlx.launch`` / ``mlx-local launch``, load only this
                rank's shard (see :mod:`mlx_local._distributed`); None: the
                whole model here.

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
        if distributed is not None:
            from . import _distributed

            return _distributed.load(cls, source, distributed, revision=revision, dtype=dtype, offline=offline,
                                     gguf_weights=gguf_weights, quantized=quantized, force=force, progress=progress)
        rt = runtime.current()
        located = sources.locate(source, quantized=quantized, offline=offline)
        if not force:
            from ._memory import check_fits

            check_fits(located, dtype=dtype, revision=revision, offline=offline, gguf_weights=gguf_weights)
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
        if self.device == "gpu":
            where = self.runtime.backend
        else:
            from ._cpu_kernels import native_status

            where = f"cpu with {self.runtime.blas.split(' (')[0]}, quantized kernels: {native_status()}"
        return (
            f"Model({self.name!r}, {self.architecture}, {self.parameters / 1e6:.0f}M params, "
            f"quantization {self.quantization}, computes in {self.dtype} on {where}"
            + (f", {placement}" if (placement := getattr(self, "distributed", None)) else "") + ")"
        )

    # ------------------------------------------------------------ prompting

    def encode(self, prompt: PromptInput, *, raw: bool = False) -> list[int]:
        """The token ids ``generate`` would feed the model for ``prompt``."""
        return self._prompt(prompt, raw).ids

    def _prompt(self, prompt: PromptInput, raw: bool) -> Prompt:
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidOptionError("The prompt is empty; give the model something to respond to.", option="prompt")
            if raw or not self.template.available:
                return Prompt(list(tok.encode(prompt)), False)
            return self.template.prompt([{"role": "user", "content": prompt}])
        if raw:
            raise InvalidOptionError("raw=True needs a string prompt, not a list of messages.", option="raw")
        messages = check_messages(prompt)
        if not self.template.available:
            raise InvalidOptionError(
                f"{self.name} has no chat template, so it cannot take a list of messages; "
                "pass a string (it is sent as-is).",
                option="prompt",
            )
        return self.template.prompt(messages)

    # ----------------------------------------------------------- generating

    def constrain(self, schema: Any = None, choices: Any = None, pattern: Any = None, *,
                  thinking_open: bool = False, may_think: bool = True) -> tuple[Any, list[Any]]:
        """The constraint for ``schema`` / ``choices`` / ``pattern`` and its logits processor (or ``(None, [])``).

        Checked here, before any token is generated (see :mod:`mlx_local._structured`).
        """
        from ._structured import check_constraint, grammar_tokenizer, make_constraint

        constraint = make_constraint(schema, choices, pattern)
        if constraint is None:
            return None, []
        option = "schema" if constraint.kind == "json" else constraint.kind
        check_constraint(constraint.grammar, grammar_tokenizer(self), option)
        return constraint, self.grammar_processor(constraint.grammar, thinking_open=thinking_open, may_think=may_think)

    def grammar_processor(self, grammar: str, *, thinking_open: bool = False, may_think: bool = True) -> list[Any]:
        """A logits processor keeping the answer (after any thinking) inside an llguidance ``grammar``.

        ``may_think``: the model may open a think block before answering
        (False when thinking is switched off).
        """
        from ._structured import GrammarProcessor, grammar_tokenizer

        tags = self.think_tags
        think = (tags.start_id, tags.end_id) if tags and (may_think or thinking_open) else None
        return [GrammarProcessor(
            grammar_tokenizer(self), grammar, think=think,
            thinking_open=thinking_open, on_gpu=self.runtime.backend == "metal",
        )]  # fmt: skip

    def stream(
        self,
        prompt: PromptInput,
        *,
        raw: bool = False,
        reuse_cache: bool = False,
        schema: Any = None,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Iterator[Chunk]:
        """Generate, yielding text as it comes; the last chunk carries ``stats``.

        ``prompt`` is a string (sent through the chat template as one user
        message, or as-is with ``raw=True``) or a list of messages
        (``{"role": "system" | "user" | "assistant" | "tool", "content": ...}``).
        ``options`` are the fields of :class:`GenerationOptions`; unset ones
        take the model's defaults. ``reuse_cache=True`` keeps the KV cache
        in :attr:`prompt_cache` afterwards and starts from the longest cached
        prefix, so a conversation resent with one more message costs only the
        new tokens. ``logits_processors`` (advanced) are mlx-lm logits
        processors, ``f(tokens, logits) -> logits``, applied after the
        sampling options. A thinking model's reasoning comes as
        ``kind="thinking"`` chunks.

        Structured output (one of them): ``schema`` (a JSON Schema dict, a
        pydantic model class, or ``"json"`` for any JSON object),
        ``choices`` (one of these strings) or ``pattern`` (a regular
        expression). The answer is constrained to it as it is generated
        (thinking stays free), so it always parses; ``Result.parsed`` gives
        the value. Bad schemas raise ``InvalidOptionError`` here, before any
        token is generated.
        """
        return self._start(prompt, raw, reuse_cache, schema, choices, pattern, logits_processors, options)[1]

    def _start(self, prompt: PromptInput, raw: bool, reuse_cache: bool, schema: Any, choices: Any, pattern: Any,
               logits_processors: Sequence[Any], options: dict[str, Any]) -> tuple[Any, Iterator[Chunk]]:
        """The constraint (or None) and the chunk stream of one call: what ``stream`` and ``generate`` share."""
        opts = self._defaults.updated(**options)
        prompt_ = self._prompt(prompt, raw)
        constraint, grammar = self.constrain(schema, choices, pattern, thinking_open=prompt_.thinking_open)
        if constraint is not None:
            opts = opts.updated(stop_loops=False)  # a constrained answer may repeat itself legitimately
        return constraint, self.run(
            prompt_.ids, opts, logits_processors=[*logits_processors, *grammar], thinking_open=prompt_.thinking_open,
            prompt_cache=self.prompt_cache if reuse_cache else None,
        )  # fmt: skip

    def prepare(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = "auto",
        schema: Any = None,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        reuse_cache: bool = True,
        **options: Any,
    ) -> Request:
        """A checked, ready-to-run generation answering ``messages``; run it with :meth:`execute`.

        Stateless: the same as a :class:`Chat` holding ``messages`` and
        sending ``None`` (the last message must be a user or tool message),
        with the same arguments as :meth:`Chat.stream`: thinking mode and
        budget (None: the model's default; the family's published sampling
        for the mode applies unless an option sets it), tools, structured
        output, options. Everything is checked here (``InvalidOptionError``
        naming the culprit) before any token is generated. ``reuse_cache``:
        start from and keep KV caches in :attr:`prompt_cache`, so a client
        resending a growing conversation pays only for the new tokens.

        >>> request = model.prepare([{"role": "user", "content": "Hi"}], max_tokens=8)  # doctest: +SKIP
        >>> "".join(c.text for c in model.execute(request))                           # doctest: +SKIP
        """
        from ._chat import Chat

        chat = Chat(self, thinking=thinking, thinking_budget=thinking_budget, reuse_cache=reuse_cache)
        for m in check_messages(messages):
            chat.add(m)
        request, _, _ = chat._prepare(
            None, tools=tools, tool_choice=tool_choice, schema=schema, choices=choices, pattern=pattern,
            logits_processors=logits_processors, options=options,
        )  # fmt: skip
        return request

    def execute(self, request: Request) -> Iterator[Chunk]:
        """Run a request from :meth:`prepare` (or a chat), yielding its chunks; the last carries ``stats``."""
        return self.run(
            request.ids, request.opts, logits_processors=request.processors, thinking_open=request.thinking_open,
            prompt_cache=self.prompt_cache if request.reuse_cache else None, tools=request.toolset,
        )  # fmt: skip

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
        """Generate from prompt token ids (what ``stream`` and ``Chat`` share).

        ``prompt_cache``: take the KV cache with the longest common prefix
        from it, and give it back with the new tokens once the answer is
        complete (an abandoned stream gives nothing back). ``tools`` (a
        ``_tools.Toolset``): calls come on the ``tool_call`` channel and, parsed,
        on the last chunk's ``tool_calls`` (finish reason ``"tool_calls"``).
        """
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        from ._runner import run_sequence

        ids = list(ids)
        cache, cached = prompt_cache.take(ids) if prompt_cache is not None else (None, 0)
        if cache is None:
            cache, cached = make_prompt_cache(self.module), 0
        decoder = self.new_decoder(opts, thinking_open=thinking_open, tools=tools)
        mx.reset_peak_memory()
        if opts.seed is not None:
            mx.random.seed(opts.seed)
        chunks = run_sequence(
            self.module, ids[cached:], opts, decoder, logits_processors=logits_processors, prompt_cache=cache,
            cached_tokens=cached, peak_memory=mx.get_peak_memory,
        )  # fmt: skip
        if tools is not None:
            chunks = self._with_calls(chunks, decoder, tools)
        if self.runtime.backend == "metal":
            from mlx_lm.generate import wired_limit

            with wired_limit(self.module):
                yield from chunks
        else:
            yield from chunks
        if prompt_cache is not None:
            prompt_cache.put(ids + decoder.tokens, cache)

    def new_decoder(self, opts: GenerationOptions, *, thinking_open: bool = False, tools: Any = None) -> Decoder:
        """The :class:`~mlx_local._decoder.Decoder` of one generation (``run`` and the batch engine share it)."""
        from ._decoder import ChannelTag, Decoder

        tags = self.think_tags
        channels = [ChannelTag("thinking", (tags.start_id,), (tags.end_id,), leading=True)] if tags else []
        text_tags: list[Any] = []
        if tools is not None and tools.choice != "none":
            open_ids, close_ids = tools.tag_ids()
            if len(open_ids) == 1 and len(close_ids) == 1:  # tags that are tokens of their own
                channels.append(ChannelTag("tool_call", open_ids, close_ids))
            else:  # text the tokenizer may merge with what follows: matched in the decoded text
                text_tags.append(("tool_call", tools.open, tools.close))
        return Decoder(
            self.tokenizer.detokenizer,
            eos_ids=self.tokenizer.eos_token_ids,
            tags=channels,
            inside="thinking" if thinking_open else None,
            stop=opts.stop,
            loops=opts.stop_loops,
            text_tags=text_tags,
        )

    @staticmethod
    def _with_calls(chunks: Iterator[Chunk], decoder: Any, tools: Any) -> Iterator[Chunk]:
        for chunk in chunks:
            yield Model.with_calls(chunk, decoder, tools)

    @staticmethod
    def with_calls(chunk: Chunk, decoder: Any, tools: Any) -> Chunk:
        """``chunk``, and if it is the last one, with the tool calls ``decoder`` saw parsed onto it."""
        from dataclasses import replace

        if chunk.stats is not None:
            calls, _ = tools.parse(decoder.segments.get("tool_call", []))
            if calls:
                finish = "tool_calls" if chunk.finish_reason == "stop" else chunk.finish_reason
                chunk = replace(chunk, tool_calls=tuple(calls), finish_reason=finish)
        return chunk

    def generate(
        self,
        prompt: PromptInput,
        *,
        raw: bool = False,
        reuse_cache: bool = False,
        schema: Any = None,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        logits_processors: Sequence[Callable[[Any, Any], Any]] = (),
        **options: Any,
    ) -> Result:
        """Generate a whole answer. Same arguments as :meth:`stream`.

        >>> model.generate("Name a colour.", max_tokens=8, seed=1)  # doctest: +SKIP
        Result(text='Blue.', finish_reason='stop', stats=Stats(...))
        >>> model.generate("A city and its country.", schema=City).parsed  # doctest: +SKIP
        City(name='Paris', country='France')
        """
        constraint, chunks = self._start(prompt, raw, reuse_cache, schema, choices, pattern, logits_processors, options)
        c = collect(chunks)
        return Result(c.content, c.finish_reason, c.stats, c.token_ids, c.thinking, c.logprobs, constraint)

    def chat(
        self,
        system: str | None = None,
        *,
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        reuse_cache: bool = True,
        **default_options: Any,
    ) -> Chat:
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
        from ._fileio import copy_model_folder

        return copy_model_folder(self.path, dest, overwrite=overwrite)
