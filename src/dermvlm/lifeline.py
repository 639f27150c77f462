"""Children that die with their parent, whatever kills it: ``python -m dermvlm.lifeline PARENT_PID -- CMD ...``.

A child process (vLLM, the front door) outlives a parent killed with SIGKILL (an OOM kill, ``docker kill``, a lost
terminal): it keeps its port, its memory and, for a server started without a key, answers anyone. ``wrap(cmd)``
puts this small supervisor in front of a command (``VLLMServer``'s vLLM and front door; ``run(cmd)`` for a child
that runs to completion, such as the DPO sampler's vLLM engine): it runs ``CMD`` in its own process group (the group
``start_new_session`` gave it) and watches the parent's pid. When the parent is gone (``os.getppid()`` changes;
this works for the death of any thread of the parent, unlike ``PR_SET_PDEATHSIG``), or when the supervisor gets
SIGTERM / SIGINT / SIGHUP, the command gets SIGTERM, ``GRACE_S`` seconds to stop and its whole group (vLLM's engine
processes included) SIGKILL. The supervisor exits with the command's status (128 + N for a signal N).

Only the standard library is imported here, so the supervisor costs a few MB and starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

GRACE_S = 20.0  # after SIGTERM, before SIGKILL; VLLMServer.stop waits longer, so a clean stop stays clean
POLL_S = 0.25


def wrap(cmd: list[str], parent: int | None = None) -> list[str]:
    """``cmd`` under a supervisor that ends it when ``parent`` (default: this process) dies."""
    return [sys.executable, "-m", "dermvlm.lifeline", str(parent or os.getpid()), "--", *cmd]


def run(cmd: list[str], **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` for a child that must not outlive this process: it runs under a lifeline in a
    process group of its own; if this process is interrupted (Ctrl-C, SIGTERM turned into ``KeyboardInterrupt``)
    the lifeline is asked to stop it (SIGTERM, then SIGKILL to the group), and if this process is killed outright
    the lifeline does the same on its own."""
    proc = subprocess.Popen(wrap(cmd), start_new_session=True, **popen_kwargs)
    try:
        return subprocess.CompletedProcess(proc.args, proc.wait())
    except BaseException:
        stop_group(proc)
        raise


def stop_group(proc: subprocess.Popen, timeout: float = GRACE_S + 10) -> None:
    """Stop a child started under a lifeline (in its own session): SIGTERM to the lifeline, which stops the command;
    whatever of its group is still there after ``timeout`` gets SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stop(child: subprocess.Popen) -> int:
    """SIGTERM to the command, SIGKILL to the group after ``GRACE_S``; the command's status."""
    if child.poll() is None:
        child.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(GRACE_S)
    _leave_nothing_behind()
    return child.wait()


def _leave_nothing_behind() -> None:
    """SIGKILL whatever else is left in the group (the command's own children)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    others = [pid for pid in _group_members() if pid != os.getpid()]
    for pid in others:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _group_members() -> list[int]:
    group = os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m dermvlm.lifeline PARENT_PID -- CMD ...", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[2:]
    stop_requested: list[int] = []

    def on_signal(signum, _frame) -> None:
        stop_requested.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if os.getppid() != parent:  # the parent died before we started
        return 128 + signal.SIGTERM
    child = subprocess.Popen(cmd, close_fds=False)  # the inherited descriptors (a listening socket) go on
    os.closerange(3, 1024)  # ... and only the command holds them: a port is free once the command is gone
    while child.poll() is None:
        if stop_requested or os.getppid() != parent:
            return _status(_stop(child))
        time.sleep(POLL_S)
    _leave_nothing_behind()  # the command is gone: so are the processes it started
    return _status(child.returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
