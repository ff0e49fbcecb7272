"""The public API is small: what you call and what you catch at the top, types and errors in two modules."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import mlx_local

#: The whole top level, pinned: adding a name is a decision, not an accident.
TOP_LEVEL = [
    "Chat", "ChatError", "DEFAULT_MODEL", "InsufficientMemoryError", "InvalidModelError", "InvalidOptionError",
    "MLXLocalError", "Model", "ModelNotFoundError", "OutputError", "StorageError", "__version__", "convert", "create_app",
    "device_info", "estimate_memory", "local_models", "models", "pull", "remove", "serve",
]  # fmt: skip


def test_top_level_is_pinned_and_small():
    assert sorted(mlx_local.__all__) == sorted(TOP_LEVEL)
    assert len(mlx_local.__all__) <= 25
    public = {n for n, v in vars(mlx_local).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public | {"__version__"} == set(TOP_LEVEL)


def test_only_errors_and_types_are_public_modules():
    names = {m.name for m in pkgutil.iter_modules(mlx_local.__path__)}
    assert {n for n in names if not n.startswith("_")} == {"errors", "types"}
    for name in names - {"__main__", "_version"}:  # every module says what it offers
        module = importlib.import_module(f"mlx_local.{name}")
        assert isinstance(getattr(module, "__all__", None), list), name


def test_every_public_name_is_documented():
    from mlx_local import errors, types

    for module in (mlx_local, errors, types):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__ and obj.__doc__.strip(), f"{module.__name__}.{name}"


def test_default_model_name_is_a_string_constant():
    assert isinstance(mlx_local.DEFAULT_MODEL, str) and mlx_local.DEFAULT_MODEL


def test_version():
    from importlib.metadata import version

    assert mlx_local.__version__ == version("mlx-local")
