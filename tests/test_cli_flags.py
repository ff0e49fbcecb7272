"""The `mlx-local` command's flags, checks and error messages (issue 11).

Run in-process (``mlx_local._cli.main``) where the sockets must be refused
(the ``no_network`` fixture), as a subprocess otherwise.
"""

from __future__ import annotations

import pytest

import mlx_local
from mlx_local._cli import main
from test_cli import mlx_local_cmd


@pytest.fixture
def offline_env(monkeypatch, hf_cache, models_home):
    """An empty cache, and HF_HUB_OFFLINE restored after main() sets it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return hf_cache


@pytest.mark.parametrize("where", ["before", "after"])
def test_offline_before_or_after_the_command_never_touches_the_network(where, no_network, offline_env, capsys):
    command = ["generate", "-m", "qwen3-0.6b", "hi"]
    argv = ["--offline", *command] if where == "before" else [*command, "--offline"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "offline mode is on" in err and "not downloaded" in err
    assert no_network == []  # not a single lookup or connection


def test_debug_before_the_command_shows_the_traceback(no_network, offline_env):
    with pytest.raises(mlx_local.ModelNotFoundError, match="offline mode is on"):
        main(["--debug", "--offline", "generate", "-m", "qwen3-0.6b", "hi"])
    assert no_network == []


def test_quiet_before_the_command_silences_stderr(smollm2_gguf):
    for argv in (["-q", "generate"], ["generate", "-q"]):
        proc = mlx_local_cmd(*argv, "What is the capital of France?", "--max-tokens", "12")
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # no model line, no stats
        assert "Paris" in proc.stdout and proc.stdout.endswith("\n") and not proc.stdout.endswith("\n\n")
