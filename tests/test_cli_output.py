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
