"""One model over several processes: real ``mlx.launch`` runs, ring backend over loopback.

Each launch starts the ranks with a timeout in a process group of its own,
killed at the end whatever happens. The launches cost tens of seconds on a
loaded 2-core machine, so they are marked slow; the checks without processes
are not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import mlx_local
from mlx_local import _distributed as dist
from mlx_local import _sources as sources
from mlx_local._distributed_memory import estimate_rank
from mlx_local.errors import InvalidOptionError

from tiny_models import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"
MINISTRAL3 = dict(model_type="ministral3", architectures=["Mistral3ForCausalLM"], num_hidden_layers=3,
                  rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "llama_4_scaling_beta": 0.1,
                                   "original_max_position_embeddings": 4096})  # fmt: skip


def _ports(n: int = 3) -> int:
    """A first port with the next ``n - 1`` free too (the ring listens on port + rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        try:
            for p in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _env(**extra: str) -> dict[str, str]:
    path = [str(REPO), str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]  # conftest's no-torch folder too
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str]) -> tuple[int, str, float]:
    """Run ``cmd`` in its own process group; (exit status, output, seconds). Everything it started is killed after."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the launch did not end within {timeout} s:\n{out[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the ranks, should any outlive the launcher
        except ProcessLookupError:
            pass
    return proc.returncode, out, time.monotonic() - start


def launch(tmp_path: Path, script: str, *args: str, n: int = 2, timeout: float = 240,
           **env: str) -> tuple[int, str, float]:
    """``mlx.launch -n N --backend ring -- python script.py ARGS`` on loopback."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    cmd = [sys.executable, "-c", LAUNCH, "-n", str(n), "--backend", "ring", "--starting-port", str(_ports(n)),
           "--", sys.executable, str(path), *args]  # fmt: skip
    return _run(cmd, tmp_path, timeout, _env(**env))


def results(out: str, section: str | None = None) -> dict[int, Any]:
    """The ``RESULT rank json`` lines the scripts print (``RESULT section rank json`` for a section), by rank."""
    found = {}
    prefix = "RESULT " if section is None else f"RESULT {section} "
    for line in out.splitlines():
        if line.startswith(prefix):
            rank, data = line[len(prefix) :].split(" ", 1)
            if rank.lstrip("-").isdigit():
                found[int(rank)] = json.loads(data)
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist-models")
    paths = {
        "qwen3": write_tiny_model(root / "qwen3", "qwen3"),
        "qwen3_other": write_tiny_model(root / "qwen3-other", "qwen3", seed=1),
        "qwen3_odd": write_tiny_model(root / "qwen3-odd", "qwen3", num_attention_heads=3, num_key_value_heads=1),
        "gemma3": write_tiny_model(root / "gemma3", "gemma3"),
        "ministral3": write_tiny_model(root / "ministral3", "llama", **MINISTRAL3),
    }
    return paths


@pytest.fixture(scope="module")
def tiny_4bit(tiny: dict[str, Path]) -> Path:
    dest = tiny["qwen3"].parent / "qwen3-4bit"
    return Path(mlx_local.convert(tiny["qwen3"], dest, bits=4, group_size=32, quality=False).dest)


# ------------------------------------------------------------- no processes


def test_outside_a_launch_says_how_to_launch(tiny: dict[str, Path]) -> None:
    with pytest.raises(InvalidOptionError, match="mlx.launch -n 2 --backend ring -- python"):
        mlx_local.Model.load(tiny["qwen3"], distributed="tensor")
    with pytest.raises(InvalidOptionError, match="distributed='data'"):
        mlx_local.Model.load(tiny["qwen3"], distributed="data")


def test_memory_estimate_is_split_like_the_shards(tiny: dict[str, Path]) -> None:
    located = sources.locate(tiny["qwen3"])
    full = mlx_local.estimate_memory(tiny["qwen3"])

    def est(mode: str, rank: int, size: int) -> Any:
        return estimate_rank(located, dist.Placement(mode, rank, size), dtype=None, revision=None, offline=True,
                                  gguf_weights="quantized")  # fmt: skip

    t0, t1 = est("tensor", 0, 2), est("tensor", 1, 2)
    assert t0.weights == t1.weights < full.weights
    assert t0.kv_cache == full.kv_cache // 2
    # the embedding (tied: also the head) stays whole on every rank, the layers split in two
    embed = 151936 * 64 * 4
    assert t0.weights == pytest.approx(embed + (full.weights - embed) / 2, rel=0.01)
    p0, p1 = est("pipeline", 0, 2), est("pipeline", 1, 2)
    assert p0.weights == p1.weights  # two layers: one each
    assert p0.weights + p1.weights - embed == pytest.approx(full.weights, rel=0.01)
    assert p0.kv_cache == full.kv_cache // 2


def test_launch_command_checks_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlx_local._cli import main
    from mlx_local._cli_launch import launch_command

    cmd = launch_command(["--", "script.py", "x"], tmp_path / "h.json", backend="ring", port=4000, python=None,
                         verbose=False)  # fmt: skip
    assert cmd[-4:] == ["--", sys.executable, "script.py", "x"]  # mlx.launch would try to execute script.py itself
    assert main(["launch", "--hostfile", str(tmp_path / "missing.json"), "--", "python", "s.py"]) == 1
    assert "missing.json: cannot be read" in capsys.readouterr().err
    (tmp_path / "one.json").write_text(json.dumps([{"ssh": "a", "ips": ["10.0.0.1"]}]))
    assert main(["launch", "--hostfile", str(tmp_path / "one.json"), "--", "python", "s.py"]) == 1
    assert "at least two hosts" in capsys.readouterr().err
    assert main(["launch", "--hosts", "10.0.0.1", "--", "python", "s.py"]) == 1
    assert "One process is not a distributed launch" in capsys.readouterr().err
    assert main(["launch", "-n", "2"]) == 1
    assert "Give the command to run after --" in capsys.readouterr().err


# ---------------------------------------------------------------- launches

# One launch runs both scripts on the same two ranks (the launch, not the checks, is what costs: ~15 s of
# imports and joining on a loaded 2-core machine); each prints its own RESULT lines, asserted by its own test.
ERRORS_SCRIPT = """
    import json, os, sys
    import mlx_local
    from mlx_local.errors import MLXLocalError

    paths = json.loads(sys.argv[1])
    rank = int(os.environ["MLX_RANK"])
    out = {}
    def attempt(key, path, mode):
        try:
            mlx_local.Model.load(path, distributed=mode)
            out[key] = "loaded"
        except MLXLocalError as e:
            out[key] = [type(e).__name__, str(e)]
    attempt("no_shard", paths["gemma3"], "tensor")
    attempt("no_pipeline", paths["qwen3"], "pipeline")
    attempt("heads", paths["qwen3_odd"], "tensor")
    attempt("mismatch", paths["qwen3" if rank == 0 else "qwen3_other"], "tensor")
    m = mlx_local.Model.load(paths["ministral3"], distributed="pipeline")
    out["repr"] = repr(m)
    out["greedy"] = list(m.generate("Tell me a story", max_tokens=8, stop_loops=False).token_ids)
    print("RESULT errors", rank, json.dumps(out), flush=True)
"""

SAME_SCRIPT = """
    import json, os, sys
    import mlx_local
    from mlx_local import _distributed

    paths = json.loads(sys.argv[1])
    out = {}
    for key in ("qwen3_4bit", "qwen3"):
        m = mlx_local.Model.load(paths[key], distributed="tensor")
        r = {"repr": repr(m), "cpu_layers": sum(type(x).__name__.startswith("CPUQuantized") for _, x in m.module.named_modules())}
        r["greedy"] = list(m.generate("Tell me a story", max_tokens=8, stop_loops=False).token_ids)
        if key == "qwen3_4bit":
            out[key] = r
            continue
        s = m.stream("Tell me a story", max_tokens=8, stop_loops=False)
        next(s)
        s.close()  # abandoned: the ranks still run it to the end together
        r["sampled"] = m.generate("Hello", max_tokens=6, temperature=1.0, stop_loops=False).text
        r["choice"] = m.generate("Pick a colour", choices=["red", "green", "blue"]).text
        chat = m.chat()
        r["chat"] = [chat.send("Hi", max_tokens=4).content, chat.send("And then?", max_tokens=4).content]
        out[key] = r
    if m.distributed.rank == 0:
        with _distributed.lead(m):
            out["led"] = [list(m.generate(p, max_tokens=5, stop_loops=False).token_ids) for p in ("One", "Two")]
            s = m.stream("Three", max_tokens=5)
            next(s)
            s.close()
            out["led_choice"] = m.generate("Yes or no?", choices=["yes", "no"]).text
            out["led_chat"] = m.chat().send("Hi", max_tokens=4).content
    else:
        out["followed"] = _distributed.follow(m)
    print("RESULT same", m.distributed.rank, json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def two_ranks(tiny: dict[str, Path], tiny_4bit: Path) -> str:
    """The output of one 2-rank launch that ran ERRORS_SCRIPT, then SAME_SCRIPT."""
    paths = json.dumps({**{k: str(v) for k, v in tiny.items()}, "qwen3_4bit": str(tiny_4bit)})
    script = "import textwrap\n" + "\n".join(
        f"exec(compile(textwrap.dedent({part!r}), {name!r}, 'exec'), {{'__name__': '__main__'}})"
        for name, part in (("errors", ERRORS_SCRIPT), ("same", SAME_SCRIPT))
    )
    _, out, _ = launch(tiny["qwen3"].parent, script, paths, timeout=600)
    return out


@pytest.mark.slow
def test_tensor_parallel_same_script_and_follower(tiny: dict[str, Path], tiny_4bit: Path, two_ranks: str) -> None:
    tiny = {**tiny, "qwen3_4bit": tiny_4bit}
    ranks = results(two_ranks, "same")
    assert set(ranks) == {0, 1}, two_ranks[-3000:]
    r0, r1 = ranks[0], ranks[1]
    for key in ("qwen3_4bit", "qwen3"):
        assert "rank 0 of 2, tensor parallel" in r0[key]["repr"] and "rank 1 of 2" in r1[key]["repr"]
        assert r0[key] == {**r1[key], "repr": r0[key]["repr"]}  # greedy, sampled, structured, chat: the same
        one = mlx_local.Model.load(tiny[key])
        assert r0[key]["greedy"] == list(one.generate("Tell me a story", max_tokens=8, stop_loops=False).token_ids)
    assert r0["qwen3"]["choice"] == one.generate("Pick a colour", choices=["red", "green", "blue"]).text
    # every sharded 4-bit projection runs the CPU matmul: 7 per layer, 2 layers (+ the embedding)
    assert r0["qwen3"]["cpu_layers"] == 0 and r0["qwen3_4bit"]["cpu_layers"] >= 14
    assert r1["followed"] == 5  # two generations, the abandoned stream, the choice, the chat
    assert r0["led"] == [list(one.generate(p, max_tokens=5, stop_loops=False).token_ids) for p in ("One", "Two")]
    assert r0["led_choice"] == one.generate("Yes or no?", choices=["yes", "no"]).text


@pytest.mark.slow
def test_pipeline_parallel_and_clear_errors(tiny: dict[str, Path], two_ranks: str) -> None:
    ranks = results(two_ranks, "errors")
    assert set(ranks) == {0, 1}, two_ranks[-3000:]
    for r in ranks.values():
        assert r["no_shard"][0] == "UnsupportedArchitectureError" and "'gemma3_text'" in r["no_shard"][1]
        assert r["no_pipeline"][0] == "UnsupportedArchitectureError" and "no pipeline()" in r["no_pipeline"][1]
        assert "distributed='tensor'" in r["no_pipeline"][1]
        assert r["heads"][0] == "InvalidModelError" and "3 attention heads do not split evenly over 2 ranks" in r["heads"][1]
        assert r["mismatch"][0] == "DistributedError" and "different model files" in r["mismatch"][1]
        assert "pipeline parallel" in r["repr"]
    # rank 0 runs the last layers (mlx-lm's split), rank 1 the first
    assert "layers 1-2" in ranks[0]["repr"] and "layers 0-0" in ranks[1]["repr"]
    one = mlx_local.Model.load(tiny["ministral3"])
    assert ranks[0]["greedy"] == ranks[1]["greedy"] == list(
        one.generate("Tell me a story", max_tokens=8, stop_loops=False).token_ids
    )


FAULT_SCRIPT = """
    import json, os, signal, sys, time
    import mlx_local
    from mlx_local.errors import MLXLocalError

    how = sys.argv[2]
    m = mlx_local.Model.load(sys.argv[1], distributed="tensor")
    if m.distributed.rank == 1:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "exit":
            os._exit(0)
        time.sleep(3600)  # "hang": alive, but never generates
    try:
        m.generate("Hello", max_tokens=4)
        print("RESULT 0 \\"generated\\"", flush=True)
    except MLXLocalError as e:
        print("RESULT 0", json.dumps([type(e).__name__, str(e)]), flush=True)
        sys.exit(3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "kill", "hang"])
def test_a_rank_that_dies_or_hangs_ends_the_others(tiny: dict[str, Path], how: str) -> None:
    _, out, _ = launch(tiny["qwen3"].parent, FAULT_SCRIPT, str(tiny["qwen3"]), how, timeout=400,
                           MLX_LOCAL_DIST_TIMEOUT="6")  # fmt: skip
    # (mlx.launch exits 0 whatever its ranks did: the output tells)
    if how == "exit":  # rank 1 left quietly: rank 0 sees the lost connection
        assert results(out)[0][0] == "DistributedError" and "lost its connection" in results(out)[0][1]
    elif how == "kill":  # the launcher notices too, and may end rank 0 first
        assert "lost its connection" in out or "rank 1 exited with code -9" in out, out[-3000:]
    else:  # rank 0's watchdog ends it, then the launcher ends rank 1 (within the launch's timeout, not after its hour)
        assert "rank 0 waited 6 s for the other ranks while starting a generation" in out, out[-3000:]


@pytest.mark.slow
def test_a_wrong_hostfile_or_a_rank_that_never_joins_ends_in_bounded_time(tmp_path: Path, tiny: dict[str, Path]) -> None:
    # rank 1's address is nobody's (TEST-NET), so rank 0 waits to join: the watchdog ends it
    hostfile = tmp_path / "hosts.json"
    first = _ports(1)
    hostfile.write_text(json.dumps([[f"127.0.0.1:{first}"], [f"192.0.2.1:{first}"]]))
    script = tmp_path / "join.py"
    script.write_text(f"import mlx_local\nmlx_local.Model.load({str(tiny['qwen3'])!r}, distributed='tensor')\n")
    rc, out, _ = _run([sys.executable, str(script)], tmp_path, 120,
                         _env(MLX_RANK="0", MLX_HOSTFILE=str(hostfile), MLX_LOCAL_DIST_TIMEOUT="3"))  # fmt: skip
    assert rc == -signal.SIGKILL, out  # init holds the GIL: a watchdog process of its own ends it
    assert f"while joining the group (hostfile {hostfile}" in out


@pytest.mark.slow
def test_mlx_local_launch_runs_a_bare_script(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(
        "import mlx.core as mx\ng = mx.distributed.init()\n"
        "print('RESULT', g.rank(), mx.distributed.all_sum(mx.array(g.rank() + 1)).item(), flush=True)\n"
    )
    cmd = [sys.executable, "-m", "mlx_local", "launch", "-n", "2", "--port", str(_ports(2)), "--", "hello.py"]
    _, out, _ = _run(cmd, tmp_path, 120, _env())
    assert results(out) == {0: 3, 1: 3}


@pytest.mark.slow
def test_smollm2_float_on_three_ranks_matches_one_process(smollm2_gguf: Path, tmp_path: Path) -> None:
    """SmolLM2-135M has 9 attention heads (3 KV heads): it splits over 3 ranks, not 2."""
    script = """
        import json, sys
        import mlx_local
        from mlx_local.errors import InvalidModelError
        m = mlx_local.Model.load(sys.argv[1], gguf_weights="float", distributed="tensor")
        ids = list(m.generate("What is the capital of France?", max_tokens=3).token_ids)
        print("RESULT", m.distributed.rank, json.dumps(ids), flush=True)
    """
    # Loaded here first, the float import is in the (shared) import cache: the three ranks read it, not redo it.
    one = mlx_local.Model.load(smollm2_gguf, gguf_weights="float")
    expected = list(one.generate("What is the capital of France?", max_tokens=3).token_ids)
    _, out, _ = launch(tmp_path, script, str(smollm2_gguf), n=3, timeout=400)
    assert results(out) == {0: expected, 1: expected, 2: expected}, out[-3000:]


@pytest.mark.slow
def test_serve_under_a_launch_answers_from_rank_0_like_one_process(tiny: dict[str, Path], tmp_path: Path) -> None:
    """`mlx-local serve --distributed tensor` on 2 ranks: rank 0 serves HTTP, rank 1 follows; the answers are one process's."""
    import httpx
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(_ports(2)), "--",
           sys.executable, "-m", "mlx_local", "serve", "--distributed", "tensor", "-m", str(tiny["qwen3"]),
           "--port", str(port), "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        one = mlx_local.Model.load(tiny["qwen3"])
        for prompt in ("Tell me a story", "Hello there"):
            messages = [{"role": "user", "content": prompt}]
            got = client.chat.completions.create(model="default", messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
            chunks = list(one.execute(one.prepare(messages, max_tokens=8, temperature=0.0, reuse_cache=False)))
            assert (got.choices[0].message.content or "") == "".join(c.text for c in chunks if c.kind == "content")
            assert got.usage is not None and got.usage.completion_tokens == chunks[-1].stats.generated_tokens  # type: ignore[union-attr]
        streamed = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=6, temperature=0, stream=True)  # fmt: skip
        assert any(e.choices for e in streamed)  # a stream also runs on both ranks, and the server goes on
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
