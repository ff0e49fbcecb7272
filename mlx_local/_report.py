"""What ``convert`` reports: each candidate tried, and the conversion as a whole."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._quality import Quality

__all__ = ["Candidate", "ConversionReport"]



#: What became of a candidate of ``recipe="auto"``.
CandidateStatus = Literal["chosen", "rejected", "rejected early", "not tried"]


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
    status: CandidateStatus = "not tried"

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
            note: str = c.status if len(self.candidates) > 1 else ""
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

