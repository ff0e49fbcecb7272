"""What ``convert`` can make: bits, group sizes, recipes, the candidates of ``recipe="auto"``.

A :class:`Plan` is one way of converting a model (bits, group size, recipe,
dtype); :func:`plans` lists those a call asks for, :func:`check_options`
refuses a call that cannot work before anything is loaded, and
:func:`predicate` tells mlx-lm's ``quantize_model`` how each layer of a recipe
is quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOptionError

__all__ = [
    "AUTO_CANDIDATES",
    "BITS",
    "DEFAULT_MAX_KL",
    "DTYPES",
    "EARLY_REJECT",
    "GROUP_SIZES",
    "MIXED_BITS",
    "Plan",
    "RECIPES",
    "check_options",
    "plans",
    "predicate",
]

#: Bit widths ``convert`` accepts (``None``: do not quantize, only change the dtype).
BITS = (2, 3, 4, 5, 6, 8)
#: Quantization group sizes: weights per scale and bias (smaller = finer, bigger file).
GROUP_SIZES = (32, 64, 128)
DTYPES = ("float16", "bfloat16", "float32")

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
MIXED_BITS = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}

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
EARLY_REJECT = 2.0


@dataclass(frozen=True)
class Plan:
    bits: int | None
    group_size: int
    recipe: str | None
    dtype: str

    @property
    def label(self) -> str:
        if self.bits is None:
            return self.dtype
        if self.recipe in MIXED_BITS:
            return f"{self.recipe} g{self.group_size}"
        if self.recipe == "embed_8bit":
            return f"{self.bits}-bit g{self.group_size} embed 8-bit"
        return f"{self.bits}-bit g{self.group_size}"


def check_options(
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
    if dtype is not None and dtype not in DTYPES:
        raise InvalidOptionError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}.", option="dtype")
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
    if recipe in MIXED_BITS and bits != 4 and bits != MIXED_BITS[recipe][0]:
        low, high = MIXED_BITS[recipe]
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


def plans(bits: int | None, group_size: int, recipe: str | None, dtype: str) -> list[Plan]:
    if recipe == "auto":
        return [Plan(b, g, r, dtype) for b, g, r in AUTO_CANDIDATES]
    if recipe in MIXED_BITS:
        bits = MIXED_BITS[recipe][0]
    return [Plan(bits, group_size, recipe, dtype)]


def predicate(plan: Plan, module: Any, source: str) -> Any:
    import mlx.nn as nn

    if plan.recipe in MIXED_BITS:
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

