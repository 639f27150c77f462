"""Atomic writes and the one output rule: a file or folder appears complete at its path, or not at all, and a
command replaces only a folder that dermvlm itself wrote (it carries a marker file naming the command)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".dermvlm-output.json"


class OutputError(ValueError):
    """An output folder that a command must not write into or replace; ``str()`` is the message for the user."""


def written_by(path: str | Path) -> str | None:
    """The dermvlm command that wrote the folder ``path`` (from its marker), or None."""
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def check_output(path: str | Path, command: str, force: bool = False, option: str = "--out",
                 inputs: Iterable[str | Path] = (), own_files: Iterable[str] = ()) -> Path:
    """Refuse an output folder that ``command`` may not replace: the working folder or one above it, a file, one
    of the command's ``inputs`` (or a folder inside or around one), or a non-empty folder that no dermvlm command
    wrote (``force`` lifts the last rule; a folder holding one of ``own_files`` counts as the command's, for
    folders written before the marker existed). Returns the path."""
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise OutputError(f"{option} {path}: that is the working folder or one above it; give a new folder "
                          f"(e.g. {option} runs/{command.split()[-1]})")
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise OutputError(f"{option} {path}: that is (or holds, or is inside) the input {source}; writing "
                              "there would replace what is being read: give a new folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is a file, not a folder; give a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        if any((path / name).exists() for name in own_files):
            return path
        owner = written_by(path)
        if owner is None:
            raise OutputError(f"{option} {path}: the folder exists and was not written by dermvlm (no {MARKER}); "
                              f"choose another {option}, empty it, or pass --force to replace it")
        if owner != command:
            raise OutputError(f"{option} {path}: the folder holds the output of `dermvlm {owner}`, not of "
                              f"`dermvlm {command}`; choose another {option} or pass --force to replace it")
    return path


def check_output_file(path: str | Path, force: bool = False, option: str = "--out", example: str = "graph.json",
                      inputs: dict[str, str | Path] | None = None) -> Path:
    """Refuse an output file that is, or lies inside, one of the command's ``inputs`` (keyed by what they are;
    ``force`` never lifts this), that exists (``force`` replaces it) or is a folder (``example``: a file name to
    suggest). Returns the path."""
    path = Path(path)
    for what, source in (inputs or {}).items():
        source = Path(source).resolve()
        if path.resolve() == source or source in path.resolve().parents:
            raise OutputError(f"{option} {path}: that is {what} ({source}), which this command reads; give a new "
                              f"file name (e.g. {option} {example})")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name (e.g. {path / example})")
    if path.exists() and not force:
        raise OutputError(f"{option} {path}: the file exists; choose another name or pass --force to replace it")
    return path


def mark_output(folder: str | Path, command: str) -> None:
    """Write the marker that says ``command`` wrote ``folder``."""
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": command}) + "\n")


def claim(folder: str | Path, command: str) -> None:
    """Mark ``folder`` (which ``command`` writes into) as ``command``'s, unless a dermvlm command already did."""
    if written_by(folder) is None:
        mark_output(folder, command)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True, command: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on error it is removed. With
    ``command``, the folder carries the marker that lets that command replace it later."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise OutputError(f"{path}: not a folder name that can be written atomically; give a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700: the result gets the modes a plain mkdir would give
    try:
        yield tmp
        if command:
            mark_output(tmp, command)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: the file gets the modes a plain open would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
