"""device_info(): what this machine offers, and MLX_LOCAL_MEMORY_LIMIT; byte counts written and read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlx_local
from mlx_local import _units as units


def test_device_info_describes_this_machine():
    info = mlx_local.device_info()
    assert info.backend in ("cpu", "metal", "cuda")
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
    assert abs(info.total_memory - total_kb * 1024) < 0.02 * total_kb * 1024
    assert 0 < info.usable_memory <= info.total_memory
    assert info.blas.startswith("OpenBLAS") and info.processor
    assert json.loads(json.dumps(info.as_dict()))["usable_memory"] == info.usable_memory
    assert "usable" in str(info)


def test_memory_limit_env_caps_usable_memory(monkeypatch):
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "512MB")
    info = mlx_local.device_info()
    assert info.usable_memory == 512_000_000 and "MLX_LOCAL_MEMORY_LIMIT" in info.usable_source
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "2GiB")
    assert mlx_local.device_info().usable_memory == 2 * 2**30
    monkeypatch.setenv("MLX_LOCAL_MEMORY_LIMIT", "lots")
    with pytest.raises(mlx_local.InvalidOptionError, match="MLX_LOCAL_MEMORY_LIMIT.*8GB") as e:
        mlx_local.device_info()
    assert e.value.option == "MLX_LOCAL_MEMORY_LIMIT"


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1_500, "1.5 KB"), (85_000_000, "85 MB"), (1_300_000_000, "1.3 GB"),
    (12_345_678_901, "12 GB"), (2.5e12, "2.5 TB"),
])  # fmt: skip
def test_format_bytes_uses_decimal_units(n, text):
    assert units.format_bytes(n) == text


@pytest.mark.parametrize("text, n", [
    ("8GB", 8_000_000_000), ("512 MiB", 512 * 2**20), ("1e9", 1_000_000_000), (" 2gib ", 2 * 2**30),
    ("300", 300), ("1.5k", 1500), ("4 TB", 4 * 10**12),
])  # fmt: skip
def test_parse_bytes_reads_decimal_and_binary_units(text, n):
    assert units.parse_bytes(text) == n


@pytest.mark.parametrize("text", ["lots", "8 GX", "", "-1GB", "GB", "1.2.3", ". MB"])
def test_parse_bytes_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="not a size.*8GB"):
        units.parse_bytes(text)
