"""mlx_local.convert: quantize with mlx-lm, measure what was lost, write safely.

The real-model tests convert SmolLM2-135M-Instruct from its GGUF (reference:
the GGUF dequantized to float32) and share the conversions in module-scoped
fixtures; they score 512 tokens instead of the default ~1000 to stay fast
(the numbers differ from the full text's by a few per cent). The tiny
random-weight models cover every option quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlx_local
from mlx_local import InvalidModelError, InvalidOptionError, ModelNotFoundError
from mlx_local._recipes import AUTO_CANDIDATES, DEFAULT_MAX_KL, RECIPES
from mlx_local.types import ConversionReport

from conftest import put_in_hf_cache, pythonpath_with_torch
from tiny_models import write_tiny_model

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

PARIS = "What is the capital of France?"
TOKENS = 512  # quality_tokens for the SmolLM2 tests


def files_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: equal digests mean byte-for-byte equal folders."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(dest: Path) -> list[str]:
    """Temporary folders a conversion to ``dest`` left beside it."""
    return sorted(p.name for p in dest.parent.glob(f".{dest.name}.partial-*"))


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model*.safetensors"))


# ------------------------------------------------------------ SmolLM2 (real)


@pytest.fixture(scope="module")
def smol_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smollm2-converted")


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path, smol_out: Path) -> dict[str, ConversionReport]:
    """SmolLM2 converted at 4-bit g64 and g32, 8-bit and 2-bit (one reference, computed once)."""
    settings = {
        "4bit-g64": dict(bits=4, group_size=64),
        "4bit-g32": dict(bits=4, group_size=32),
        "8bit": dict(bits=8),
        "2bit": dict(bits=2),
    }
    return {
        name: mlx_local.convert(smollm2_gguf, smol_out / name, quality_tokens=TOKENS, **kw)
        for name, kw in settings.items()
    }


@pytest.fixture(scope="module")
def smol_auto(smol, smollm2_gguf: Path, smol_out: Path) -> ConversionReport:
    return mlx_local.convert(smollm2_gguf, smol_out / "auto", recipe="auto", quality_tokens=TOKENS)


def test_smollm2_loads_with_both_loaders_and_answers(smol, smol_out):
    import mlx.core as mx
    from mlx_lm import generate, load

    for name in ("4bit-g32", "8bit"):
        model = mlx_local.Model.load(smol_out / name)
        assert "Paris" in model.generate(PARIS, max_tokens=24).text, name
        assert model.quantization.startswith(f"{smol[name].bits}-bit, group {smol[name].group_size}")

    module, tokenizer = load(str(smol_out / "4bit-g32"))
    module.set_dtype(mx.float32)  # MLX's CPU backend emulates float16: far too slow for a test
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PARIS}], add_generation_prompt=True)
    assert "Paris" in generate(module, tokenizer, prompt=prompt, max_tokens=10)


def test_smollm2_sizes_and_bits_per_weight(smol, smol_out, smollm2_gguf):
    # float16 scale and bias per group: bits + 32 / group_size; every layer of SmolLM2 is quantized.
    expected_bpw = {"4bit-g64": 4.5, "4bit-g32": 5.0, "8bit": 8.5, "2bit": 2.5}
    for name, report in smol.items():
        assert report.source_kind == "gguf"
        assert report.source_bytes == smollm2_gguf.stat().st_size
        assert report.parameters == 134_515_008
        assert report.bits_per_weight == pytest.approx(expected_bpw[name], abs=0.01), name
        assert report.output_bytes == pytest.approx(report.parameters * report.bits_per_weight / 8, rel=1e-6)
        # the files hold the weights plus small headers
        assert 0 <= weights_bytes(smol_out / name) - report.output_bytes < 1_000_000
        config = json.loads((smol_out / name / "config.json").read_text())
        assert (config["quantization"]["bits"], config["quantization"]["group_size"]) == (report.bits, report.group_size)
        assert report.dtype == "float16"
    assert smol["2bit"].output_bytes < smol["4bit-g64"].output_bytes < smol["4bit-g32"].output_bytes
    assert smol["4bit-g32"].output_bytes < smol["8bit"].output_bytes


def test_smollm2_quality_is_ordered(smol):
    q = {name: r.quality for name, r in smol.items()}
    assert all(x is not None and x.tokens >= 500 for x in q.values())
    # One reference for all: the same reference perplexity.
    assert len({round(x.reference_perplexity, 6) for x in q.values()}) == 1
    ref_ppl = q["8bit"].reference_perplexity
    # 8-bit is nearly the source; 2-bit is destroyed; 4-bit in between.
    assert q["8bit"].mean_kl < 0.01 and q["8bit"].top1_agreement > 0.93
    assert q["8bit"].perplexity == pytest.approx(ref_ppl, rel=0.02)
    assert q["2bit"].mean_kl > 3 and q["2bit"].top1_agreement < 0.2
    assert q["8bit"].mean_kl < q["4bit-g32"].mean_kl < q["4bit-g64"].mean_kl < q["2bit"].mean_kl
    assert q["8bit"].top1_agreement > q["4bit-g32"].top1_agreement > q["4bit-g64"].top1_agreement > q["2bit"].top1_agreement
    assert ref_ppl < q["8bit"].perplexity < q["4bit-g32"].perplexity < q["4bit-g64"].perplexity < q["2bit"].perplexity


def test_smollm2_known_case_group_64_is_worse_than_32(smol):
    """The report shows why 4-bit g64 answered badly and g32 better (measured:
    KL 0.40 vs 0.31, top-1 59% vs 68%); both are far from 8-bit (0.002)."""
    g64, g32 = smol["4bit-g64"].quality, smol["4bit-g32"].quality
    assert g64.mean_kl > 1.15 * g32.mean_kl
    assert g32.top1_agreement - g64.top1_agreement > 0.04
    assert g64.perplexity > g32.perplexity
    assert g64.mean_kl > DEFAULT_MAX_KL and g32.mean_kl > DEFAULT_MAX_KL  # neither meets auto's target


def test_smollm2_auto_picks_smallest_candidate_meeting_the_target(smol_auto, smol_out):
    report = smol_auto
    chosen = report.chosen
    assert report.requested_recipe == "auto" and report.max_kl == DEFAULT_MAX_KL
    assert chosen.quality.mean_kl <= DEFAULT_MAX_KL
    assert chosen.quality.tokens == report.quality.tokens >= 500
    assert (chosen.bits, chosen.group_size, chosen.recipe) != (4, 64, None)  # the known bad case is avoided
    assert len(report.candidates) == len(AUTO_CANDIDATES)
    sizes = [c.bytes for c in report.candidates]
    assert sizes == sorted(sizes)
    i = report.candidates.index(chosen)
    for c in report.candidates[:i]:  # every smaller one was tried and missed the target
        assert c.status in ("rejected", "rejected early") and c.quality.mean_kl > DEFAULT_MAX_KL, c
    assert all(c.status == "not tried" and c.quality is None for c in report.candidates[i + 1 :])
    g64 = next(c for c in report.candidates if c.label == "4-bit g64")
    assert g64.status.startswith("rejected")

    dest = smol_out / "auto"
    config = json.loads((dest / "config.json").read_text())
    assert config["quantization"]["bits"] == chosen.bits
    assert report.bits_per_weight == pytest.approx(chosen.bits_per_weight)
    assert "Paris" in mlx_local.Model.load(dest).generate(PARIS, max_tokens=24).text
    assert leftovers(dest) == []  # rejected candidates were built beside dest and removed
    record = json.loads((dest / "mlx_local.json").read_text())
    assert [c["label"] for c in record["candidates"]] == [c.label for c in report.candidates]

    table = str(report)
    for c in report.candidates:
        assert c.label in table
    assert "chosen" in table and "not tried" in table and "target: mean KL <= 0.1" in table


def test_smollm2_report_table_dict_and_json(smol):
    report = smol["4bit-g32"]
    table = str(report)
    assert "4-bit g32" in table and "KL" in table and "top-1" in table and "bits/w" in table
    assert "the GGUF dequantized to float32" in table and f"{report.quality.mean_kl:.4f}" in table
    d = report.as_dict()
    assert json.loads(report.to_json()) == json.loads(json.dumps(d))
    assert d["quality"]["mean_kl"] == report.quality.mean_kl
    assert d["candidates"][0]["status"] == "chosen"
    assert set(d) >= {"source", "source_bytes", "output_bytes", "parameters", "bits_per_weight", "seconds", "quality"}
    assert report.seconds > 0


def test_smollm2_provenance(smol, smol_out, smollm2_gguf):
    record = json.loads((smol_out / "4bit-g32" / "mlx_local.json").read_text())
    assert record["created_by"] == f"mlx_local {mlx_local.__version__}"
    source = record["source"]
    assert source["type"] == "gguf" and source["file"] == smollm2_gguf.name
    assert source["sha256"] == hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    conv = record["conversion"]
    assert (conv["bits"], conv["group_size"], conv["recipe"], conv["dtype"]) == (4, 32, None, "float16")
    assert conv["quantizer"].startswith("mlx-lm ")
    assert record["quality"]["mean_kl"] == pytest.approx(smol["4bit-g32"].quality.mean_kl)
    assert "GGUF dequantized" in record["quality"]["reference"]


# --------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_float) -> Path:
    """A tiny random llama in HF layout, float16 by its config (so scales are float16, as usual).

    It uses SmolLM2's tokenizer: its 49k-token vocabulary keeps the tiny
    model small and quick to load, which matters for the many conversions here.
    """
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    write_tiny_model(
        folder, "llama", hidden_size=128, head_dim=32, intermediate_size=256, torch_dtype="float16",
        vocab_size=49152, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(smollm2_float.path / name, folder / name)
    return folder


ROUND_TRIPS = [
    *[dict(bits=b) for b in (2, 3, 4, 5, 6, 8)],
    dict(bits=4, group_size=32),
    dict(bits=3, group_size=128),
    dict(bits=None, dtype="bfloat16"),
    *[dict(recipe=r) for r in ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")],
    dict(recipe="embed_8bit", bits=4),
]


@pytest.mark.parametrize("options", ROUND_TRIPS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_tiny_every_bits_and_recipe_round_trips(tiny, tmp_path, options):
    from mlx_lm.utils import load_model

    dest = tmp_path / "out"
    report = mlx_local.convert(tiny, dest, quality=False, **options)
    assert report.quality is None and report.candidates[0].status == "chosen"
    assert report.chosen.label in str(report) and "quality not measured" in str(report)
    config = json.loads((dest / "config.json").read_text())
    bits, group = options.get("bits", 4), options.get("group_size", 64)
    recipe = options.get("recipe")
    if bits is None:
        assert "quantization" not in config and report.bits is None
        assert config["torch_dtype"] == "bfloat16" and report.bits_per_weight == pytest.approx(16)
    else:
        quant = config["quantization"]
        if recipe and recipe.startswith("mixed_"):
            low, high = int(recipe[6]), int(recipe[8])
            assert quant["bits"] == low == report.bits
            # two layers: mlx-lm gives the last one the high bits, the first the low
            assert quant["model.layers.0.mlp.down_proj"]["bits"] == low
            assert quant["model.layers.1.mlp.down_proj"]["bits"] == high
            assert quant["lm_head"]["bits"] == high
        elif recipe == "embed_8bit":
            assert quant["bits"] == 4
            assert quant["model.embed_tokens"]["bits"] == 8 and quant["lm_head"]["bits"] == 8
            assert "model.layers.0.mlp.down_proj" not in quant
        else:
            assert (quant["bits"], quant["group_size"]) == (bits, group)
            assert report.bits_per_weight == pytest.approx(bits + 32 / group, abs=0.01)  # float16 scales
    # convert() itself loaded it with Model.load and ran it; mlx-lm opens it too.
    load_model(dest)
    record = json.loads((dest / "mlx_local.json").read_text())
    assert record["source"]["type"] == "folder"
    assert record["source"]["files"]["model.safetensors"] == hashlib.sha256((tiny / "model.safetensors").read_bytes()).hexdigest()
    assert record["conversion"]["recipe"] == recipe and record["conversion"]["bits"] == report.bits
    assert leftovers(dest) == []


def test_tiny_quantized_mlx_source_is_dequantized_for_reference(tiny, tmp_path):
    four = tmp_path / "four"
    mlx_local.convert(tiny, four, bits=4, quality=False)
    report = mlx_local.convert(four, tmp_path / "eight", bits=8, quality_tokens=64)
    assert report.reference.startswith("the source dequantized by mlx-lm (it was 4-bit, group 64)")
    # 8-bit of the 4-bit model's float version is very close to it.
    assert report.quality.mean_kl < 0.01
    record = json.loads((tmp_path / "eight" / "mlx_local.json").read_text())
    assert record["source"]["upstream"]["type"] == "folder"  # the chain of conversions is kept


def test_tiny_repo_id_source_offline(tiny, tmp_path, no_network):
    snapshot = put_in_hf_cache("tiny-org/tiny-llama-conv", tiny, commit="c" * 40)
    report = mlx_local.convert("tiny-org/tiny-llama-conv", tmp_path / "out", bits=4, quality=False, offline=True)
    assert report.source_kind == "repo" and snapshot.exists()
    record = json.loads((tmp_path / "out" / "mlx_local.json").read_text())
    assert record["source"] == {"type": "repo", "repo_id": "tiny-org/tiny-llama-conv", "revision": None, "commit": "c" * 40}
    assert no_network == []


def test_tiny_with_quality_reports_stages_and_prints_nothing(tiny, tmp_path, capfd):
    calls: list[tuple[str, float]] = []
    report = mlx_local.convert(tiny, tmp_path / "out", bits=4, quality_tokens=32, progress=lambda s, f: calls.append((s, f)))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # mlx-lm's "[INFO]" lines are swallowed
    assert report.quality.tokens == 32 and report.quality.mean_kl >= 0 and 0 <= report.quality.top1_agreement <= 1
    assert report.reference == "the source as stored (float16, not quantized); computed in float32"
    assert mlx_local.Model.load(tmp_path / "out").quantization.startswith("4-bit, group 64")
    stages = [s for s, _ in calls]
    assert stages[0] == "source" and calls[-1] == ("finish", 1.0)
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "source", "reference", "convert", "evaluate", "finish",
    ]  # fmt: skip
    assert all(0.0 <= f <= 1.0 for _, f in calls)


# ------------------------------------------------------------ failure safety


class Stop(KeyboardInterrupt):
    pass


def interrupt_at(stage: str):
    def progress(s: str, fraction: float) -> None:
        if s == stage:
            raise Stop(f"interrupted at {s} {fraction}")

    return progress


@pytest.mark.parametrize("stage", ["source", "reference", "convert", "evaluate", "finish"])
def test_interrupted_conversion_leaves_no_dest(tiny, tmp_path, stage):
    dest = tmp_path / "out"
    with pytest.raises(Stop):
        mlx_local.convert(tiny, dest, bits=4, quality_tokens=32, progress=interrupt_at(stage))
    assert not dest.exists()
    assert leftovers(dest) == []


def test_interrupted_auto_leaves_no_dest(tiny, tmp_path):
    dest = tmp_path / "out"
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if seen.count("evaluate") > 3:  # in the middle of the second candidate
            raise Stop()

    with pytest.raises(Stop):
        mlx_local.convert(tiny, dest, recipe="auto", max_kl=1e-9, quality_tokens=32, progress=progress)
    assert not dest.exists() and leftovers(dest) == []


def test_existing_dest_untouched_when_refused_failed_or_interrupted(tiny, tmp_path):
    dest = tmp_path / "out"
    mlx_local.convert(tiny, dest, bits=8, quality=False)
    before = files_digest(dest)

    with pytest.raises(InvalidOptionError, match="already exists; pass overwrite=True"):
        mlx_local.convert(tiny, dest, bits=4, quality=False)
    assert files_digest(dest) == before

    with pytest.raises(Stop):
        mlx_local.convert(tiny, dest, bits=4, overwrite=True, quality_tokens=32, progress=interrupt_at("evaluate"))
    assert files_digest(dest) == before

    def fail(stage, fraction):
        if stage == "finish":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        mlx_local.convert(tiny, dest, bits=4, overwrite=True, quality=False, progress=fail)
    assert files_digest(dest) == before
    assert leftovers(dest) == []

    # And replaced once a conversion completes.
    report = mlx_local.convert(tiny, dest, bits=4, overwrite=True, quality=False)
    assert json.loads((dest / "config.json").read_text())["quantization"]["bits"] == 4 == report.bits
    assert leftovers(dest) == []


def test_dest_that_appears_meanwhile_is_not_replaced(tiny, tmp_path):
    dest = tmp_path / "out"

    def someone_else_writes_dest(stage, fraction):
        if (stage, fraction) == ("finish", 1.0):
            dest.mkdir()
            (dest / "config.json").write_text('{"theirs": true}')

    with pytest.raises(InvalidOptionError, match="appeared while converting"):
        mlx_local.convert(tiny, dest, bits=4, quality=False, progress=someone_else_writes_dest)
    assert (dest / "config.json").read_text() == '{"theirs": true}' and leftovers(dest) == []


def test_overwrite_refuses_what_is_not_a_model_folder(tiny, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("buy milk")
    with pytest.raises(InvalidOptionError, match="not a model folder"):
        mlx_local.convert(tiny, notes, bits=4, overwrite=True, quality=False)
    assert (notes / "todo.txt").read_text() == "buy milk"
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"data")
    with pytest.raises(InvalidOptionError, match="not a folder"):
        mlx_local.convert(tiny, a_file, bits=4, overwrite=True, quality=False)
    assert a_file.read_bytes() == b"data"


_KILLABLE = textwrap.dedent(
    """
    import pathlib, sys, time
    import mlx_local

    src, dest, marker = sys.argv[1:4]

    def progress(stage, fraction):
        if stage == "evaluate":          # the model is written, not yet checked or renamed
            pathlib.Path(marker).write_text(stage)
            time.sleep(300)

    mlx_local.convert(src, dest, bits=4, quality=False, progress=progress)
    """
)


def _start_killable(tiny: Path, dest: Path, tmp_path: Path) -> subprocess.Popen:
    marker = tmp_path / f"marker-{dest.name}"
    # PyTorch kept in this child, as in test_cli's Ctrl-C test: torch-less, its SIGINT went unanswered once (60 s)
    # in a whole-suite run (passes alone); not understood yet, see the suite branch's report.
    return subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, str(tiny), str(dest), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": pythonpath_with_torch()},
    )


def _wait_for_marker(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the conversion ended early: {proc.communicate()[1].decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the conversion never reached its evaluate stage")
        time.sleep(0.1)


def test_killed_process_leaves_no_dest_and_ctrl_c_cleans_up(tiny, tmp_path):
    killed, interrupted = tmp_path / "killed", tmp_path / "interrupted"
    procs = [_start_killable(tiny, killed, tmp_path), _start_killable(tiny, interrupted, tmp_path)]
    for proc, dest in zip(procs, (killed, interrupted)):
        _wait_for_marker(proc, tmp_path / f"marker-{dest.name}")
        assert len(leftovers(dest)) == 1  # the work is really in progress beside dest

    # SIGKILL half way: no dest; the temporary folder stays until the next conversion to dest.
    procs[0].kill()
    procs[0].communicate(timeout=60)
    assert not killed.exists()
    # Ctrl-C (SIGINT) half way: no dest and nothing left behind.
    procs[1].send_signal(signal.SIGINT)
    _, err = procs[1].communicate(timeout=60)
    assert procs[1].returncode != 0 and b"KeyboardInterrupt" in err
    assert not interrupted.exists() and leftovers(interrupted) == []

    mlx_local.convert(tiny, killed, bits=4, quality=False)
    assert killed.is_dir() and leftovers(killed) == []  # the dead process's folder was removed


def test_dest_moved_aside_by_a_killed_overwrite_is_put_back(tiny, tmp_path):
    """Killed between moving the old dest aside and renaming the new one in: the old one comes back."""
    dest = tmp_path / "out"
    mlx_local.convert(tiny, dest, bits=8, quality=False)
    before = files_digest(dest)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = tmp_path / f".out.partial-{dead.pid}-abc"
    partial.mkdir()
    os.replace(dest, partial / "previous")
    with pytest.raises(InvalidOptionError, match="already exists"):  # it is back, so not overwritten
        mlx_local.convert(tiny, dest, bits=4, quality=False)
    assert files_digest(dest) == before and leftovers(dest) == []


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, option, message",
    [
        (dict(recipe="mixed_5_7"), "recipe", "choose one of mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6, embed_8bit, auto"),
        (dict(bits=7), "bits", "choose one of 2, 3, 4, 5, 6, 8, or None"),
        (dict(bits=True), "bits", "choose one of"),
        (dict(group_size=16), "group_size", "choose one of 32, 64, 128"),
        (dict(dtype="int8"), "dtype", "choose one of float16, bfloat16, float32"),
        (dict(max_kl=0.05), "max_kl", "target of recipe='auto'"),
        (dict(recipe="auto", max_kl=0), "max_kl", "positive number"),
        (dict(recipe="auto", bits=3), "recipe", "chooses the bits and group size itself"),
        (dict(recipe="auto", quality=False), "quality", "cannot be combined with quality=False"),
        (dict(recipe="mixed_3_6", bits=8), "bits", "sets the bits itself (3 and 6)"),
        (dict(recipe="embed_8bit", bits=None), "bits", "cannot be None"),
        (dict(quality_tokens=0), "quality_tokens", "positive number of tokens"),
        (dict(progress="yes"), "progress", "progress(stage, fraction)"),
    ],
)
def test_bad_options_are_clear_errors(tiny, tmp_path, options, option, message):
    dest = tmp_path / "out"
    with pytest.raises(InvalidOptionError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        mlx_local.convert(tiny, dest, **options)
    assert e.value.option == option
    assert not dest.exists() and leftovers(dest) == []


def test_source_that_is_not_a_model(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(InvalidModelError, match="not a GGUF model"):
        mlx_local.convert(text, tmp_path / "a")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidModelError, match="no config.json"):
        mlx_local.convert(empty, tmp_path / "b")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(InvalidModelError):
        mlx_local.convert(fake, tmp_path / "c")
    with pytest.raises(ModelNotFoundError):
        mlx_local.convert(tmp_path / "missing", tmp_path / "d")
    for name in "abcd":
        assert not (tmp_path / name).exists() and leftovers(tmp_path / name) == []


def test_dest_and_source_must_not_overlap(tiny, tmp_path):
    before = files_digest(tiny)
    with pytest.raises(InvalidOptionError, match="inside the source"):
        mlx_local.convert(tiny, tiny / "converted", quality=False)
    with pytest.raises(InvalidOptionError, match="already exists"):
        mlx_local.convert(tiny, tiny, quality=False)
    with pytest.raises(InvalidOptionError, match="inside the source"):
        mlx_local.convert(tiny, tiny, overwrite=True, quality=False)
    assert files_digest(tiny) == before and not (tiny / "converted").exists()
    # A model folder holding the source is not replaced either.
    outer = tmp_path / "outer"
    inner = write_tiny_model(outer / "inner", "qwen3")
    (outer / "config.json").write_text("{}")
    before = files_digest(outer)
    with pytest.raises(InvalidOptionError, match="would delete the source"):
        mlx_local.convert(inner, outer, overwrite=True, quality=False)
    assert files_digest(outer) == before


def test_auto_says_when_no_candidate_meets_the_target(tiny, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["mlx_local._recipes"], "AUTO_CANDIDATES", ((2, 64, None), (8, 64, None)))
    with pytest.raises(InvalidOptionError, match=r"No candidate met max_kl=1e-12: the closest, 8-bit g64") as e:
        mlx_local.convert(tiny, tmp_path / "out", recipe="auto", max_kl=1e-12, quality_tokens=32)
    assert e.value.option == "max_kl"
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_recipes_are_documented():
    assert set(RECIPES) == {"mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6", "embed_8bit", "auto"}
    from mlx_local import _recipes

    assert _recipes.__doc__ and "auto" in _recipes.__doc__
