"""What a conversion lost: a converted model measured against its source.

Both models read the same built-in evaluation text (``data/eval_text.txt``:
about 3000 tokens of varied English written for this project: narrative,
dialogue, instructions, science, history, a letter, code with comments,
numbers). For every scored token the report has:

- **perplexity** of each model on the text (``exp`` of the mean negative
  log-likelihood of the real next token); lower is better, and the
  converted model's should be close to the reference's;
- **mean KL divergence** ``KL(reference || converted)`` of the next-token
  distributions, in nats per token: 0 means identical predictions. On
  SmolLM2-135M: 8-bit 0.002, 6-bit 0.02, 5-bit 0.09, 4-bit 0.3-0.4, 3-bit
  1.4-2 (its answers went wrong somewhere between 0.1 and 0.3);
- **top-1 agreement**: how often both models' most likely next token is the
  same.

The text is read in windows of ``window`` tokens (each starting with the
tokenizer's own start tokens, such as a BOS, if it adds any), spread evenly
over the text when fewer tokens than the whole text are asked for.

Memory: the two models never share memory. The reference runs first; its
log-probabilities over the whole vocabulary are written, as float16, to a
temporary memory-mapped file (tokens x vocabulary x 2 bytes: 100 MB for
SmolLM2 at 1024 tokens), and the reference is freed before the converted
model is loaded. Rounding the reference to float16 changed the mean KL by
less than 1e-5 nats on SmolLM2 (8-bit: 0.001604 instead of 0.001606), far
below any difference that matters. (Keeping only the top-k log-probs plus
the remaining mass was the alternative; it underestimated the KL by 6% with
k=256 and 13% with k=64, so the whole vocabulary is kept.)
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InvalidModelError, InvalidOptionError

__all__ = ["Quality", "Reference", "eval_text", "DEFAULT_TOKENS", "DEFAULT_WINDOW"]

#: Tokens scored by default: ~1000, enough to tell a good quantization from a
#: bad one (the mean KL of 1024 tokens is within ~10% of the whole text's),
#: and 6-15 s per model for SmolLM2-135M on a 2-core CPU (float fastest,
#: 5- and 6-bit slowest).
DEFAULT_TOKENS = 1024
#: Tokens per forward pass.
DEFAULT_WINDOW = 256

Progress = Callable[[str, float], None]


def eval_text() -> str:
    """The built-in evaluation text."""
    return resources.files("mlx_local").joinpath("data/eval_text.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Quality:
    """How close a converted model stays to its reference on the evaluation text.

    Attributes:
        tokens: how many next-token predictions were compared.
        reference_perplexity: the reference model's perplexity on the same tokens.
        perplexity: the converted model's perplexity on the text.
        mean_kl: mean KL(reference || converted) of the next-token
            distributions, in nats per token (0 = identical).
        top1_agreement: fraction of tokens where both models' most likely
            next token is the same (1.0 = always).
        seconds: time the converted model took to read the text.
    """

    tokens: int
    reference_perplexity: float
    perplexity: float
    mean_kl: float
    top1_agreement: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows(ids: list[int], prefix: list[int], tokens: int, window: int) -> list[list[int]]:
    """Model inputs: ``prefix`` + a slice of ``ids``, about ``tokens`` scored in all."""
    window = min(window, max(tokens + 1, len(prefix) + 16))
    body = window - len(prefix)
    if body < 8:
        raise InvalidOptionError(f"window={window} is too small; use at least 64 tokens.", option="window")
    available = max(1, (len(ids) - 1) // body)
    n = min(available, max(1, math.ceil(tokens / window)))
    last = max(0, len(ids) - body)
    starts = [round(i * last / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [prefix + ids[s : s + body] for s in starts]


def _forward_logprobs(module: Any, inputs: list[int]) -> Any:
    """Log-probabilities (float32, positions x vocabulary) of the next token after each input token."""
    import mlx.core as mx

    logits = module(mx.array(inputs)[None])[0].astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _load(folder: Path) -> Any:
    from ._model import Model

    return Model.load(folder)


def _release() -> None:
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


class Reference:
    """The reference model's predictions on the evaluation text, ready for comparisons.

    Build one with :meth:`Reference.compute`; then :meth:`compare` measures any
    number of converted models against it, one at a time, without the
    reference in memory. The float16 log-probabilities live in a temporary
    file, deleted by :meth:`close` (or when the object is garbage collected).
    """

    def __init__(
        self,
        windows: list[list[int]],
        logprobs: np.memmap,
        nll: np.ndarray,
        argmax: np.ndarray,
        folder: Path,
        tmpdir: Path,
    ) -> None:
        self.windows = windows
        self._logprobs = logprobs
        self._nll = nll
        self._argmax = argmax
        self.folder = folder
        self._tmpdir = tmpdir
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(tmpdir), True)

    @property
    def closed(self) -> bool:
        return self._logprobs is None

    @property
    def tokens(self) -> int:
        """How many next-token predictions are compared."""
        return int(self._nll.size)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self._nll.mean()))

    def close(self) -> None:
        """Delete the temporary file."""
        self._logprobs = None  # type: ignore[assignment]
        self._finalizer()

    @classmethod
    def compute(
        cls,
        folder: str | os.PathLike[str],
        *,
        tokens: int = DEFAULT_TOKENS,
        window: int = DEFAULT_WINDOW,
        text: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> Reference:
        """Run the (unquantized) model in ``folder`` over the evaluation text.

        The model is loaded with :meth:`mlx_local.Model.load` (so with the
        runtime's compute dtype) and freed before this returns.

        Args:
            folder: a model folder.
            tokens: about how many tokens to score (at most the whole text).
            window: tokens per forward pass.
            text: evaluate on this text instead of the built-in one.
            workdir: where to put the temporary file (default: the system's
                temporary folder).
            progress: called with ``("reference", fraction)``.
        """
        import mlx.core as mx

        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise InvalidOptionError(f"quality_tokens={tokens!r}: give a positive number of tokens.", option="quality_tokens")
        folder = Path(folder)
        if progress:
            progress("reference", 0.0)
        model = _load(folder)
        tok = model.tokenizer
        ids = list(tok.encode(text if text is not None else eval_text(), add_special_tokens=False))
        prefix = list(tok.encode("", add_special_tokens=True))
        windows = _windows(ids, prefix, tokens, window)
        scored = sum(len(w) - 1 for w in windows)
        vocab = int(_forward_logprobs(model.module, windows[0][:2]).shape[-1])

        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f"mlx_local-reference-{os.getpid()}-", dir=workdir))
        try:
            logprobs = np.lib.format.open_memmap(
                tmpdir / "logprobs.npy", mode="w+", dtype=np.float16, shape=(scored, vocab)
            )
            nll = np.empty(scored, np.float32)
            argmax = np.empty(scored, np.int32)
            row = 0
            for i, inputs in enumerate(windows):
                if progress and i:
                    progress("reference", i / len(windows))
                lp = _forward_logprobs(model.module, inputs[:-1])
                targets = mx.array(inputs[1:])
                n = len(inputs) - 1
                nll_w = -mx.take_along_axis(lp, targets[:, None], axis=-1)[:, 0]
                am = mx.argmax(lp, axis=-1)
                lp16 = lp.astype(mx.float16)
                mx.eval(nll_w, am, lp16)
                logprobs[row : row + n] = np.array(lp16)
                nll[row : row + n] = np.array(nll_w)
                argmax[row : row + n] = np.array(am)
                row += n
                del lp, lp16
            logprobs.flush()
            if not np.isfinite(nll).all():
                raise InvalidModelError(
                    f"{folder}: the model produced NaN or infinite log-probabilities on the evaluation text, "
                    "so it cannot serve as the reference. Is the model broken?",
                    path=str(folder),
                )
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            del model
            _release()
        if progress:
            progress("reference", 1.0)
        return cls(windows, logprobs, nll, argmax, folder, tmpdir)

    def compare(
        self, folder: str | os.PathLike[str], *, progress: Progress | None = None, stop_above: float | None = None
    ) -> Quality:
        """Measure the model in ``folder`` (e.g. a converted model) against this reference.

        The model is loaded with :meth:`mlx_local.Model.load` and freed before
        this returns. It must share the reference's tokenizer vocabulary.
        With ``stop_above``, reading stops after the first window whose
        running mean KL exceeds it (``Quality.tokens`` then says how many
        tokens were read).

        Raises:
            InvalidModelError: the model's vocabulary differs, or it produces
                NaN/infinite outputs.
        """
        import mlx.core as mx

        if self._logprobs is None:
            raise InvalidOptionError("This Reference was closed; compute it again.", option="reference")
        folder = Path(folder)
        start = time.perf_counter()
        model = _load(folder)
        try:
            kl_sum = 0.0
            nll_sum = 0.0
            agree = 0
            row = 0
            for i, inputs in enumerate(self.windows):
                if progress:
                    progress("evaluate", i / len(self.windows))
                lq = _forward_logprobs(model.module, inputs[:-1])
                n = len(inputs) - 1
                if lq.shape[-1] != self._logprobs.shape[1]:
                    raise InvalidModelError(
                        f"{folder}: its vocabulary has {lq.shape[-1]} tokens, the reference's "
                        f"{self._logprobs.shape[1]}; they are not the same model.",
                        path=str(folder),
                    )
                # (Not renormalised after the float16 rounding: measured, that
                # would bias the mean KL by ~1e-4, while as stored it is within ~1e-5.)
                lp = mx.array(self._logprobs[row : row + n]).astype(mx.float32)
                kl = mx.sum(mx.exp(lp) * (lp - lq), axis=-1)
                targets = mx.array(inputs[1:])
                nll = -mx.take_along_axis(lq, targets[:, None], axis=-1)[:, 0]
                same = mx.argmax(lq, axis=-1) == mx.array(self._argmax[row : row + n])
                kl_w, nll_w, same_w = (float(x) for x in (kl.sum(), nll.sum(), same.sum()))
                if not (math.isfinite(kl_w) and math.isfinite(nll_w)):
                    raise InvalidModelError(
                        f"{folder}: the model produces NaN or infinite outputs on the evaluation text; "
                        "it is broken (with float16 weights, values may have overflowed: try dtype='bfloat16').",
                        path=str(folder),
                    )
                kl_sum += kl_w
                nll_sum += nll_w
                agree += int(same_w)
                row += n
                del lq, lp, kl
                if stop_above is not None and kl_sum / row > stop_above and i + 1 < len(self.windows):
                    break
        finally:
            del model
            _release()
        if progress:
            progress("evaluate", 1.0)
        return Quality(
            tokens=row,
            reference_perplexity=float(np.exp(self._nll[:row].mean())),
            perplexity=float(math.exp(nll_sum / row)),
            mean_kl=max(0.0, kl_sum / row),
            top1_agreement=agree / row,
            seconds=time.perf_counter() - start,
        )


def check_runs(folder: Path) -> None:
    """Load the model in ``folder`` and run one short forward pass; raise if it fails or gives NaN."""
    import mlx.core as mx

    model = _load(folder)
    try:
        ids = model.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
        lp = _forward_logprobs(model.module, list(ids))
        ok = bool(mx.all(mx.isfinite(lp)).item())
    finally:
        del model
        _release()
    if not ok:
        raise InvalidModelError(
            f"{folder}: the converted model produces NaN or infinite outputs; it is broken "
            "(with float16 weights, values may have overflowed: try dtype='bfloat16').",
            path=str(folder),
        )


def text_digest(text: str | None = None) -> str:
    """Short SHA-256 of the evaluation text (recorded in provenance)."""
    return hashlib.sha256((text if text is not None else eval_text()).encode()).hexdigest()[:16]
