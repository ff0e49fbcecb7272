"""The catalog: open models people run on-device, by short name.

The facts live in a data file shipped with the package
(``mlx_local/data/catalog.json``), not in code: name, lab, size, context
length, thinking support, licence and its conditions, whether the repo is
gated, the original Hugging Face repo and the ready MLX 4-bit one, and the few
architecture numbers the memory estimate needs before anything is downloaded.

>>> from mlx_local import _catalog as catalog
>>> catalog.lookup("qwen3-0.6b").repo_for()          # doctest: +SKIP
'mlx-community/Qwen3-0.6B-4bit'
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import ModelNotFoundError

__all__ = ["CatalogEntry", "License", "Licence", "entries", "find", "lookup", "closest_names"]

#: What the ``thinking`` field can say.
THINKING = ("none", "switchable", "always")


@dataclass(frozen=True)
class License:
    """A model's license, in brief.

    Attributes:
        id: the license id as the model card gives it (``"apache-2.0"``, ``"llama3.2"``, ...).
        name: its full name.
        commercial: ``"yes"`` or ``"with conditions"``.
        conditions: the conditions, in one line.
        url: where to read it (and, for gated models, accept it).
    """

    id: str
    name: str
    commercial: str
    conditions: str
    url: str


#: The former name of :class:`License`, kept for code that uses it.
Licence = License


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog.

    Attributes:
        name: short name, e.g. ``"qwen3-0.6b"``.
        display_name: the name its lab uses, e.g. ``"Qwen3-0.6B"``.
        lab: who made it.
        family: model family (``"qwen3"``, ``"llama3.2"``, ...).
        parameters: total parameter count.
        context_length: native context length in tokens.
        thinking: ``"none"``, ``"switchable"`` (per turn, as Qwen3) or ``"always"``.
        license: see :class:`License` (``licence`` is an alias).
        gated: whether the hub asks you to accept the licence before downloading.
        repo: the original Hugging Face repo.
        mlx_4bit_repo: a ready MLX 4-bit repo, or None.
        size_4bit: approximate bytes of the weights at 4 bits.
        architecture: config.json numbers (layers, heads, KV heads, head dim,
            sliding window, ...) for estimating memory without the config.
    """

    name: str
    display_name: str
    lab: str
    family: str
    parameters: int
    context_length: int
    thinking: str
    license: License
    gated: bool
    repo: str
    mlx_4bit_repo: str | None
    size_4bit: int
    architecture: dict[str, Any]

    @property
    def licence(self) -> License:
        """Alias of :attr:`license` (the British spelling this API used first)."""
        return self.license

    @property
    def thinks(self) -> bool:
        """Whether the model can think before answering."""
        return self.thinking != "none"

    def repo_for(self, quantized: bool = True) -> str:
        """The repo to download: the MLX 4-bit one if ``quantized`` and there is one."""
        return self.mlx_4bit_repo if quantized and self.mlx_4bit_repo else self.repo

    @property
    def repos(self) -> tuple[str, ...]:
        return tuple(r for r in (self.mlx_4bit_repo, self.repo) if r)


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    fields = dict(raw)
    fields["license"] = License(**fields.pop("license", None) or fields.pop("licence"))
    if fields["thinking"] not in THINKING:
        raise ValueError(f"catalog entry {raw.get('name')!r}: thinking={fields['thinking']!r}")
    return CatalogEntry(**fields)


@lru_cache(maxsize=1)
def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog entry, in the file's order (by family, then size)."""
    text = resources.files("mlx_local").joinpath("data/catalog.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("format") != "mlx_local.catalog" or data.get("version") != 1:
        raise ValueError("mlx_local/data/catalog.json: unknown format; reinstall mlx_local")
    return tuple(_entry(m) for m in data["models"])


def find(name_or_repo: str) -> CatalogEntry | None:
    """The entry with this short name or repo id (case-insensitive), or None."""
    key = name_or_repo.strip().lower()
    for e in entries():
        if key == e.name or key in (r.lower() for r in e.repos):
            return e
    return None


def closest_names(name: str, n: int = 5) -> list[str]:
    """Catalog names that look like ``name``: close spellings first, then shared prefixes."""
    names = [e.name for e in entries()]
    key = name.strip().lower()
    close = difflib.get_close_matches(key, names, n=n, cutoff=0.5)
    stem = key.split("-")[0]
    for candidate in names:
        if len(close) >= n:
            break
        if candidate not in close and stem and candidate.startswith(stem):
            close.append(candidate)
    return close


def lookup(name: str) -> CatalogEntry:
    """The entry called ``name``.

    Raises:
        ModelNotFoundError: no such entry; the message lists the closest names.
    """
    entry = find(name)
    if entry is None:
        close = closest_names(name)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"{name!r} is not in the catalog.{hint} `mlx_local.models()` lists every name; "
            "a Hugging Face repo id (owner/name), a local folder or a .gguf file work too.",
            source=name,
        )
    return entry
