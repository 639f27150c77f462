"""Evaluation through a real vLLM server (CPU build): a suite end to end, 200 concurrent requests, malformed requests,
and a run that resumes after the server is killed mid-evaluation with the same final metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import SuiteConfig, load_config
from dermvlm.evaluation.runner import EndpointOptions
from dermvlm.evaluation.suite import run_suite
from dermvlm.serving.server import ServeOptions, VLLMServer

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "eval" / "sample.yaml"


def serve(model: Path, log: Path) -> VLLMServer:
    return VLLMServer(ServeOptions(model=str(model), served_model_name="derm", dtype="float32", log_file=str(log)))


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    with serve(trained_run["merged"], tmp_path_factory.mktemp("srv") / "server.log") as srv:
        yield srv


def endpoint(srv: VLLMServer, concurrency: int = 4) -> EndpointOptions:
    return EndpointOptions(base_url=srv.base_url, model="derm", concurrency=concurrency, retries=2, backoff=0.2)


def test_suite_end_to_end_report_plots_and_compare(server, tmp_path, recipe_data):
    suite = load_config(SUITE, SuiteConfig)
    result = run_suite(suite, tmp_path / "a", endpoint=endpoint(server), base=SUITE.parent, limit=12,
                       show_progress=False)
    out = tmp_path / "a"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 12
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "per_class.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| mcq |" in report and "![confusion_matrix](confusion_matrix.png)" in report
    types = result["metrics"]["types"]
    assert set(types) == {"mcq", "open"} and types["mcq"]["n"] + types["open"]["n"] == 12
    assert result["metrics"]["latency"]["p50_s"] > 0 and result["metrics"]["errors"] == 0
    # the suite evaluates on images the training recipe kept out of training
    from datasets import Image as HFImage
    from datasets import List, load_from_disk

    raw = List(HFImage(decode=False))
    train = load_from_disk(str(recipe_data / "open_diagnosis"))["train"].cast_column("images", raw)
    train_images = {row["images"][0]["bytes"] for row in train}
    items = load_from_disk(str(out / "items" / "eval_item"))["test"].cast_column("images", raw)
    assert not train_images & {row["images"][0]["bytes"] for row in items}
    run_suite(suite, tmp_path / "b", endpoint=endpoint(server, 8), base=SUITE.parent, limit=12, show_progress=False)
    r = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0 and "| mcq accuracy |" in r.output
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]["types"] for d in "ab")
    assert a["mcq"]["accuracy"] == b["mcq"]["accuracy"]  # greedy answers do not depend on concurrency


def test_200_concurrent_requests_keep_answering(server):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 120, 100)).save(png, "PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "Diagnosis?"}]}]

    async def burst():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*[client.chat.completions.create(model="derm", messages=messages, max_tokens=4,
                                                                         temperature=0) for _ in range(200)])
        finally:
            await client.close()

    t = time.perf_counter()
    results = asyncio.run(burst())
    assert len(results) == 200 and all(r.choices[0].message.content is not None for r in results)
    assert time.perf_counter() - t < 120 and server.healthy()


def test_malformed_requests_get_4xx_and_the_server_stays_up(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)
    bad_b64 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                                            {"type": "text", "text": "Diagnosis?"}]}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="derm", messages=bad_b64, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="derm", messages=[], max_tokens=4)
    huge = io.BytesIO()
    Image.new("RGB", (4000, 4000), (200, 150, 120)).save(huge, "JPEG", quality=50)
    big = [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/jpeg;base64," + base64.b64encode(huge.getvalue()).decode()}},
        {"type": "text", "text": "Diagnosis?"}]}]
    try:
        r = client.chat.completions.create(model="derm", messages=big, max_tokens=4)
        assert r.choices[0].message.content is not None  # resized to the processor's max_pixels and answered
    except openai.APIStatusError as err:
        assert 400 <= err.status_code < 500
    assert server.healthy()
    ok = client.chat.completions.create(model="derm", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert ok.choices[0].message.content is not None


def test_evaluation_resumes_after_the_server_is_killed(trained_run, tmp_path, server):
    suite = load_config(SUITE, SuiteConfig)
    reference = run_suite(suite, tmp_path / "ref", endpoint=endpoint(server), base=SUITE.parent, show_progress=False)
    victim = serve(trained_run["merged"], tmp_path / "victim.log").start()
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "dermvlm.cli", "eval", str(SUITE), "--endpoint", victim.base_url, "--model", "derm",
           "--out", str(out), "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    preds = out / "predictions.jsonl"
    while not (preds.exists() and len(preds.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    victim.stop()  # the server dies mid-evaluation
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "did not answer" in output
    answered = len(preds.read_text().splitlines())
    assert 3 <= answered < reference["metrics"]["n"]
    with serve(trained_run["merged"], tmp_path / "restarted.log") as restarted:
        cmd[cmd.index("--endpoint") + 1] = restarted.base_url
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["run"]["skipped_as_done"] == answered
    assert len(preds.read_text().splitlines()) == reference["metrics"]["n"]
    for kind, t in reference["metrics"]["types"].items():
        for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "unparsable_rate"):
            assert resumed["metrics"]["types"][kind][key] == t[key], (kind, key)


def test_guided_decoding_guarantees_the_dermiq_format(server):
    from dermvlm.evaluation.parsing import FORMAT_RE
    from dermvlm.evaluation.runner import FORMAT_REGEX

    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)
    r = client.chat.completions.create(model="derm", messages=[{"role": "user", "content": "What is this rash?"}],
                                       max_tokens=200, temperature=1.0, seed=1,
                                       extra_body={"structured_outputs": {"regex": FORMAT_REGEX}})
    assert FORMAT_RE.match(r.choices[0].message.content), r.choices[0].message.content


def test_serve_command_stops_cleanly_on_sigterm(trained_run, tmp_path):
    import re
    import signal
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "serve", str(trained_run["merged"]), "--port", "0",
                             "--dtype", "float32", "--log-file", str(tmp_path / "serve.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    deadline = time.monotonic() + 300
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        url = m.group(1) if m else None
        assert proc.poll() is None or url, "serve exited before it was ready"
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
