"""Convert and quantize a model for on-device use, and measure what was lost.

:func:`convert` turns a source (repo id, HF or MLX folder, GGUF file) into an
ordinary MLX model folder, quantized with mlx-lm (``quantize_model`` and its
mixed recipes; nothing is reimplemented here), and compares it with the
unquantized source on the built-in evaluation text (:mod:`mlx_local._quality`).

The unquantized source ("the reference") is the model in float: a GGUF file
is imported with every weight dequantized to float32 (exact), a quantized MLX
folder is dequantized with mlx-lm, anything else is used as it is. Note that
a quantized source (a Q4_1 GGUF, a 4-bit MLX folder) was already rounded
once: the report measures the loss of this conversion on top of that.

Writing is safe: everything happens in a temporary folder beside ``dest``
(``.<name>.partial-<pid>-*``), and the result is renamed into place only after
it loaded and ran; an error, Ctrl-C or a killed process leaves no ``dest``
(and an existing ``dest`` as it was).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ._conversion_source import (
    Source,
    check_model,
    clean_stale_scratch,
    default_name,
    describe,
    fingerprint,
    is_quantized,
    read_json,
    resolve,
    source_dtype,
)
from ._fileio import DestinationExists, Stage, clear_stale, staged_folder, storage_errors
from ._quality import DEFAULT_TOKENS, DEFAULT_WINDOW, Reference, check_runs, text_digest
from ._quantize import build, candidate, dequantize
from ._recipes import DEFAULT_MAX_KL, EARLY_REJECT, check_options
from ._recipes import plans as make_plans
from ._report import Candidate, ConversionReport
from ._version import __version__
from .errors import InvalidOptionError

# (Candidate and ConversionReport are re-exported: the package imports them from here.)
__all__ = ["Candidate", "ConversionReport", "convert"]

Progress = Callable[[str, float], None]


# ---------------------------------------------------------------- writing


def _check_dest(dest: Path, overwrite: bool) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if not overwrite:
        raise InvalidOptionError(f"{dest} already exists; pass overwrite=True to replace it.", option="dest")
    if dest.is_symlink() or not dest.is_dir():
        raise InvalidOptionError(
            f"{dest} exists and is a file or a link, not a folder; it will not be replaced. "
            "Remove it or choose another dest.",
            option="dest",
        )
    if not (dest / "config.json").is_file() and any(dest.iterdir()):
        raise InvalidOptionError(
            f"{dest} exists and is not a model folder (no config.json); overwrite=True replaces only "
            "model folders. Remove it yourself or choose another dest.",
            option="dest",
        )


def _check_apart(dest: Path, src: Source) -> None:
    for s in {src.folder.resolve(), *([src.original] if src.original else [])}:
        if dest == s or s in dest.parents:
            raise InvalidOptionError(
                f"dest {dest} is inside the source {s}; choose a dest outside the source.", option="dest"
            )
        if dest in s.parents:
            raise InvalidOptionError(
                f"The source {s} is inside dest {dest}; replacing dest would delete the source. "
                "Choose another dest.",
                option="dest",
            )


def _swap_in(stage: Stage, new: Path) -> None:
    """Put ``new`` at ``dest``; an existing ``dest`` (overwrite=True) is kept aside until then."""
    try:
        stage.commit(new)
    except DestinationExists:  # it appeared while we worked (another conversion?)
        raise InvalidOptionError(
            f"{stage.dest} appeared while converting; pass overwrite=True to replace it.", option="dest"
        ) from None


# ----------------------------------------------------------------- convert


def convert(
    source: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str] | None = None,
    *,
    bits: int | None = 4,
    group_size: int = 64,
    recipe: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    quality: bool = True,
    max_kl: float | None = None,
    quality_tokens: int = DEFAULT_TOKENS,
    revision: str | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
) -> ConversionReport:
    """Convert (and quantize) a model into an MLX model folder, and report what was lost.

    Args:
        source: a Hugging Face repo id, a local HF or MLX model folder, a
            ``.gguf`` file, or ``None`` for the default model (as
            :meth:`Model.load`).
        dest: the folder to write. It must not exist, unless ``overwrite``.
            None: a folder named after the source and the settings in the
            models folder (``$MLX_LOCAL_MODELS``), from which
            ``Model.load(name)`` loads it by that name.
        bits: 2, 3, 4, 5, 6 or 8; ``None`` keeps the weights unquantized
            (only ``dtype`` changes).
        group_size: 32, 64 or 128 weights per scale (smaller: more accurate,
            a little bigger: +0.5 bits per weight from 64 to 32).
        recipe: ``None`` (every layer at ``bits``), mlx-lm's mixed recipes
            (``"mixed_2_6"``, ``"mixed_3_4"``, ``"mixed_3_6"``,
            ``"mixed_4_6"``: they set the bits themselves),
            ``"embed_8bit"`` (embeddings and output head at 8 bits, the rest
            at ``bits``), or ``"auto"``: try :data:`AUTO_CANDIDATES` from the
            smallest up and keep the smallest whose mean KL is at most
            ``max_kl``. See :data:`RECIPES`.
        dtype: dtype of what is not quantized (norms, scales and biases, or
            every weight with ``bits=None``): ``"float16"``, ``"bfloat16"``,
            ``"float32"``. Default: the source's own.
        overwrite: replace an existing ``dest`` (a model folder), once the
            new one is complete.
        quality: measure the result against the unquantized source on the
            built-in text (see :mod:`mlx_local._quality`).
        max_kl: ``recipe="auto"`` only: the largest acceptable mean KL
            divergence from the source, in nats per token (default
            :data:`DEFAULT_MAX_KL`, 0.1).
        quality_tokens: about how many tokens of the text to score.
        revision, offline: for a repo id, as in :meth:`Model.load`.
        progress: called as ``progress(stage, fraction)`` with stage
            ``"source"``, ``"reference"``, ``"convert"``, ``"evaluate"``,
            ``"finish"`` and the fraction of that stage done (``"convert"``
            and ``"evaluate"`` repeat for each ``auto`` candidate; the last
            call, ``("finish", 1.0)``, comes just before the result is
            renamed into place). Whatever it raises (``KeyboardInterrupt``
            too) stops the conversion cleanly.

    Returns:
        A :class:`ConversionReport` (``print(report)`` for a table).

    Raises:
        InvalidOptionError: a bad option, ``dest`` exists (without
            ``overwrite``), or ``dest`` and ``source`` overlap.
        ModelNotFoundError, InvalidModelError, UnsupportedArchitectureError:
            the source is missing, is not a model, or is not supported.
        StorageError: a file or folder could not be written (disk full,
            permissions); nothing is left at ``dest``.

    >>> report = mlx_local.convert("model.gguf", "model-4bit", bits=4, group_size=32)  # doctest: +SKIP
    >>> print(report)                                                                   # doctest: +SKIP
    """
    start = time.perf_counter()
    check_options(bits, group_size, recipe, dtype, quality, max_kl, quality_tokens, progress)
    if recipe == "auto" and max_kl is None:
        max_kl = DEFAULT_MAX_KL

    def report_progress(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    if dest is None:
        from ._sources import models_dir

        dest = models_dir() / default_name(source, bits, group_size, recipe)
    if not isinstance(dest, (str, os.PathLike)) or not str(dest).strip():
        raise InvalidOptionError("dest must be the path of the folder to write.", option="dest")
    dest = Path(dest).expanduser().absolute()
    dest = dest.parent.resolve() / dest.name
    with storage_errors(dest, "write the converted model"):
        clear_stale(dest)  # (first: a dest moved aside by a killed conversion is put back)
        _check_dest(dest, overwrite)

        report_progress("source", 0.0)
        src = resolve(source, revision, offline)
        _check_apart(dest, src)
        config = check_model(src.folder)
        provenance, source_bytes = describe(src, revision)
        dtype = dtype or source_dtype(config)

        reference: Reference | None = None
        with staged_folder(dest, overwrite=overwrite, commit=False) as stage:
            work = stage.work
            float_folder = src.folder
            if is_quantized(config):
                float_folder = work / "float"
                dequantize(src.folder, float_folder)
                ref_note = f"the source dequantized by mlx-lm ({_quant_note(config)})"
            elif src.kind == "gguf":
                ref_note = "the GGUF dequantized to float32 (exact)"
            else:
                ref_note = f"the source as stored ({source_dtype(config)}, not quantized)"
            report_progress("source", 1.0)

            plans = make_plans(bits, group_size, recipe, dtype)
            candidates = [candidate(p, float_folder, src.given) for p in plans]
            order = sorted(range(len(plans)), key=lambda i: candidates[i].bytes)
            plans = [plans[i] for i in order]
            candidates = [candidates[i] for i in order]

            if quality:
                reference = _reference(src, float_folder, quality_tokens, report_progress)
                ref_note += f"; computed in {_compute_dtype(config)}"

            chosen: int | None = None
            measured: tuple[int, int, float] | None = None
            for i, plan in enumerate(plans):
                out = work / f"candidate-{i}"
                report_progress("convert", 0.0)
                measured = build(plan, float_folder, out, src.given)
                report_progress("convert", 1.0)
                if reference is None:
                    report_progress("evaluate", 0.0)
                    check_runs(out)
                    report_progress("evaluate", 1.0)
                    candidates[i] = replace(candidates[i], status="chosen")
                    chosen = i
                    break
                stop = max_kl * EARLY_REJECT if max_kl is not None else None
                q = reference.compare(out, progress=report_progress, stop_above=stop)
                if max_kl is None or q.mean_kl <= max_kl and q.tokens == reference.tokens:
                    candidates[i] = replace(candidates[i], quality=q, status="chosen")
                    chosen = i
                    break
                early = q.tokens < reference.tokens
                candidates[i] = replace(candidates[i], quality=q, status="rejected early" if early else "rejected")
                shutil.rmtree(out, ignore_errors=True)
            if chosen is None:
                kl, label = min((c.quality.mean_kl, c.label) for c in candidates if c.quality is not None)
                raise InvalidOptionError(
                    f"No candidate met max_kl={max_kl:g}: the closest, {label}, had a mean KL of "
                    f"{kl:.4g} nats/token. Raise max_kl; nothing was written.",
                    option="max_kl",
                )
            assert measured is not None
            output_bytes, parameters, bpw = measured
            plan = plans[chosen]
            final = work / f"candidate-{chosen}"
            report = ConversionReport(
                source=src.given,
                source_kind=src.kind,
                reference=ref_note if quality else "not measured",
                dest=str(dest),
                bits=plan.bits,
                group_size=plan.group_size if plan.bits is not None else None,
                recipe=plan.recipe,
                dtype=dtype,
                requested_recipe=recipe,
                max_kl=max_kl,
                source_bytes=source_bytes,
                output_bytes=output_bytes,
                parameters=parameters,
                bits_per_weight=bpw,
                seconds=0.0,
                quality=candidates[chosen].quality,
                candidates=tuple(candidates),
            )
            report_progress("finish", 0.0)
            report = replace(report, seconds=time.perf_counter() - start)
            _write_provenance(final, provenance, report)
            report_progress("finish", 1.0)
            _swap_in(stage, final)
        return report


# The reference of the latest conversion, kept for the next one from the same
# source (trying several settings one after the other is the common case):
# {key: Reference}, at most one entry. Its file lives under
# $MLX_LOCAL_HOME/tmp and is deleted when replaced or at exit.
_references: dict[tuple[Any, ...], Reference] = {}


def _reference(src: Source, float_folder: Path, tokens: int, progress: Progress) -> Reference:
    from . import _runtime as runtime
    from ._assets import home

    folder = src.folder
    key = (
        str(folder.resolve()),
        fingerprint(folder),
        tokens,
        DEFAULT_WINDOW,
        text_digest(),
        runtime.current().compute_dtype(source_dtype(read_json(folder / "config.json"))),
    )
    cached = _references.get(key)
    if cached is not None and not cached.closed:
        progress("reference", 1.0)
        return cached
    for old in _references.values():
        old.close()
    _references.clear()
    scratch = home() / "tmp"
    clean_stale_scratch(scratch)
    reference = Reference.compute(float_folder, tokens=tokens, window=DEFAULT_WINDOW, workdir=scratch, progress=progress)
    _references[key] = reference
    return reference


def _compute_dtype(config: dict[str, Any]) -> str:
    from . import _runtime as runtime

    return runtime.current().compute_dtype(source_dtype(config))


def _quant_note(config: dict[str, Any]) -> str:
    q = config.get("quantization") or config.get("quantization_config") or {}
    if isinstance(q, dict) and "bits" in q:
        return f"it was {q['bits']}-bit, group {q.get('group_size')}"
    return "it was quantized"


def _write_provenance(folder: Path, source: dict[str, Any], report: ConversionReport) -> None:
    import mlx_lm

    record = {
        "created_by": f"mlx_local {__version__}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "conversion": {
            "bits": report.bits,
            "group_size": report.group_size,
            "recipe": report.recipe,
            "requested_recipe": report.requested_recipe,
            "dtype": report.dtype,
            "max_kl": report.max_kl,
            "quantizer": f"mlx-lm {mlx_lm.__version__}",
        },
        "quality": None
        if report.quality is None
        else {"reference": report.reference, "eval_text_sha256": text_digest(), **report.quality.as_dict()},
        "candidates": [c.as_dict() for c in report.candidates] if len(report.candidates) > 1 else None,
    }
    (folder / "mlx_local.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
