"""``mlx-local serve``: the OpenAI-compatible HTTP server (see :mod:`mlx_local._serve_app`).

    mlx-local serve [-m MODEL] [--host 127.0.0.1] [--port 8080] [--api-key KEY]
                    [--max-concurrency N] [--keep-alive 5m] [--cors-origin URL] ...

The server needs the ``server`` extra (``pip install "mlx-local[server]"``:
FastAPI and uvicorn); without it the command says so and exits 1. Options are
checked before the model loads.
"""

from __future__ import annotations

import argparse
import os

from ._cli_output import Output, load_model
from .errors import InvalidOptionError

__all__ = ["cmd_serve", "serve_args"]


def serve_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``mlx-local serve``."""
    p.add_argument("-m", "--model", default=os.environ.get("MLX_LOCAL_MODEL") or None,
                   help="the model served from the start, also as 'default' (default: $MLX_LOCAL_MODEL, "
                        "else the embedded SmolLM2-135M-Instruct)")  # fmt: skip
    p.add_argument("--original", action="store_true", help="for a catalog name: the original repo, not MLX 4-bit")
    p.add_argument("--force", action="store_true", help="load -m even if it seems not to fit in memory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=os.environ.get("MLX_LOCAL_API_KEY") or None,
                   help="clients must send 'Authorization: Bearer KEY' (default: $MLX_LOCAL_API_KEY, else none)")  # fmt: skip
    p.add_argument("--max-concurrency", type=int, help="most requests a model generates for at once")
    p.add_argument("--max-queue", type=int, default=64, help="most requests waiting or running per model (429 beyond)")
    p.add_argument("--keep-alive", default="5m", help="how long an on-demand model stays loaded once idle (-1: for ever)")
    p.add_argument("--max-tokens", type=int, default=4096, help="the most tokens one request may generate")
    p.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="let browser pages from this origin call the server (repeatable; default: none)")  # fmt: skip
    p.add_argument("--no-load", action="store_true", help="serve -m only: never load another model a request names")
    p.add_argument("--distributed", choices=["tensor", "pipeline"],
                   help="under mlx.launch / mlx-local launch: one model over the ranks; rank 0 serves HTTP")
    p.add_argument("--allow-download", action="store_true", help="requests may name models not on disk (downloaded)")


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ._serve import INSTALL_HINT, _app_module

    try:
        serve = _app_module().serve
    except ImportError:
        out.err.print(f"error: {INSTALL_HINT}", markup=False, style="red")
        return 1
    from ._serve_models import parse_keep_alive

    if not 0 <= args.port <= 65535:
        raise InvalidOptionError(f"--port {args.port}: give a port number from 0 to 65535.", option="port")
    try:
        parse_keep_alive(args.keep_alive)
    except InvalidOptionError:
        raise InvalidOptionError(f"--keep-alive {args.keep_alive}: give a duration such as 30s, 5m or 1h (-1: for ever).",
                                 option="keep_alive") from None  # fmt: skip
    for flag, value in (("--max-concurrency", args.max_concurrency), ("--max-queue", args.max_queue),
                        ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise InvalidOptionError(f"{flag} {value}: give a whole number, 1 or more.", option=flag[2:].replace("-", "_"))
    options = {"max_concurrency": args.max_concurrency, "max_queue": args.max_queue, "keep_alive": args.keep_alive,
               "max_tokens": args.max_tokens, "cors_origins": args.cors_origin, "allow_load": not args.no_load,
               "allow_download": args.allow_download, "source": args.model}  # fmt: skip
    model = load_model(args, out)
    placement = getattr(model, "distributed", None)
    if placement is not None and placement.rank != 0:
        serve(model)  # a follower: runs rank 0's generations until it stops
        return 0
    out.note(f"serving {model.name} (also as 'default') at http://{args.host}:{args.port}/v1")
    serve(model, host=args.host, port=args.port, api_key=args.api_key, log_level="warning" if args.quiet else "info",
          **options)  # fmt: skip
    return 0
