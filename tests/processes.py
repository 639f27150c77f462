"""Process-tree helpers the server tests share: who a command started, who is still alive, which TCP ports they
listen on (read from /proc, so a test sees every process, in every session and group)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (ppid, pgid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table, found, frontier = proc_table(), set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """The processes of ``pids`` still running (zombies are not)."""
    table = proc_table()
    return {p for p in pids if p in table and table[p][2] != "Z"}


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of process group ``pgid`` is running."""
    return any(g == pgid and state != "Z" for _, g, state in proc_table().values())


def tcp_listeners(pids: set[int]) -> list[str]:
    """``ADDR:PORT`` (hex, as in /proc/net/tcp) of every listening TCP socket that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if (target := os.readlink(fd)).startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                f = row.split()
                if f[3] == "0A" and f[9] in inodes:
                    found.append(f[1])
    return found


def listening_ports(pids: set[int]) -> set[int]:
    return {int(address.rsplit(":", 1)[1], 16) for address in tcp_listeners(pids)}


def front_door_port(pids: set[int]) -> int | None:
    """The port of dermvlm's front door among ``pids`` (the process running ``dermvlm.serving.proxy``, not the
    lifeline in front of it), or None while it is not listening yet."""
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[1:3] == [b"-m", b"dermvlm.serving.proxy"]:
                return next(iter(listening_ports({pid})), None)
    return None
