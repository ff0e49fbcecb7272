"""Showing a streamed answer on a terminal.

- :class:`Spinner`: a sign of life on stderr while the model reads the prompt
  (the first token takes 1-2 s on a CPU), erased when the first chunk comes.
- :class:`WordWrap`: text streamed in pieces, wrapped at the terminal's width
  between words, never inside one (the terminal itself cuts words at the edge).

Neither does anything in a pipe: the spinner stays off, and the text is
written exactly as the model produced it.
"""

from __future__ import annotations

import threading
from typing import IO, Callable

from rich.cells import cell_len

__all__ = ["Spinner", "WordWrap"]


class Spinner:
    """A spinner and a label on ``stream``, from ``start()`` until ``stop()``.

    Args:
        stream: where to draw (a terminal's stderr).
        label: the text after the spinner, e.g. ``"thinking..."``.
        enabled: False draws nothing (a pipe, ``--quiet``).
    """

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    ASCII_FRAMES = "|/-\\"
    INTERVAL = 0.1

    def __init__(self, stream: IO[str], label: str, *, enabled: bool) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.FRAMES.encode(getattr(stream, "encoding", None) or "ascii")
            self.frames = self.FRAMES
        except (UnicodeEncodeError, LookupError):
            self.frames = self.ASCII_FRAMES

    def start(self) -> Spinner:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._spin, name="mlx-local-spinner", daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        i = 0
        while True:
            self.stream.write(f"\r{self.frames[i % len(self.frames)]} {self.label}")
            self.stream.flush()
            i += 1
            if self._stop.wait(self.INTERVAL):
                return

    def stop(self) -> None:
        """Erase the spinner (at once; calling again does nothing)."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.stream.write("\r\x1b[K")  # back to the line's start, erase it
        self.stream.flush()

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WordWrap:
    """Write streamed text, breaking lines between words at ``width`` columns.

    A word is held back until it ends (a space or newline comes, or
    :meth:`flush`), then goes on the current line if it fits, else on the
    next; the spaces at a break are dropped. A word wider than the line is
    written as it is. ``width=None`` writes everything through unchanged.

    Args:
        write: ``write(text, style)``; style is what :meth:`feed` was given.
        width: the terminal's width in columns, or None (a pipe).
    """

    def __init__(self, write: Callable[[str, str | None], None], width: int | None) -> None:
        self._write = write
        self.width = width
        self.column = 0
        self.at_line_start = True  # nothing written yet, or the last thing written was a newline
        self._word = ""
        self._spaces = ""
        self._style: str | None = None

    def feed(self, text: str, style: str | None = None) -> None:
        """More text, in ``style`` (a change of style ends the word being held)."""
        if self.width is None:
            self._emit(text, style)
            return
        if style != self._style:
            self._put_word()
            self._style = style
        for ch in text:
            if ch == "\n":
                self._put_word()
                self._spaces = ""
                self._emit("\n", self._style)
                self.column = 0
            elif ch in " \t":
                self._put_word()
                self._spaces += ch
            else:
                self._word += ch

    def flush(self) -> None:
        """Write the word being held (at the end of the stream)."""
        if self.width is not None:
            self._put_word()

    def end_line(self) -> None:
        """Finish the current line, if anything is on it."""
        self.flush()
        self._spaces = ""
        if not self.at_line_start:
            self._emit("\n", self._style)
        self.column = 0

    def _emit(self, text: str, style: str | None) -> None:
        if text:
            self._write(text, style)
            self.at_line_start = text.endswith("\n")

    def _put_word(self) -> None:
        if not self._word:
            return
        assert self.width is not None
        size = cell_len(self._word)
        if self.column and self.column + cell_len(self._spaces) + size > self.width:
            self._emit("\n", self._style)
            self.column = 0
        elif self._spaces:
            self._emit(self._spaces, self._style)
            self.column += cell_len(self._spaces)
        self._emit(self._word, self._style)
        self.column = (self.column + size) % self.width if size > self.width else self.column + size
        self._word = self._spaces = ""
