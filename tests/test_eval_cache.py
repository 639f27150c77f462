"""`dermvlm eval` against a tiny local OpenAI-compatible endpoint that misbehaves on demand: the prediction cache is
keyed by what produced it, request errors are never stored as answers, bounds are checked, a signal stops the run
cleanly, and every expected failure is one line on stderr with a non-zero exit (no vLLM here; see
test_eval_server.py for the same against a real server)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import SuiteConfig, load_config
from dermvlm.evaluation import cache
from dermvlm.evaluation.items import build_items
from dermvlm.evaluation.runner import EndpointError, EndpointOptions
from dermvlm.evaluation.suite import run_suite
from dermvlm.recipes.text import SYSTEM_PROMPT
from dermvlm.serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "eval" / "sample.yaml"
N = 24  # items of eval/sample.yaml (12 test images, mcq and open)


class Fake:
    """A tiny OpenAI-compatible endpoint on 127.0.0.1 whose behaviour each test sets."""

    def __init__(self) -> None:
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def send(self, status: int, body, kind: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that was interrupted
                    self.wfile.write(data)

            def authorized(self) -> bool:
                if fake.api_key and self.headers.get("authorization") != f"Bearer {fake.api_key}":
                    self.send(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self) -> None:
                if fake.html:
                    return self.send(200, b"<html>a web page</html>", "text/html")
                if self.path != "/v1/models":
                    return self.send(404, {"detail": "Not Found"})
                if self.authorized():
                    self.send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "root": f"/models/{m}", "max_model_len": 1024}
                        for m in fake.models]})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if fake.html:
                    return self.send(200, b"<html>a web page</html>", "text/html")
                if self.path != "/v1/chat/completions":
                    return self.send(404, {"detail": "Not Found"})
                if not self.authorized():
                    return None
                req = json.loads(raw)
                with fake.lock:
                    fake.requests.append(req)
                if fake.chat_status:
                    return self.send(fake.chat_status, {"error": {"message": "nope", "code": fake.chat_status}})
                if req["model"] not in fake.models:
                    return self.send(404, {"error": {"message": f"The model `{req['model']}` does not exist.",
                                                     "type": "NotFoundError", "code": 404}})
                if any(b in raw for b in fake.bad):
                    return self.send(400, {"error": {"message": "cannot identify image file", "code": 400}})
                if fake.fail_all or any(b in raw for b in fake.flaky):
                    return self.send(500, {"error": {"message": "engine error", "code": 500}})
                if any(b in raw for b in fake.abort):  # as vLLM answers a request in flight when it shuts down
                    return self.send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                           "model": req["model"], "choices": [{
                                               "index": 0, "finish_reason": "abort",
                                               "message": {"role": "assistant", "content": "<think>Here: a"}}]})
                time.sleep(fake.delay)
                system = req["messages"][0]["content"] if req["messages"][0]["role"] == "system" else None
                text = (f"<think>seen</think><answer>{req['model']}|t={req['temperature']}|"
                        f"sys={'none' if system is None else len(system)}</answer>")
                self.send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.models, self.api_key, self.html, self.chat_status = ["derm", "other"], None, False, 0
        self.bad: list[bytes] = []
        self.flaky: list[bytes] = []
        self.abort: list[bytes] = []
        self.fail_all, self.delay, self.requests, self.lock = False, 0.0, [], threading.Lock()


@pytest.fixture(scope="module")
def fake():
    f = Fake()
    yield f
    f.httpd.shutdown()


@pytest.fixture
def ep(fake):
    fake.reset()
    return fake


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return build_items(load_config(SUITE, SuiteConfig), tmp_path_factory.mktemp("items"), None, SUITE.parent)


def cli(*args: str):
    return CliRunner().invoke(app, ["eval", str(SUITE), *args])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def one_error_line(r) -> str:
    """The command failed with exactly one line on stderr, an ``error:`` line, and no traceback."""
    assert r.exit_code != 0, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    return err[0]


def image_marker(item: dict) -> bytes:
    """A piece of an item's image as it appears, base64-encoded, in the request body."""
    from dermvlm.evaluation.runner import image_url

    return image_url(item["image"]).encode()[-80:-20]


# ---------------------------------------------------------------- 1. the cache key


def test_cache_key_fields_fingerprint_and_wording(tmp_path, items):
    suite = load_config(SUITE, SuiteConfig)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"x" * 10)
    (model / "README.md").write_text("card")
    fp = cache.folder_fingerprint(model)
    (model / "README.md").write_text("card, rewritten")  # not part of the model
    assert cache.folder_fingerprint(model) == fp
    (model / "config.json").write_text('{"a": 2}')
    assert cache.folder_fingerprint(model) != fp
    fp2 = cache.folder_fingerprint(model)
    (model / "model.safetensors").write_bytes(b"y" * 11)
    assert cache.folder_fingerprint(model) != fp2
    assert cache.folder_fingerprint(tmp_path) is None  # not a model folder

    def key(**kw):
        args = {"model": "derm", "model_id": {"id": "derm", "root": str(model)}, "endpoint": "http://127.0.0.1:8123/v1",
                "suite": suite, "system_prompt": None, "items": items, "weights_dir": model} | kw
        return cache.make_key(**args)

    k = key()
    assert set(k) == {"version", "model", "model_id", "weights", "endpoint", "serve", "sampling", "system_prompt",
                      "items"}
    assert k["endpoint"] == "http://127.0.0.1:*/v1"  # a local server's port changes at every start
    assert key(endpoint="http://127.0.0.1:9999/v1") == k
    assert key(endpoint="http://10.0.0.1:8123/v1", weights_dir=None)["endpoint"] == "http://10.0.0.1:8123/v1"
    assert k["items"]["n"] == N and key(items=items[:5])["items"] != k["items"]
    assert k["sampling"] == {"temperature": 0.0, "max_tokens": 320, "seed": 0, "guided_format": False,
                             "format_regex": None}
    hot = key(suite=suite.model_copy(update={"temperature": 0.7}), model="other", system_prompt=SYSTEM_PROMPT)
    assert cache.differences(k, hot) == ["model 'derm' → 'other'", "system prompt differs", "temperature 0.0 → 0.7"]


def test_other_model_or_settings_are_refused_and_fresh_starts_over(ep, tmp_path):
    out = tmp_path / "out"
    base = ["--endpoint", ep.url, "--out", str(out)]
    r = cli(*base, "--model", "derm", "--limit", "5")
    assert r.exit_code == 0, r.output
    r = cli(*base, "--model", "derm")  # a larger --limit continues a smaller one
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["asked"] == N - 5 and metrics["run"]["skipped_as_done"] == 5
    before = (out / "predictions.jsonl").read_text()
    (out / "notes.txt").write_text("mine")  # not written by eval: --fresh must keep it

    msg = one_error_line(cli(*base, "--model", "other"))
    assert "model 'derm' → 'other'" in msg and "--fresh" in msg
    assert "system prompt differs" in one_error_line(cli(*base, "--model", "derm", "--system-prompt", "dermiq"))
    hot = tmp_path / "sample.yaml"
    hot.write_text(yaml.safe_dump(yaml.safe_load(SUITE.read_text()) | {"temperature": 0.7, "max_tokens": 64}))
    r = CliRunner().invoke(app, ["eval", str(hot), *base, "--model", "derm"])
    assert "temperature 0.0 → 0.7" in one_error_line(r) and "max_tokens 320 → 64" in r.stderr
    assert (out / "predictions.jsonl").read_text() == before  # nothing was mixed in

    ep.requests.clear()
    r = cli(*base, "--model", "other", "--system-prompt", "dermiq", "--fresh")
    assert r.exit_code == 0, r.output
    assert len(ep.requests) == N and (out / "notes.txt").read_text() == "mine"
    preds = lines(out / "predictions.jsonl")
    assert len(preds) == N and all(p["response"].startswith(f"<think>seen</think><answer>other|t=0.0|sys="
                                                            f"{len(SYSTEM_PROMPT)}") for p in preds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "other" and metrics["run"]["asked"] == N
    settings = metrics["settings"]
    assert settings["model"] == "other" and settings["system_prompt"] == SYSTEM_PROMPT
    assert settings["model_id"] == {"id": "other", "root": "/models/other", "parent": None, "max_model_len": 1024}
    assert settings["endpoint"] == ep.url and settings["sampling"]["temperature"] == 0.0
    assert metrics["suite_config"]["system_prompt"] == "dermiq"  # the prompt actually sent, not the suite's null
    assert json.loads((out / "cache_key.json").read_text()) == settings
    report = (out / "report.md").read_text()
    assert report.startswith("# sample: other") and "model `other`" in report and "temperature 0.0" in report


def test_answers_without_a_cache_key_are_not_reused(ep, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"id": "x", "response": ""}) + "\n")  # an older dermvlm's
    msg = one_error_line(cli("--endpoint", ep.url, "--model", "derm", "--out", str(out)))
    assert "no readable cache_key.json" in msg and "--fresh" in msg


# ---------------------------------------------------------------- 2. request errors are not answers


@pytest.mark.parametrize("case", ["key", "model", "no_v1", "refused", "html"])
def test_wrong_key_model_or_url_stops_before_any_answer(ep, tmp_path, case):
    ep.api_key = "right"
    url, model, key = ep.url, "derm", "right"
    if case == "key":
        key = "wrong"
    elif case == "model":
        model = "dermm"
    elif case == "no_v1":
        url = ep.url.removesuffix("/v1")
    elif case == "refused":
        url = f"http://127.0.0.1:{free_port()}/v1"
    else:
        ep.html = True
    out = tmp_path / "out"
    args = ["--endpoint", url, "--model", model, "--out", str(out)]
    msg = one_error_line(cli(*args, "--api-key", key))
    expected = {"key": f"error: {ep.url}: 401 Unauthorized: wrong or missing --api-key",
                "model": f"error: {ep.url}: model 'dermm' is not served there (it serves 'derm', 'other'): "
                         "check --model",
                "no_v1": f"error: {url}: 404 Not Found on GET /models: not an OpenAI-compatible API base URL "
                         "(it usually ends in /v1)",
                "refused": f"error: {url}: connection refused: no server answers there",
                "html": f"error: {ep.url}: GET /models did not answer a model list (text/html): not an "
                        "OpenAI-compatible API base URL"}[case]
    assert msg.startswith(expected), msg
    assert not lines(out / "predictions.jsonl") and not ep.requests  # stopped before the first chat request
    if case == "key":  # the fixed key asks everything: nothing was cached from the failed run
        r = cli(*args, "--api-key", "right")
        assert r.exit_code == 0, r.output
        assert json.loads((out / "metrics.json").read_text())["run"]["asked"] == N and len(ep.requests) == N


@pytest.mark.parametrize("status", [401, 404])
def test_an_auth_or_route_error_mid_run_stops_at_the_first_request(ep, tmp_path, status):
    ep.chat_status = status  # GET /models is fine, every chat request is refused (a revoked key, a broken proxy)
    out = tmp_path / "out"
    msg = one_error_line(cli("--endpoint", ep.url, "--model", "derm", "--out", str(out), "--concurrency", "1"))
    assert msg.startswith(f"error: {ep.url}: {status}")
    assert len(ep.requests) == 1 and not lines(out / "predictions.jsonl") and not (out / "metrics.json").exists()


def test_item_errors_are_kept_apart_counted_and_retried(ep, tmp_path, items):
    ep.bad = [image_marker(items[0])]  # a 400 for one image (the mcq and the open item that show it)
    broken = sum(image_marker(it) == ep.bad[0] for it in items)
    out = tmp_path / "out"
    args = ["--endpoint", ep.url, "--model", "derm", "--out", str(out)]
    r = cli(*args)
    msg = one_error_line(r)
    assert r.exit_code == 1 and msg.startswith(f"error: {broken} of {N} items got no answer")
    assert "HTTP 400" in msg and "report: " in r.stdout
    errors = lines(out / "errors.jsonl")
    assert len(errors) == broken and {e["status"] for e in errors} == {400}
    preds = lines(out / "predictions.jsonl")
    assert len(preds) == N - broken and not {p["id"] for p in preds} & {e["id"] for e in errors}
    assert all(p["response"] for p in preds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["errors"] == broken and metrics["metrics"]["errors"] == broken
    assert metrics["run"]["errors"] == broken and metrics["metrics"]["n"] == N - broken
    assert f"**{broken} of {N} items errored**" in (out / "report.md").read_text()

    ep.bad = []
    r = cli(*args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["asked"] == broken and metrics["run"]["skipped_as_done"] == N - broken
    assert metrics["errors"] == 0 and not (out / "errors.jsonl").exists()
    assert len(lines(out / "predictions.jsonl")) == N and "items errored" not in (out / "report.md").read_text()


def test_server_errors_after_every_retry_are_item_errors_and_a_broken_server_stops(ep, tmp_path, items):
    suite = load_config(SUITE, SuiteConfig)
    opts = EndpointOptions(ep.url, "derm", concurrency=4, retries=1, backoff=0.01)
    ep.flaky = [image_marker(items[3])]
    result = run_suite(suite, tmp_path / "a", opts, base=SUITE.parent, show_progress=False)
    broken = sum(image_marker(it) == ep.flaky[0] for it in items)
    assert result["errors"] == broken and result["run"]["asked"] == N - broken
    assert all("HTTP 500 after 2 tries" in e["error"] for e in lines(tmp_path / "a" / "errors.jsonl"))
    ep.flaky, ep.fail_all = [], True
    with pytest.raises(EndpointError, match=r"the first 8 requests all failed \(last: HTTP 500"):
        run_suite(suite, tmp_path / "b", opts, base=SUITE.parent, show_progress=False)
    assert not lines(tmp_path / "b" / "predictions.jsonl")


def test_an_aborted_answer_is_never_kept_and_is_asked_again(ep, tmp_path, items):
    ep.abort = [image_marker(items[5])]  # vLLM returns what it has, finish_reason "abort", when it shuts down
    aborted = {it["id"] for it in items if image_marker(it) == ep.abort[0]}
    out = tmp_path / "out"
    args = ["--endpoint", ep.url, "--model", "derm", "--out", str(out), "--concurrency", "1"]
    r = cli(*args)
    msg = one_error_line(r)
    assert r.exit_code == 2 and "did not answer" in msg and "aborted by the server" in msg, r.output
    kept = lines(out / "predictions.jsonl")
    assert kept and not {p["id"] for p in kept} & aborted and all(p["finish_reason"] == "stop" for p in kept)
    # a file from before aborted answers were refused: such a row is asked again and never scored
    old = {**kept[0], "id": sorted(aborted)[0], "response": "<think>Here: a", "finish_reason": "abort"}
    with (out / "predictions.jsonl").open("a") as f:
        f.write(json.dumps(old) + "\n")
    ep.abort = []
    r = cli(*args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["skipped_as_done"] == len(kept) and metrics["metrics"]["n"] == N
    rows = lines(out / "predictions.jsonl")
    assert len(rows) == N + 1 and len({p["id"] for p in rows if p["finish_reason"] == "stop"}) == N


def test_an_aborted_judge_reply_is_no_verdict_and_is_asked_again(ep, tmp_path):
    suite = load_config(ROOT / "eval" / "example_open.yaml", SuiteConfig)
    opts = EndpointOptions(ep.url, "derm", concurrency=2)
    judge = EndpointOptions(ep.url, "other", concurrency=2)
    ep.abort = [b"Reference answer:"]  # only the judge's prompt says this
    first = run_suite(suite, tmp_path / "a", opts, base=ROOT / "eval", show_progress=False, judge=judge, limit=4)
    assert first["judge"]["failed"] == 4 and "aborted" in first["judge"]["failed_examples"][0]
    assert not lines(tmp_path / "a" / "judge.jsonl")
    ep.abort = []
    again = run_suite(suite, tmp_path / "a", opts, base=ROOT / "eval", show_progress=False, judge=judge, limit=4)
    assert again["judge"]["asked"] == 4 and again["judge"]["failed"] == 0
    assert len(lines(tmp_path / "a" / "judge.jsonl")) == 4


# ---------------------------------------------------------------- 3. bounds


@pytest.mark.parametrize(("flag", "value"), [("--concurrency", "0"), ("--limit", "-1")])
def test_concurrency_and_limit_bounds(ep, tmp_path, flag, value):
    cmd = [sys.executable, "-m", "dermvlm.cli", "eval", str(SUITE), "--endpoint", ep.url, "--model", "derm",
           "--out", str(tmp_path / "out"), flag, value]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # 0 used to hang
    assert r.returncode == 2 and f"Invalid value for '{flag}'" in r.stderr and "Traceback" not in r.stderr
    assert not ep.requests
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        EndpointOptions(ep.url, "derm", concurrency=0)


# ---------------------------------------------------------------- 4. signals (SIGTERM with vLLM: test_eval_server)


def test_sigint_stops_the_run_with_one_line(ep, tmp_path):
    ep.delay = 2.0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "eval", str(SUITE), "--endpoint", ep.url,
                             "--model", "derm", "--out", str(out), "--concurrency", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ep.requests:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stdout + stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGINT") and "Traceback" not in stderr


BUSY_LOOP = """
import asyncio, logging, os, signal, sys, threading, time
logging.basicConfig()
from dermvlm.evaluation.signals import run_interruptible

def on_term(signum, frame):  # what the CLI does: unwind with KeyboardInterrupt so servers get stopped
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, on_term)

async def main():
    async def busy():  # a task in the middle of CPU work (encoding an image) when the signal comes
        for _ in range(40):
            end = time.monotonic() + 0.05
            while time.monotonic() < end:
                pass
            await asyncio.sleep(0)
    await asyncio.gather(*(busy() for _ in range(4)))

threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    (asyncio.run if sys.argv[1] == "plain" else run_interruptible)(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("runner", ["plain", "interruptible"])
def test_sigterm_mid_task_ends_with_one_line(runner):
    """SIGTERM arriving while a request task computes: ``asyncio.run`` (the control) logs the interrupted task as an
    unhandled exception with its traceback; ``run_interruptible`` cancels the loop cleanly and then hands the signal
    to the CLI's handler."""
    r = subprocess.run([sys.executable, "-c", BUSY_LOOP, runner], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "interrupted", r.stdout + r.stderr
    if runner == "plain":
        assert "Traceback" in r.stderr  # the scenario reproduces the problem
    else:
        assert r.stderr == "", r.stderr


# ---------------------------------------------------------------- 5. one line, never a traceback


def test_expected_failures_are_one_line_without_a_traceback(ep, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "config file not found" in one_error_line(CliRunner().invoke(app, ["eval", str(tmp_path / "nope.yaml"),
                                                                     "--endpoint", ep.url, "--model", "derm"]))
    assert "model folder not found" in one_error_line(cli("--serve", str(tmp_path / "no-model"),
                                                          "--out", str(tmp_path / "o1")))
    assert "exactly one of" in one_error_line(cli("--endpoint", ep.url, "--serve", str(tmp_path)))
    assert "--endpoint needs --model" in one_error_line(cli("--endpoint", ep.url))
    assert "not an http(s) URL" in one_error_line(cli("--endpoint", "localhost:8000", "--model", "derm",
                                                      "--out", str(tmp_path / "o2")))
    one_error_line(cli("--endpoint", ep.url, "--model", "derm", "--out", str(a_file)))  # --out is a file
    assert "no metrics.json" in one_error_line(CliRunner().invoke(app, ["eval", "compare", str(tmp_path)]))
