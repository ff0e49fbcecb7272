"""``mlx-local launch``: start a script on several processes or Macs, through MLX's own ``mlx.launch``.

    mlx-local launch --hosts 10.0.0.1,10.0.0.2 -- python script.py ARGS
    mlx-local launch -n 2 -- script.py            # two ranks on this machine

A thin wrapper: it checks the hosts (each resolved to the IP the ring
backend needs), writes the hostfile ``mlx.launch`` reads (``--save-hostfile``
keeps it), puts this Python in front of a bare ``script.py`` (``mlx.launch``
would try to execute the file itself) and runs ``mlx.launch``. Inside the
script, ``Model.load(..., distributed="tensor")`` loads each rank's shard.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidOptionError

__all__ = ["add_launch_command", "cmd_launch", "hostfile_for", "launch_command"]

BACKENDS = ("ring", "jaccl", "jaccl-ring")


def _ip(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise InvalidOptionError(
            f"--hosts: {host!r} does not resolve to an address ({e}). Give IP addresses "
            "(e.g. the Thunderbolt bridge's 169.254.x.y or the Ethernet 10.0.0.x), or fix the name.",
            option="hosts",
        ) from e


def hostfile_for(hosts: str, repeat: int, backend: str) -> dict[str, Any]:
    """The ``mlx.launch`` hostfile for comma-separated ``hosts``, each repeated ``repeat`` times."""
    names = [h.strip() for h in hosts.split(",")]
    if not names or any(not h for h in names):
        raise InvalidOptionError(f"--hosts {hosts!r}: give comma-separated host names or IPs, none empty.", option="hosts")
    if repeat < 1:
        raise InvalidOptionError(f"-n {repeat}: give a positive number of processes per host.", option="n")
    entries = [{"ssh": h, "ips": [_ip(h)]} for h in names for _ in range(repeat)]
    if len(entries) < 2:
        raise InvalidOptionError(
            "One process is not a distributed launch: give two hosts (--hosts a,b) or -n 2.", option="hosts"
        )
    return {"backend": backend, "envs": [], "hosts": entries}


def _check_hostfile(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidOptionError(f"--hostfile {path}: cannot be read ({e}).", option="hostfile") from e
    except json.JSONDecodeError as e:
        raise InvalidOptionError(f"--hostfile {path}: not valid JSON ({e}).", option="hostfile") from e
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or len(hosts) < 2 or not all(isinstance(h, dict) and h.get("ssh") for h in hosts):
        raise InvalidOptionError(
            f"--hostfile {path}: needs a list of at least two hosts, each {{\"ssh\": NAME, \"ips\": [IP]}} "
            "(or {\"hosts\": [...], \"backend\": ...}).",
            option="hostfile",
        )
    for h in hosts:
        for ip in h.get("ips") or []:
            try:
                ipaddress.ip_address(ip)
            except ValueError as e:
                raise InvalidOptionError(f"--hostfile {path}: {ip!r} of host {h['ssh']!r} is not an IP address.",
                                         option="hostfile") from e  # fmt: skip
    return data if isinstance(data, dict) else {"hosts": hosts}


def launch_command(command: list[str], hostfile: Path, *, backend: str | None, port: int | None,
                   python: str | None, verbose: bool) -> list[str]:
    """The ``mlx.launch`` command line running ``command`` on the hosts of ``hostfile``."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidOptionError(
            "Give the command to run after --, e.g. `mlx-local launch --hosts a,b -- python script.py`.",
            option="command",
        )
    if command[0].endswith(".py"):  # mlx.launch would try to execute the script file itself
        command = [python or sys.executable, *command]
    cmd = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())",
           "--hostfile", str(hostfile)]  # fmt: skip
    if backend:
        cmd += ["--backend", backend]
    if port:
        cmd += ["--starting-port", str(port)]
    if python:
        cmd += ["--python", python]
    if verbose:
        cmd.append("--verbose")
    return [*cmd, "--", *command]


def cmd_launch(args: argparse.Namespace, out: Any) -> int:
    """Write the hostfile and run ``mlx.launch``; its exit status."""
    if args.hostfile:
        data = _check_hostfile(Path(args.hostfile))
        backend = args.backend or data.get("backend") or None
        hostfile = Path(args.hostfile)
    else:
        data = hostfile_for(args.hosts, args.n, args.backend or "ring")
        backend = data["backend"]
        if args.save_hostfile:
            hostfile = Path(args.save_hostfile)
            from ._fileio import write_text_atomic

            write_text_atomic(hostfile, json.dumps(data, indent=2) + "\n")
        else:
            tmp = tempfile.NamedTemporaryFile("w", prefix="mlx-local-hosts-", suffix=".json", delete=False)
            with tmp:
                json.dump(data, tmp)
            hostfile = Path(tmp.name)
    cmd = launch_command(list(args.command), hostfile, backend=backend, port=args.port, python=args.python,
                         verbose=args.debug)  # fmt: skip
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.hostfile and not args.save_hostfile:
            hostfile.unlink(missing_ok=True)


def add_launch_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``launch`` with the CLI's ``add(name, help, func, description)``."""
    p = add("launch", "run a script on several processes or Macs (mlx.launch)", cmd_launch,
            "Run COMMAND once per rank through mlx.launch, for Model.load(..., distributed='tensor'|'pipeline'). "
            "Example: mlx-local launch --hosts 10.0.0.1,10.0.0.2 -- python script.py")  # fmt: skip
    p.add_argument("--hosts", default="127.0.0.1", help="comma-separated hosts or IPs (default: this machine)")
    p.add_argument("-n", type=int, default=1, help="processes per host (default 1; -n 2 alone: two on this machine)")
    p.add_argument("--hostfile", help="an mlx.launch hostfile to use as-is (instead of --hosts)")
    p.add_argument("--save-hostfile", metavar="FILE", help="write the hostfile here and keep it")
    p.add_argument("--backend", choices=BACKENDS, help="ring (TCP: Ethernet, Wi-Fi, Thunderbolt bridge; default) or jaccl (RDMA over Thunderbolt 5)")
    p.add_argument("--port", type=int, help="first port of the ring (default 32323)")
    p.add_argument("--python", help="the Python to run on the remote hosts (default: the same path as here)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- python script.py")
