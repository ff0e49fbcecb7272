"""The library's advice, said in the command line's words.

mlx_local's errors speak to Python callers (``pass overwrite=True``,
``mlx_local.pull('x')``, ``max_tokens=0: ...``). The ``mlx-local`` command
prints the same messages with its own flags and commands instead
(``pass --overwrite``, ``mlx-local pull x``, ``--max-tokens 0: ...``); the
library's messages stay as they are.
"""

from __future__ import annotations

import re

__all__ = ["FLAGS", "for_the_command_line"]

#: Library argument -> the flag that sets it.
FLAGS = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
    "thinking_budget": "--budget",
    "context": "--context",
    "bits": "--bits",
    "group_size": "--group-size",
    "recipe": "--recipe",
    "dtype": "--dtype",
    "max_kl": "--max-kl",
}

QUOTES = "'\""
_VALUE = r"('[^']*'|\"[^\"]*\"|[-+\w]+(?:\.\w+)*)"

#: Whole phrases first (they contain the argument names the generic rules below would change).
_PHRASES: list[tuple[str, str]] = [
    (r"`mlx_local\.pull\('([^']*)'\)`", r"`mlx-local pull \1`"),
    (r"`mlx_local\.models\(\)`", "`mlx-local models`"),
    (r"`python -m mlx_local assets fetch", "`mlx-local assets fetch"),
    (r"\bor None to keep the weights unquantized", "or 0 to keep the weights unquantized"),
    (r"\bbits cannot be None\b", "--bits cannot be 0"),
    (r"\(or None for uniform quantization\)", "(or no --recipe for uniform quantization)"),
    (r"\bUse thinking=None or False\b", "Use --think off (or no --think)"),
    (r"\bor None for no limit\b", "or no --budget for no limit"),
    (r"\bquantized=False\b", "--original"),
    (r"\bquality=False\b", "--no-quality"),
    (r"\boffline=True\b", "--offline"),
    (r"\bforce=True\b", "--force"),
    (r"\boverwrite=True\b", "--overwrite"),
    (r"\bleave bits and group_size at their defaults\b", "leave --bits and --group-size at their defaults"),
    (r"\bleave bits at its default\b", "leave --bits at its default"),
]


def for_the_command_line(message: str, command: str | None = None) -> str:
    """``message`` with Python advice replaced by the command line's.

    ``command`` (``"chat"``, ``"generate"``, ...) is the command that failed:
    a suggestion to load another model becomes ``mlx-local COMMAND -m NAME``.
    """
    if command == "pull":  # "download it with pull" says nothing to someone who just ran pull
        message = re.sub(r"Download it once while online \(`mlx_local\.pull\('[^']*'\)` or (`hf download [^`]*`)\)",
                         r"Try again once online (or with \1)", message)  # fmt: skip
    uses_model = command in ("chat", "generate", "bench")
    load = rf"`mlx-local {command} -m \1`" if uses_model else r"`-m \1`"
    message = re.sub(r"`(?:mlx_local\.)?Model\.load\('([^']*)'\)`", load, message)
    for pattern, replacement in _PHRASES:
        message = re.sub(pattern, replacement, message)
    for name, flag in FLAGS.items():

        def as_flag(m: re.Match[str], flag: str = flag) -> str:  # max_tokens=0 -> --max-tokens 0
            return f"{flag} {m.group(1).strip(QUOTES)}"

        message = re.sub(rf"(?<![\w-]){name}={_VALUE}", as_flag, message)
        if "_" in name:  # an argument named alone ("max_kl is the quality target"); plain words stay words
            message = re.sub(rf"(?<![\w-]){name}\b", flag, message)
    return message
