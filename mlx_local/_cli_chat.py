"""``mlx-local chat``: the interactive chat, with slash commands and line editing."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlx_local
from mlx_local.errors import MLXLocalError

from ._cli_advice import for_the_command_line
from ._cli_output import Output, check_options, generation_options, load_model, thinking_mode

__all__ = ["CHAT_HELP", "cmd_chat"]


CHAT_HELP = """\
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _say_budget(chat: mlx_local.Chat, out: Output) -> None:
    budget = chat.thinking_budget
    out.err.print(f"thinking budget: {'none' if budget is None else _count(budget, 'token')}", markup=False)


def _chat_command(line: str, chat: mlx_local.Chat, out: Output, state: dict[str, Any]) -> bool:
    """Run a slash command; False means leave."""
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/help":
        out.err.print(CHAT_HELP, markup=False)
    elif name in ("/think", "/no_think"):
        wanted = name == "/think"
        if wanted and chat.support == "none":
            out.err.print(f"{chat.model.name} cannot think; /think has no effect.", markup=False, style="yellow")
        else:
            chat.thinking = wanted
            out.err.print(f"thinking {'on' if wanted else 'off'}", markup=False)
    elif name == "/budget":
        if chat.support == "none":
            out.err.print(f"{chat.model.name} cannot think; /budget has no effect.", markup=False, style="yellow")
        elif rest in ("off", "none", ""):
            chat.thinking_budget = None
            _say_budget(chat, out)
        elif rest.isdigit():
            chat.thinking_budget = int(rest)
            _say_budget(chat, out)
        else:
            out.err.print("usage: /budget N  or  /budget off", markup=False, style="yellow")
    elif name == "/system":
        chat.system = rest or None
        out.err.print(f"system prompt {'set' if rest else 'cleared'}", markup=False)
    elif name == "/reset":
        chat.reset()
        out.err.print("conversation cleared", markup=False)
    elif name == "/undo":
        # The question says which exchange went; the answer may be long, or empty (a thinking-only reply).
        question = next((m["content"] for m in reversed(chat.messages) if m.get("role") == "user"), None)
        try:
            chat.undo()
            out.err.print(f"dropped your question {_clip(str(question))!r} and its answer", markup=False)
        except MLXLocalError as e:
            out.err.print(for_the_command_line(str(e), "chat"), markup=False, style="yellow")
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
                out.err.print(f"loaded {rest}: {_count(len(state['chat'].replies), 'exchange')}", markup=False)
            except (MLXLocalError, OSError) as e:
                out.err.print(for_the_command_line(str(e), "chat"), markup=False, style="yellow")
    elif name == "/stats":
        replies = chat.replies
        out.err.print(str(replies[-1].stats) if replies else "no answer yet", markup=False)
    else:
        out.err.print(f"unknown command {name}; /help lists them", markup=False, style="yellow")
    return True


def cmd_chat(args: argparse.Namespace, out: Output) -> int:
    check_options(args)  # before the model loads, not seconds after
    model = load_model(args, out)
    state: dict[str, Any] = {
        "chat": model.chat(system=args.system, thinking=thinking_mode(args), thinking_budget=args.budget, **generation_options(args))
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
                    out.err.print(for_the_command_line(str(e), "chat"), markup=False, style="yellow")
                continue
            _answer(state["chat"], line, args, out)


def _answer(chat: mlx_local.Chat, line: str, args: argparse.Namespace, out: Output) -> None:
    text = out.wrapped(out.out)
    thinking_open = False
    try:
        with out.spinner() as spinner:
            for chunk in chat.stream(line):
                spinner.stop()
                if chunk.kind == "thinking":
                    if not args.hide_thinking:
                        text.feed(chunk.text, "dim")
                        thinking_open = True
                    continue
                if thinking_open:  # a blank line between the thinking and the answer
                    text.end_line()
                    text.feed("\n")
                    thinking_open = False
                text.feed(chunk.text)
        text.end_line()
    except KeyboardInterrupt:
        text.end_line()
        out.err.print("[stopped; that answer was not kept]", markup=False, style="yellow")
    except MLXLocalError as e:
        text.end_line()
        out.err.print(for_the_command_line(str(e), "chat"), markup=False, style="yellow")

