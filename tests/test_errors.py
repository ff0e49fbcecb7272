"""Bad input gets a clear MLXLocalError naming the culprit, never a deep traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mlx_local
from mlx_local.errors import (
    InvalidModelError,
    InvalidOptionError,
    MLXLocalError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)

from tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3-tiny", "qwen3")


@pytest.fixture
def broken(tmp_path, tiny_folder) -> Path:
    """A fresh copy of a good tiny model, for a test to break."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "broken-model"))


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return mlx_local.Model.load(tiny_folder)


def test_tree():
    assert issubclass(ModelNotFoundError, LookupError) and issubclass(ModelNotFoundError, MLXLocalError)
    assert issubclass(InvalidModelError, ValueError) and issubclass(InvalidModelError, MLXLocalError)
    assert issubclass(UnsupportedArchitectureError, InvalidModelError)
    assert issubclass(InvalidOptionError, ValueError) and issubclass(InvalidOptionError, MLXLocalError)
    assert issubclass(mlx_local.errors.GatedModelError, ModelNotFoundError)
    assert issubclass(mlx_local.InsufficientMemoryError, MemoryError)
    assert issubclass(mlx_local.InsufficientMemoryError, MLXLocalError)
    from mlx_local.errors import HubUnreachableError, StorageError

    assert issubclass(HubUnreachableError, ModelNotFoundError) and issubclass(HubUnreachableError, ConnectionError)
    assert issubclass(StorageError, OSError) and issubclass(StorageError, MLXLocalError)


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model") as e:
        mlx_local.Model.load(missing)
    assert e.value.source == str(missing)
    with pytest.raises(ModelNotFoundError, match="nothere.gguf"):
        mlx_local.Model.load("./nothere.gguf")


def test_not_a_repo_id_nor_path():
    with pytest.raises(ModelNotFoundError, match="not a model!"):
        mlx_local.Model.load("not a model!")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="no config.json") as e:
        mlx_local.Model.load(tmp_path / "empty")
    assert "empty" in str(e.value)


@pytest.mark.parametrize("content", ["{not json", '{"model_type": "qwen3", "hidden_si', "", "\x00\xff\xfe"])
def test_garbage_or_truncated_config(broken, content):
    (broken / "config.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(InvalidModelError, match="config.json") as e:
        mlx_local.Model.load(broken)
    assert "broken-model" in str(e.value)


def test_config_without_model_type(broken):
    config = json.loads((broken / "config.json").read_text())
    del config["model_type"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="model_type"):
        mlx_local.Model.load(broken)


def test_config_not_an_object(broken):
    (broken / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(InvalidModelError, match="not a JSON object"):
        mlx_local.Model.load(broken)


def test_unsupported_architecture(broken):
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "frobnicator9000"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="frobnicator9000") as e:
        mlx_local.Model.load(broken)
    assert e.value.architecture == "frobnicator9000"


def test_truncated_safetensors(broken):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="model.safetensors.*truncated"):
        mlx_local.Model.load(broken)


def test_garbage_safetensors(broken):
    (broken / "model.safetensors").write_bytes(b"\x07" * 4096)
    with pytest.raises(InvalidModelError, match="model.safetensors"):
        mlx_local.Model.load(broken)


def test_no_weights(broken):
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(InvalidModelError, match="no model.*safetensors.*pytorch_model.bin"):
        mlx_local.Model.load(broken)


def test_weights_do_not_fit_config(broken):
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the file has 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="do not fit"):
        mlx_local.Model.load(broken)


def test_index_naming_missing_shard(broken):
    (broken / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(InvalidModelError, match="model-00002-of-00002.safetensors"):
        mlx_local.Model.load(broken)


def test_corrupt_index(broken):
    (broken / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(InvalidModelError, match="index.json"):
        mlx_local.Model.load(broken)


def test_tokenizer_that_will_not_load(broken):
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    with pytest.raises(InvalidModelError, match="tokenizer") as e:
        mlx_local.Model.load(broken)
    assert "broken-model" in str(e.value)


def test_truncated_gguf(tmp_path, smollm2_gguf):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    with pytest.raises(InvalidModelError, match="cut.gguf"):
        mlx_local.Model.load(cut)


def test_truncated_gguf_leaves_no_import(tmp_path, smollm2_gguf):
    cut = tmp_path / "half.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(60_000_000))
    with pytest.raises(InvalidModelError, match="half.gguf"):
        mlx_local.Model.load(cut)
    imports = mlx_local._assets.home() / "imports"
    assert not list(imports.glob("half-*")) and not list(imports.glob(".half-*"))


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    with pytest.raises(InvalidModelError, match="garbage.gguf"):
        mlx_local.Model.load(bad)


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError, match="mamba") as e:
        mlx_local.Model.load(path)
    assert e.value.architecture == "mamba"


def test_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(InvalidModelError, match="notes.txt"):
        mlx_local.Model.load(f)


@pytest.mark.parametrize("prompt", ["", "   \n", [], [{"role": "user", "content": ""}]])
def test_empty_prompt(tiny, prompt):
    with pytest.raises(InvalidOptionError, match="empty") as e:
        tiny.generate(prompt)
    assert e.value.option == "prompt"


@pytest.mark.parametrize("messages", [[{"role": "user"}], ["hello"], [{"role": 1, "content": "x"}]])
def test_malformed_messages(tiny, messages):
    with pytest.raises(InvalidOptionError, match="Message 0"):
        tiny.generate(messages)


@pytest.mark.parametrize(
    "option, value",
    [
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 1.5),
        ("top_p", 0),
        ("top_k", -3),
        ("min_p", 2),
        ("repetition_penalty", 0),
        ("seed", -1),
        ("seed", "abc"),
        ("stop", [""]),
        ("stop", [3]),
    ],
)
def test_nonsense_options(tiny, option, value):
    with pytest.raises(InvalidOptionError, match=option) as e:
        tiny.generate("Hello", **{option: value})
    assert e.value.option == option
    with pytest.raises(InvalidOptionError):
        next(iter(tiny.stream("Hello", **{option: value})))


def test_unknown_option(tiny):
    with pytest.raises(InvalidOptionError, match="temprature") as e:
        tiny.generate("Hello", temprature=0.5)
    assert "temperature" in str(e.value)  # the valid names are listed


def test_bad_load_arguments(tiny_folder):
    with pytest.raises(InvalidOptionError, match="float8"):
        mlx_local.Model.load(tiny_folder, dtype="float8")
    with pytest.raises(InvalidOptionError, match="gguf_weights"):
        mlx_local.Model.load(tiny_folder, gguf_weights="tiny")
    with pytest.raises(InvalidOptionError, match="source"):
        mlx_local.Model.load(42)
