"""Children die with their parent, whatever kills it: SIGKILL (an OOM kill, `docker kill`, a lost terminal) to each
command that starts a vLLM server — `serve`, `chat --serve`, `eval --serve` and the pipeline's evaluation server —
leaves, within 30 s, no process of the server behind and its port free. One kill per command family, each once the
server answers /health (the case where an orphan would go on answering, without a key for `chat --serve`). The
mechanism, ``dermvlm.lifeline``, is also checked on its own for a child run to completion (the DPO sampler's)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from processes import alive, descendants, front_door_port, listening_ports

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "dermvlm.cli"]
PARENT = """
import signal, subprocess, sys
from dermvlm import lifeline
signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))  # as the CLI does
tree = "import subprocess, time; subprocess.Popen(['sleep', '300']); print('up', flush=True); time.sleep(300)"
try:
    lifeline.run([sys.executable, "-c", tree])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_child_run_under_a_lifeline_ends_with_its_parent(sig, tmp_path):
    """``lifeline.run`` (the DPO sampler's vLLM engine runs this way): the child and the process it started end
    within seconds of the parent's death by SIGKILL, and of its interruption by SIGTERM (which it survives)."""
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(descendants(proc.pid)) < 3:  # the lifeline, the child and its sleep
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    family = descendants(proc.pid)
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0]
    killed = time.monotonic()
    while alive(family) and time.monotonic() - killed < 30:
        time.sleep(0.1)
    assert not alive(family), family
    assert ("interrupted" in out) == (sig == signal.SIGTERM)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (closed connections in TIME_WAIT do not hold it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kill9_leaves_nothing(cmd: list[str], tmp_path: Path, startup: float = 600) -> dict[str, float]:
    """Run ``cmd`` until the server it started answers /health, SIGKILL the command alone, and check that within
    30 s no process it started is left and the server's port (and any port of the command itself) is free."""
    log = (tmp_path / "cmd.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    family: set[int] = set()
    started = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "cmd.log").read_text()[-3000:]
            assert time.monotonic() - started < startup, "no server answered /health"
            port = front_door_port(descendants(proc.pid))
            if port is not None and _healthy(port):
                break
            time.sleep(0.5)
        family = descendants(proc.pid)  # lifelines, the front door, vLLM and its engine process
        ports = {port} | listening_ports({proc.pid})
        assert len(family) >= 4, family
        ready_s = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while (alive(family) or not all(_port_free(p) for p in ports)) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        left = alive(family)
        assert not left, {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left}
        assert all(_port_free(p) for p in ports), ports
        return {"ready_s": ready_s, "gone_s": time.monotonic() - killed}
    finally:
        proc.kill()
        for p in alive(family):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        log.close()


@pytest.mark.vllm
def test_kill9_of_serve_leaves_nothing(trained_run, tmp_path):
    t = kill9_leaves_nothing([*CLI, "serve", str(trained_run["merged"]), "--port", "0", "--dtype", "float32",
                              "--log-file", str(tmp_path / "serve.log")], tmp_path)
    print(f"serve: ready in {t['ready_s']:.0f} s, everything gone {t['gone_s']:.1f} s after SIGKILL")


@pytest.mark.vllm
def test_kill9_of_chat_serve_leaves_nothing(trained_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        page = s.getsockname()[1]
    t = kill9_leaves_nothing([*CLI, "chat", "--serve", str(trained_run["merged"]), "--port", str(page),
                              "--max-model-len", "1024"], tmp_path)
    assert _port_free(page)
    print(f"chat --serve: ready in {t['ready_s']:.0f} s, everything gone {t['gone_s']:.1f} s after SIGKILL")


@pytest.mark.vllm
def test_kill9_of_eval_serve_leaves_nothing(trained_run, tmp_path):
    t = kill9_leaves_nothing([*CLI, "eval", str(ROOT / "eval" / "sample.yaml"), "--serve", str(trained_run["merged"]),
                              "--dtype", "float32", "--out", str(tmp_path / "out"), "--concurrency", "1"], tmp_path)
    print(f"eval --serve: ready in {t['ready_s']:.0f} s, everything gone {t['gone_s']:.1f} s after SIGKILL")


@pytest.mark.vllm
def test_kill9_of_the_pipelines_evaluation_server_leaves_nothing(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "runs"), evaluate=[str(ROOT / "eval" / "sample.yaml")],
               stages=[{"name": "sft", "kind": "sft", "use_lora": False, "data": ["open_diagnosis"],
                        "trl": {"max_steps": 1}}])
    cfg["data"]["recipe"] = str(ROOT / "data_recipes" / "sample.yaml")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t = kill9_leaves_nothing([*CLI, "pipeline", str(path)], tmp_path)
    print(f"pipeline: its evaluation server ready after {t['ready_s']:.0f} s, everything gone {t['gone_s']:.1f} s "
          "after SIGKILL")
