"""The public API is small and listed in mlx_local.__all__."""

from __future__ import annotations

import inspect

import mlx_local


def test_all_matches_public_names():
    public = {
        name
        for name, value in vars(mlx_local).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
    } | {"__version__"}
    assert sorted(mlx_local.__all__) == sorted(public)


def test_every_public_name_is_documented():
    for name in mlx_local.__all__:
        obj = getattr(mlx_local, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_version():
    from importlib.metadata import version

    assert mlx_local.__version__ == version("mlx-local")
