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

import contextlib
import datetime as _dt
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ._version import __version__
from .errors import InvalidModelError, InvalidOptionError
from ._fileio import replace_dir, sha256_of
from ._quality import DEFAULT_TOKENS, DEFAULT_WINDOW, Quality, Reference, check_runs, text_digest

__all__ = [
    "AUTO_CANDIDATES",
    "BITS",
    "Candidate",
    "ConversionReport",
    "DEFAULT_MAX_KL",
    "GROUP_SIZES",
    "RECIPES",
    "convert",
]

#: Bit widths ``convert`` accepts (``None``: do not quantize, only change the dtype).
BITS = (2, 3, 4, 5, 6, 8)
#: Quantization group sizes: weights per scale and bias (smaller = finer, bigger file).
GROUP_SIZES = (32, 64, 128)
_DTYPES = ("float16", "bfloat16", "float32")

#: ``recipe`` values and what they do.
RECIPES = {
    "mixed_2_6": "mlx-lm: 2-bit; 6-bit v_proj and down_proj in the first and last eighth "
    "of the layers and every third one between, and 6-bit lm_head",
    "mixed_3_4": "mlx-lm: as mixed_2_6 with 3 and 4 bits",
    "mixed_3_6": "mlx-lm: as mixed_2_6 with 3 and 6 bits",
    "mixed_4_6": "mlx-lm: as mixed_2_6 with 4 and 6 bits",
    "embed_8bit": "embeddings and the output head at 8 bits, every other layer at `bits`",
    "auto": "the smallest of AUTO_CANDIDATES whose measured mean KL is at most max_kl",
}
_MIXED_BITS = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}

#: The target of ``recipe="auto"``: mean KL divergence from the reference, in
#: nats per token. Measured on SmolLM2-135M: 8-bit 0.002, 6-bit 0.02, 5-bit
#: 0.09 (81% top-1 agreement; answers much like the source's), 4-bit 0.3-0.4
#: (62-68%; answers often wrong, looping or incoherent). 0.1 keeps the first
#: group and rejects the second.
DEFAULT_MAX_KL = 0.1

#: What ``recipe="auto"`` tries, as (bits, group size, recipe); bits ``None``
#: is the unquantized model in ``dtype``, the last resort. They are tried in
#: order of their size for the model at hand (computed, not assumed), smallest
#: first: roughly 3.8, 4.5, 4.7, 5, 5.5, 6.5, 8.5 and 16 bits per weight
#: (float16 scales). Left out, from SmolLM2's numbers: plain 3-bit (no
#: better than mixed_3_6 for its size: KL 1.39-1.48 for both), 2-bit and
#: mixed_2_6 (KL 9-13: the model is destroyed), and embed_8bit (5-bit g64
#: was about as big and far closer).
AUTO_CANDIDATES: tuple[tuple[int | None, int, str | None], ...] = (
    (3, 64, "mixed_3_6"),
    (4, 64, None),
    (4, 64, "mixed_4_6"),
    (4, 32, None),
    (5, 64, None),
    (6, 64, None),
    (8, 64, None),
    (None, 64, None),
)

#: ``recipe="auto"`` stops reading the text for a candidate whose mean KL so
#: far is above this multiple of ``max_kl``: on SmolLM2 the mean KL of a
#: window stayed within +-20% of the whole text's, so a candidate that would
#: meet the target is not thrown out this way.
_EARLY_REJECT = 2.0

Progress = Callable[[str, float], None]


# ------------------------------------------------------------------ report


@dataclass(frozen=True)
class Candidate:
    """One way of converting a model, and what it gave.

    Attributes:
        label: e.g. ``"4-bit g64"``, ``"mixed_3_6 g64"``, ``"float16"``.
        bits: bits of most layers (``None``: not quantized).
        group_size: quantization group size.
        recipe: the recipe, or ``None`` for uniform quantization.
        bytes: size of the weights.
        bits_per_weight: weight bits (scales and biases included) per parameter.
        quality: measured quality, or ``None`` if not measured.
        status: ``"chosen"``, ``"rejected"`` (measured, above the target),
            ``"rejected early"`` (clearly above the target after part of the
            text) or ``"not tried"``.
    """

    label: str
    bits: int | None
    group_size: int
    recipe: str | None
    bytes: int
    bits_per_weight: float
    quality: Quality | None = None
    status: str = "not tried"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quality"] = self.quality.as_dict() if self.quality else None
        return d


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` made and what it cost in quality.

    ``str(report)`` is a readable table; :meth:`as_dict` and :meth:`to_json`
    give the same for programs.

    Attributes:
        source: the source as given (or the default model's name).
        source_kind: ``"gguf"``, ``"repo"`` or ``"folder"``.
        reference: what the quality was measured against.
        dest: the folder written.
        bits, group_size, recipe, dtype: how it was converted (for
            ``recipe="auto"``: the chosen candidate's).
        requested_recipe: the ``recipe`` argument (e.g. ``"auto"``).
        max_kl: the target of ``recipe="auto"``, else ``None``.
        source_bytes: the GGUF file's size, or the source folder's weights.
        output_bytes: the converted weights.
        parameters: number of parameters.
        bits_per_weight: of the output, scales and biases included.
        seconds: wall time of the whole conversion.
        quality: the output's quality, or ``None`` with ``quality=False``.
        candidates: every candidate considered (one unless ``recipe="auto"``).
    """

    source: str
    source_kind: str
    reference: str
    dest: str
    bits: int | None
    group_size: int | None
    recipe: str | None
    dtype: str
    requested_recipe: str | None
    max_kl: float | None
    source_bytes: int
    output_bytes: int
    parameters: int
    bits_per_weight: float
    seconds: float
    quality: Quality | None
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> Candidate:
        """The candidate that was written to ``dest``."""
        return next(c for c in self.candidates if c.status == "chosen")

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("quality", "candidates")}
        d["quality"] = self.quality.as_dict() if self.quality else None
        d["candidates"] = [c.as_dict() for c in self.candidates]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def __str__(self) -> str:
        how = "auto" if self.requested_recipe == "auto" else self.chosen.label
        lines = [f"Converted {self.source} -> {self.dest} ({how}, {self.dtype})"]
        if self.requested_recipe == "auto":
            lines.append(f"target: mean KL <= {self.max_kl:g} nats/token")
        lines.append(f"reference: {self.reference}")
        lines.append("")
        lines.append(f"{'':<26}{'size':>9}  {'bits/w':>6}  {'ppl':>8}  {'KL nats':>7}  {'top-1':>6}")
        ref_ppl = self.quality.reference_perplexity if self.quality else None
        ppl = _ppl(ref_ppl) if ref_ppl is not None else ""
        lines.append(f"{'source (' + self.source_kind + ')':<26}{_mb(self.source_bytes):>9}  {'':>6}  {ppl:>8}".rstrip())
        for c in self.candidates:
            q = c.quality
            cols = f"{c.label:<26}{_mb(c.bytes):>9}  {c.bits_per_weight:6.2f}"
            if q:  # (the perplexity of part of the text is not comparable with the source's: left out)
                ppl = "" if c.status == "rejected early" else _ppl(q.perplexity)
                cols += f"  {ppl:>8}  {q.mean_kl:7.4f}  {q.top1_agreement:6.1%}"
            else:
                cols += " " * 31
            note = c.status if len(self.candidates) > 1 else ""
            if q and c.status == "rejected early":
                note += f" (on the first {q.tokens} tokens)"
            lines.append((cols + "  " + note).rstrip())
        lines.append("")
        tokens = self.quality.tokens if self.quality else 0
        quality_note = f", quality on {tokens} tokens" if self.quality else ", quality not measured"
        lines.append(
            f"{self.parameters / 1e6:.1f}M parameters, {self.bits_per_weight:.2f} bits/weight, "
            f"{self.seconds:.1f} s{quality_note}"
        )
        return "\n".join(lines)


def _ppl(x: float) -> str:
    return f"{x:.2f}" if x < 1e4 else f"{x:.3g}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


# ------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Plan:
    bits: int | None
    group_size: int
    recipe: str | None
    dtype: str

    @property
    def label(self) -> str:
        if self.bits is None:
            return self.dtype
        if self.recipe in _MIXED_BITS:
            return f"{self.recipe} g{self.group_size}"
        if self.recipe == "embed_8bit":
            return f"{self.bits}-bit g{self.group_size} embed 8-bit"
        return f"{self.bits}-bit g{self.group_size}"


def _check_options(
    bits: Any, group_size: Any, recipe: Any, dtype: Any, quality: Any, max_kl: Any, quality_tokens: Any, progress: Any
) -> None:
    if recipe is not None and (not isinstance(recipe, str) or recipe not in RECIPES):
        raise InvalidOptionError(
            f"recipe={recipe!r} is not a known recipe; choose one of {', '.join(RECIPES)} "
            "(or None for uniform quantization).",
            option="recipe",
        )
    if bits is not None and (type(bits) is not int or bits not in BITS):
        raise InvalidOptionError(
            f"bits={bits!r}: choose one of {', '.join(map(str, BITS))}, or None to keep the weights unquantized.",
            option="bits",
        )
    if type(group_size) is not int or group_size not in GROUP_SIZES:
        raise InvalidOptionError(
            f"group_size={group_size!r}: choose one of {', '.join(map(str, GROUP_SIZES))}.", option="group_size"
        )
    if dtype is not None and dtype not in _DTYPES:
        raise InvalidOptionError(f"dtype={dtype!r}: choose one of {', '.join(_DTYPES)}.", option="dtype")
    if recipe == "auto":
        if bits != 4 or group_size != 64:
            raise InvalidOptionError(
                "recipe='auto' chooses the bits and group size itself; leave bits and group_size at their defaults.",
                option="recipe",
            )
        if not quality:
            raise InvalidOptionError(
                "recipe='auto' chooses by measured quality, so it cannot be combined with quality=False.",
                option="quality",
            )
        if max_kl is not None and (
            isinstance(max_kl, bool) or not isinstance(max_kl, (int, float)) or not 0 < max_kl < math.inf
        ):
            raise InvalidOptionError(
                f"max_kl={max_kl!r}: give a positive number of nats per token (default {DEFAULT_MAX_KL}).",
                option="max_kl",
            )
    elif max_kl is not None:
        raise InvalidOptionError("max_kl is the quality target of recipe='auto'; it has no effect otherwise.", option="max_kl")
    if recipe in _MIXED_BITS and bits != 4 and bits != _MIXED_BITS[recipe][0]:
        low, high = _MIXED_BITS[recipe]
        raise InvalidOptionError(
            f"recipe={recipe!r} sets the bits itself ({low} and {high}); leave bits at its default.", option="bits"
        )
    if recipe is not None and recipe != "auto" and bits is None:
        raise InvalidOptionError(f"recipe={recipe!r} quantizes, so bits cannot be None.", option="bits")
    if isinstance(quality_tokens, bool) or not isinstance(quality_tokens, int) or quality_tokens < 1:
        raise InvalidOptionError(
            f"quality_tokens={quality_tokens!r}: give a positive number of tokens.", option="quality_tokens"
        )
    if progress is not None and not callable(progress):
        raise InvalidOptionError("progress must be a function progress(stage, fraction).", option="progress")


def _plans(bits: int | None, group_size: int, recipe: str | None, dtype: str) -> list[_Plan]:
    if recipe == "auto":
        return [_Plan(b, g, r, dtype) for b, g, r in AUTO_CANDIDATES]
    if recipe in _MIXED_BITS:
        bits = _MIXED_BITS[recipe][0]
    return [_Plan(bits, group_size, recipe, dtype)]


# ---------------------------------------------------------------- mlx-lm


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow mlx-lm's "[INFO] ..." prints: the library prints nothing."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _load_lazy(folder: Path) -> tuple[Any, dict[str, Any]]:
    from mlx_lm.utils import load_model

    try:
        with _quiet():
            return load_model(folder, lazy=True)
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise InvalidModelError(
            f"{folder}: mlx-lm could not build the model from this folder ({e}). "
            "Download or convert it again.",
            path=str(folder),
        ) from e


def _cast(module: Any, dtype: str) -> None:
    """Cast floating parameters to ``dtype``, respecting the model's own exceptions (as mlx_lm.convert)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    target = getattr(mx, dtype)
    keep = getattr(module, "cast_predicate", lambda _: True)

    def cast(k: str, v: Any) -> Any:
        return v.astype(target) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v

    module.update(tree_map_with_path(cast, module.parameters()))


def _predicate(plan: _Plan, module: Any, source: str) -> Any:
    import mlx.nn as nn

    if plan.recipe in _MIXED_BITS:
        from mlx_lm.convert import mixed_quant_predicate_builder

        try:
            return mixed_quant_predicate_builder(plan.recipe, module, plan.group_size)
        except (ValueError, AttributeError) as e:
            raise InvalidOptionError(
                f"recipe={plan.recipe!r} does not fit {source}: mlx-lm's mixed recipes need "
                f"llama-style layers (model.layers[i].mlp.down_proj) ({e}). Use a uniform bits value "
                "or recipe='embed_8bit'.",
                option="recipe",
            ) from e
    if plan.recipe == "embed_8bit":
        high = {"group_size": plan.group_size, "bits": 8, "mode": "affine"}

        def keep_8bit(path: str, m: Any) -> Any:
            return high if isinstance(m, nn.Embedding) or path.rsplit(".", 1)[-1] == "lm_head" else True

        return keep_8bit
    return None


def _quantized(plan: _Plan, float_folder: Path, source: str) -> tuple[Any, dict[str, Any]]:
    """The source model, cast and (lazily) quantized as ``plan`` says; nothing is computed yet."""
    from mlx_lm.utils import quantize_model

    module, config = _load_lazy(float_folder)
    _cast(module, plan.dtype)
    if plan.bits is not None:
        with _quiet():
            module, config = quantize_model(
                module,
                config,
                plan.group_size,
                plan.bits,
                mode="affine",
                quant_predicate=_predicate(plan, module, source),
            )
    config["torch_dtype"] = plan.dtype  # what Model.load computes in on a GPU
    if "dtype" in config:
        config["dtype"] = plan.dtype
    return module, config


def _measure(module: Any) -> tuple[int, int, float]:
    """Bytes, parameters and bits per weight of a (possibly lazy) model."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters

    nbytes = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    params = int(get_total_parameters(module))
    return int(nbytes), params, nbytes * 8 / max(params, 1)


def _candidate(plan: _Plan, float_folder: Path, source: str) -> Candidate:
    module, _ = _quantized(plan, float_folder, source)
    nbytes, _, bpw = _measure(module)
    return Candidate(plan.label, plan.bits, plan.group_size, plan.recipe, nbytes, bpw)


# Files of a model folder that are not weights or config and go with the model
# as they are: tokenizer, chat template, generation config, model card,
# licence, custom model code. (Not copied: weights in any format, config.json,
# the weight index, our own mlx_local.json, and the quantization settings of
# other formats, which loaders would apply to the new weights.)
_SIDE_FILES = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.py", "*.md", "LICENSE*")
_NOT_SIDE_FILES = {
    "config.json",
    "model.safetensors.index.json",
    "mlx_local.json",
    "quantize_config.json",
    "hf_quant_config.json",
}


def _save(module: Any, config: dict[str, Any], source_folder: Path, out: Path) -> None:
    """Write an MLX model folder: mlx-lm writes weights and config; the rest is copied from the source.

    (mlx-lm's own ``save`` would load the tokenizer only to write it back,
    slow for 256k-token vocabularies, and replace the model card with an
    empty one.)
    """
    from mlx_lm.utils import save_config, save_model

    save_model(out, module, donate_model=True)
    save_config(config, config_path=out / "config.json", keep_vision_config="vision_tower" in getattr(module, "model", {}))
    for f in sorted(source_folder.iterdir()):
        if f.is_file() and f.name not in _NOT_SIDE_FILES and any(f.match(p) for p in _SIDE_FILES):
            shutil.copyfile(f, out / f.name)


def _build(plan: _Plan, float_folder: Path, out: Path, source: str) -> tuple[int, int, float]:
    """Write the converted model to ``out``; return its bytes, parameters and bits per weight."""
    module, config = _quantized(plan, float_folder, source)
    measured = _measure(module)
    _save(module, config, float_folder, out)
    return measured


def _dequantize(folder: Path, out: Path) -> None:
    """Write the float version of the quantized model in ``folder`` to ``out``."""
    from mlx_lm.utils import dequantize_model

    module, config = _load_lazy(folder)
    module = dequantize_model(module)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    _save(module, config, folder, out)


# ------------------------------------------------------------------ source


@dataclass
class _Source:
    given: str
    kind: str  # gguf | repo | folder
    folder: Path  # the model folder (a GGUF's float import)
    original: Path | None  # the GGUF file or the given folder


def _default_name(source: Any, bits: int | None, group_size: int, recipe: str | None) -> str:
    """``qwen3-0.6b-4bit-g64``, ``smollm2-135m-auto``, ... for a conversion into the models folder."""
    if source is None:
        stem = "smollm2-135m"
    else:
        stem = Path(str(source)).name
        stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    settings = recipe or (f"{bits}bit-g{group_size}" if bits else "float")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stem}-{settings}").lower()


def _resolve(source: Any, revision: str | None, offline: bool | None) -> _Source:
    from ._sources import local_folder, locate

    located = locate(source, offline=offline)
    folder = local_folder(located, revision=revision, offline=offline, gguf_weights="float")
    given = located.name if source is None else str(source)
    if located.kind in ("default", "gguf"):
        return _Source(given, "gguf", folder, None if source is None else located.path)
    if located.kind == "folder":
        return _Source(given, "folder", folder, folder)
    return _Source(located.repo or given, "repo", folder, None)


def _describe(src: _Source, revision: str | None) -> tuple[dict[str, Any], int]:
    """The provenance record of the source, and its size in bytes."""
    if src.kind == "gguf":
        record = _read_json(src.folder / "mlx_local.json").get("source", {})
        size = int(record.get("size") or (src.original.stat().st_size if src.original else 0))
        return {"type": "gguf", **record}, size
    if src.kind == "folder":
        files = sorted(src.folder.glob("model*.safetensors"))
        prov: dict[str, Any] = {"type": "folder", "path": str(src.folder), "files": {f.name: sha256_of(f) for f in files}}
        upstream = _read_json(src.folder / "mlx_local.json")
        if upstream:
            prov["upstream"] = upstream.get("source", upstream)
        return prov, _folder_bytes(src.folder)
    prov = {"type": "repo", "repo_id": src.given, "revision": revision}
    if src.folder.parent.name == "snapshots":
        prov["commit"] = src.folder.name
    return prov, _folder_bytes(src.folder)


def _folder_bytes(folder: Path) -> int:
    from ._loading import check_safetensors

    return sum(check_safetensors(f) for f in sorted(folder.glob("model*.safetensors")))


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_model(folder: Path) -> dict[str, Any]:
    from ._loading import check_weights, _model_classes, read_config

    config = read_config(folder)
    _model_classes(config, folder)
    check_weights(folder)
    return config


def _is_quantized(config: dict[str, Any]) -> bool:
    return bool(config.get("quantization") or config.get("quantization_config"))


# ---------------------------------------------------------------- writing


_PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(dest: Path) -> None:
    """Remove what killed conversions to ``dest`` left behind (their process is gone).

    A conversion killed in the instant between moving an existing ``dest``
    aside and renaming its result into place left the old ``dest`` in its
    folder as ``previous``: that is put back first.
    """
    for p in sorted(dest.parent.glob(f".{dest.name}.partial-*")) if dest.parent.is_dir() else []:
        m = _PARTIAL.match(p.name)
        if m and m["name"] == dest.name and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            if (p / "previous").is_dir() and not dest.exists():
                os.replace(p / "previous", dest)
            shutil.rmtree(p, ignore_errors=True)


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


def _check_apart(dest: Path, src: _Source) -> None:
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


def _swap_in(new: Path, dest: Path, work: Path, overwrite: bool) -> None:
    """Put ``new`` at ``dest``; an existing ``dest`` is moved aside first and deleted after."""
    if dest.exists() and not overwrite:  # it appeared while we worked (another conversion?)
        raise InvalidOptionError(f"{dest} appeared while converting; pass overwrite=True to replace it.", option="dest")
    replace_dir(new, dest, work / "previous")


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

    >>> report = mlx_local.convert("model.gguf", "model-4bit", bits=4, group_size=32)  # doctest: +SKIP
    >>> print(report)                                                                   # doctest: +SKIP
    """
    start = time.perf_counter()
    _check_options(bits, group_size, recipe, dtype, quality, max_kl, quality_tokens, progress)
    if recipe == "auto" and max_kl is None:
        max_kl = DEFAULT_MAX_KL

    def report_progress(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    if dest is None:
        from ._sources import models_dir

        dest = models_dir() / _default_name(source, bits, group_size, recipe)
    if not isinstance(dest, (str, os.PathLike)) or not str(dest).strip():
        raise InvalidOptionError("dest must be the path of the folder to write.", option="dest")
    dest = Path(dest).expanduser().absolute()
    dest = dest.parent.resolve() / dest.name
    _clean_stale(dest)
    _check_dest(dest, overwrite)

    report_progress("source", 0.0)
    src = _resolve(source, revision, offline)
    _check_apart(dest, src)
    config = _check_model(src.folder)
    provenance, source_bytes = _describe(src, revision)
    dtype = dtype or _source_dtype(config)

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-{os.getpid()}-"))
    reference: Reference | None = None
    try:
        float_folder = src.folder
        if _is_quantized(config):
            float_folder = work / "float"
            _dequantize(src.folder, float_folder)
            ref_note = f"the source dequantized by mlx-lm ({_quant_note(config)})"
        elif src.kind == "gguf":
            ref_note = "the GGUF dequantized to float32 (exact)"
        else:
            ref_note = f"the source as stored ({_source_dtype(config)}, not quantized)"
        report_progress("source", 1.0)

        plans = _plans(bits, group_size, recipe, dtype)
        candidates = [_candidate(p, float_folder, src.given) for p in plans]
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
            measured = _build(plan, float_folder, out, src.given)
            report_progress("convert", 1.0)
            if reference is None:
                report_progress("evaluate", 0.0)
                check_runs(out)
                report_progress("evaluate", 1.0)
                candidates[i] = replace(candidates[i], status="chosen")
                chosen = i
                break
            stop = max_kl * _EARLY_REJECT if max_kl is not None else None
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
        _swap_in(final, dest, work, overwrite)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The reference of the latest conversion, kept for the next one from the same
# source (trying several settings one after the other is the common case):
# {key: Reference}, at most one entry. Its file lives under
# $MLX_LOCAL_HOME/tmp and is deleted when replaced or at exit.
_references: dict[tuple[Any, ...], Reference] = {}


def _reference(src: _Source, float_folder: Path, tokens: int, progress: Progress) -> Reference:
    from . import _runtime as runtime
    from ._assets import home

    folder = src.folder
    key = (
        str(folder.resolve()),
        _fingerprint(folder),
        tokens,
        DEFAULT_WINDOW,
        text_digest(),
        runtime.current().compute_dtype(_source_dtype(_read_json(folder / "config.json"))),
    )
    cached = _references.get(key)
    if cached is not None and not cached.closed:
        progress("reference", 1.0)
        return cached
    for old in _references.values():
        old.close()
    _references.clear()
    scratch = home() / "tmp"
    _clean_stale_references(scratch)
    reference = Reference.compute(float_folder, tokens=tokens, window=DEFAULT_WINDOW, workdir=scratch, progress=progress)
    _references[key] = reference
    return reference


def _fingerprint(folder: Path) -> tuple[Any, ...]:
    """Names, sizes and modification times of a folder's files (what identifies its contents, cheaply)."""
    return tuple(
        (p.name, st.st_size, st.st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file() and (st := p.stat())
    )


def _clean_stale_references(scratch: Path) -> None:
    if not scratch.is_dir():
        return
    for p in scratch.glob("mlx_local-reference-*-*"):
        pid = p.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _source_dtype(config: dict[str, Any]) -> str:
    from ._loading import model_dtype

    return model_dtype(config)


def _compute_dtype(config: dict[str, Any]) -> str:
    from . import _runtime as runtime

    return runtime.current().compute_dtype(_source_dtype(config))


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
