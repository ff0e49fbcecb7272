"""The `mlx-local` command's flags, checks and error messages (issue 11).

Run in-process (``mlx_local._cli.main``) where the sockets must be refused
(the ``no_network`` fixture), as a subprocess otherwise.
"""

from __future__ import annotations

import pytest
from test_cli import mlx_local_cmd

import mlx_local
import mlx_local.types
from mlx_local._cli import main

pytestmark = pytest.mark.slow  # real models, subprocesses or pseudo-terminals


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


# ---------------------------------------------------- advice in the command line's words


def _message(call) -> str:
    with pytest.raises(mlx_local.MLXLocalError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize(
    ("call", "python", "cli"),
    [
        (lambda: mlx_local.types.GenerationOptions().updated(max_tokens=0), "max_tokens=0", "--max-tokens 0: must be"),
        (lambda: mlx_local.types.GenerationOptions().updated(top_p=1.5), "top_p=1.5", "--top-p 1.5: must be"),
        (lambda: mlx_local.Model.load("qwen3-06b"), "`mlx_local.models()`", "`mlx-local models` lists"),
        (lambda: mlx_local.Model.load("qwen3-0.6b", offline=True), "mlx_local.pull(",
         "(--offline or HF_HUB_OFFLINE=1), so it was not downloaded. Download it once while online "
         "(`mlx-local pull mlx-community/Qwen3-0.6B-4bit`"),
        (lambda: mlx_local.convert("x", "y", recipe="auto", bits=3), "leave bits and group_size",
         "--recipe auto chooses the bits and group size itself; leave --bits and --group-size at their defaults"),
        (lambda: mlx_local.convert("x", "y", bits=7), "or None", "--bits 7: choose one of 2, 3, 4, 5, 6, 8, or 0 "),
        (lambda: mlx_local.convert("x", "y", max_kl=0.1), "recipe='auto'",
         "--max-kl is the quality target of --recipe auto"),
        (lambda: mlx_local.estimate_memory("qwen3-8b", context=0), "context=0", "--context 0: give a positive"),
    ],
)  # fmt: skip
def test_library_advice_is_said_with_the_commands_flags(call, python, cli, hf_cache, models_home):
    from mlx_local._cli_advice import for_the_command_line

    message = _message(call)
    assert python in message  # the library's own message stays Python-flavoured
    translated = for_the_command_line(message, "generate")
    assert cli in translated and python not in translated


def test_a_model_too_big_names_the_force_flag_and_a_command_that_fits(smollm2_gguf):
    proc = mlx_local_cmd("generate", "-m", "qwen3-8b", "hi", MLX_LOCAL_MEMORY_LIMIT="1GB")
    assert proc.returncode == 1
    assert "Pass --force to load it anyway" in proc.stderr and "(`mlx-local generate -m " in proc.stderr
    assert "force=True" not in proc.stderr and "Model.load" not in proc.stderr


# ------------------------------------------------------------ checked before loading


@pytest.mark.parametrize(
    ("argv", "stdin", "said"),
    [
        (["generate", ""], None, "The prompt is empty"),
        (["generate", "-"], " \n", "The prompt is empty"),
        (["generate", "hi", "--max-tokens", "0"], None, "--max-tokens 0: must be a whole number of at least 1"),
        (["generate", "hi", "--top-p", "2"], None, "--top-p 2.0: must be in (0, 1]"),
        (["chat", "--temperature", "-1"], "hello\n", "--temperature -1.0: must be 0 (greedy) or more"),
        (["chat", "--budget", "-5"], "hello\n", "--budget -5: give a number of thinking tokens"),
        (["bench", "--runs", "0"], None, "--runs 0: give a whole number, 1 or more"),
    ],
)  # fmt: skip
def test_bad_options_fail_before_the_model_loads(argv, stdin, said, smollm2_gguf):
    proc = mlx_local_cmd(*argv, stdin=stdin)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and said in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # no model line first: nothing was loaded
    assert "Model(" not in proc.stderr and "Chatting with" not in proc.stderr


def test_pull_with_the_hub_out_of_reach_does_not_advise_pull(tmp_path, smollm2_gguf):
    nothing_listens = "http://127.0.0.1:9"
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": nothing_listens, "HF_HUB_CACHE": str(tmp_path / "hub")}
    pulled = mlx_local_cmd("pull", "qwen3-0.6b", **env)
    assert pulled.returncode == 1 and "the hub could not be reached" in pulled.stderr
    assert "Try again once online (or with `hf download mlx-community/Qwen3-0.6B-4bit`)" in pulled.stderr
    assert "mlx_local.pull" not in pulled.stderr and "mlx-local pull" not in pulled.stderr
    loaded = mlx_local_cmd("generate", "-m", "qwen3-0.6b", "hi", **env)
    assert loaded.returncode == 1 and "(`mlx-local pull mlx-community/Qwen3-0.6B-4bit` or `hf download" in loaded.stderr
