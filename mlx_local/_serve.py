"""The server's public entry points, importable without the ``server`` extra (FastAPI and uvicorn load on use).

``import mlx_local`` must not import FastAPI: these two functions import
:mod:`mlx_local._serve_app` only when called, and without the extra they
raise an ``ImportError`` that says what to install.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model import Model

__all__ = ["create_app", "serve"]

INSTALL_HINT = 'The server needs FastAPI and uvicorn: pip install "mlx-local[server]"'


def _app_module() -> ModuleType:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e}).") from None
    from . import _serve_app

    return _serve_app


def create_app(model: Model | str | None = None, **options: Any) -> Any:
    """An ASGI app (FastAPI) answering OpenAI's API with ``model``: run it with uvicorn, or mount it in another app.

    ``model``: a loaded :class:`~mlx_local.Model`, a source for
    :meth:`Model.load <mlx_local.Model.load>`, or None (the embedded default);
    loaded now. ``options``: ``api_key``, ``cors_origins``,
    ``max_concurrency``, ``max_queue`` (64), ``keep_alive`` (``"5m"``),
    ``max_body_bytes`` (4 MiB), ``max_tokens`` (4096), ``allow_load``
    (True), ``allow_download`` (False); see ``mlx_local._serve_app.create_app``.

    >>> app = mlx_local.create_app("qwen3-0.6b", api_key="secret")  # doctest: +SKIP
    >>> uvicorn.run(app, port=8080)                                 # doctest: +SKIP
    """
    return _app_module().create_app(model, **options)


def serve(model: Model | str | None = None, **options: Any) -> None:
    """Serve ``model`` over OpenAI's HTTP API until interrupted; 127.0.0.1:8080 unless ``host`` / ``port`` say otherwise.

    ``options``: ``host``, ``port``, ``api_key``, ``log_level`` and
    :func:`create_app`'s. Any address other than loopback logs a warning.

    >>> mlx_local.serve("qwen3-0.6b", port=8080)  # doctest: +SKIP
    """
    _app_module().serve(model, **options)
