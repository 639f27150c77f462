"""Evaluation through a real vLLM server (CPU build): a suite end to end, 200 concurrent requests, malformed requests,
a run that resumes after the server is killed mid-evaluation with the same final metrics, answers reused only for
the same setup, request errors kept apart from answers, and SIGTERM to `eval --serve` stopping its server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from PIL import Image
from processes import descendants, front_door_port, group_alive, proc_table
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import SuiteConfig, load_config
from dermvlm.evaluation import suite as suite_module
from dermvlm.evaluation.cache import CacheMismatch
from dermvlm.evaluation.runner import EndpointOptions, read_predictions
from dermvlm.evaluation.suite import run_suite
from dermvlm.recipes.text import SYSTEM_PROMPT
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
    assert json.loads((out / "metrics.json").read_text())["versions"]["dermvlm_commit"]  # the code it ran from
    report = (out / "report.md").read_text()
    assert "| mcq |" in report and "![confusion_matrix](confusion_matrix.png)" in report
    types = result["metrics"]["types"]
    assert set(types) == {"mcq", "open"} and types["mcq"]["n"] + types["open"]["n"] == 12
    assert result["metrics"]["latency"]["p50_s"] > 0 and result["metrics"]["errors"] == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings == json.loads((out / "cache_key.json").read_text())
    assert settings["model"] == "derm" and settings["model_id"]["root"] == str(server.options.model)
    assert settings["weights"] and settings["endpoint"] == "http://127.0.0.1:*/v1"  # a local folder: keyed by weights
    assert "- settings: model `derm`" in report
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


def test_class_scores_equal_transformers_logprobs_and_the_val_operating_point_applies_to_its_classes(
        server, trained_run, tmp_path):
    """Class scores of a closed-set suite: AUC and decodes on a 'val' run that fits the operating point, a run
    with the same classes that applies it unchanged, a 'test' run with other classes that refuses it; each score
    is the served model's log-probability of the class's choice tokens given the image and question, equal to the one
    transformers computes for the same tokens in float32."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermvlm.evaluation.class_scores import SCORES, candidate_tokens, choice_paths, closed_classes, read_scores

    suite = load_config(SUITE, SuiteConfig).model_copy(update={"types": ["open"], "split": "val"})
    val = run_suite(suite.model_copy(update={"operating_point": "fit"}), tmp_path / "val", endpoint=endpoint(server),
                    base=SUITE.parent, limit=10, show_progress=False)
    block = val["metrics"]["types"]["open"]["class_scores"]
    classes = block["classes"]
    assert block["n"] == val["metrics"]["types"]["open"]["n"] > 0 and len(classes) >= 2 and 0 <= block["auc"] <= 1
    assert set(block["decodes"]) == {"as_generated", "class_score_argmax", "prior_corrected_balanced_accuracy",
                                     "prior_corrected_accuracy"}
    generated = val["metrics"]["types"]["open"]
    assert block["decodes"]["as_generated"]["balanced_accuracy"] == generated["balanced_accuracy"]
    fitted = json.loads((tmp_path / "val" / "operating_point.json").read_text())
    assert fitted["fitted_on"]["split"] == "val" and sorted(fitted["classes"]) == sorted(classes)
    assert "Class scores (closed set)" in (tmp_path / "val" / "report.md").read_text()
    # applied unchanged where the class set is the same (here the same split again, in a sibling folder), never
    # fitted there; refused, with the reason, on a split with another class set (the sample's small test split has
    # seborrheic keratosis, its val split none; DermaMNIST's val and test both have all seven)
    again = run_suite(suite.model_copy(update={"operating_point": "val"}), tmp_path / "again",
                      endpoint=endpoint(server), base=SUITE.parent, limit=10, show_progress=False)
    applied = again["metrics"]["types"]["open"]["class_scores"]
    assert applied["operating_point"]["tau"] == fitted["tau"] and applied["operating_point_source"].endswith(
        "val/operating_point.json")
    assert not (tmp_path / "again" / "operating_point.json").exists()
    test = run_suite(suite.model_copy(update={"split": "test", "operating_point": "val"}), tmp_path / "test",
                     endpoint=endpoint(server), base=SUITE.parent, limit=10, show_progress=False)
    other = test["metrics"]["types"]["open"]["class_scores"]
    if sorted(other["classes"]) != sorted(fitted["classes"]):
        assert other["operating_point"] is None and "fitted on other classes" in other["note"]
    else:
        assert other["operating_point"]["tau"] == fitted["tau"]
    assert not (tmp_path / "test" / "operating_point.json").exists()  # never fitted on test
    # the served scores against transformers' own log-probabilities of each class's choice tokens
    from dermvlm.evaluation.items import build_items

    every = build_items(suite, tmp_path / "items", base=SUITE.parent)
    items, names = [it for it in every if it["type"] == "open"][:1], closed_classes(every)
    stored = read_scores(tmp_path / "val", json.loads((tmp_path / "val" / SCORES).read_text().splitlines()[0])["set"])
    ep = endpoint(server)
    texts = {label: f"<answer>{name}</answer>" for label, name in names.items()}
    tokens = dict(zip(texts, asyncio.run(candidate_tokens(ep, list(texts.values()))), strict=True))
    paths = choice_paths(tokens)
    assert all(steps for steps in paths.values())
    assert val["run"]["class_scores"]["requests_per_item"] == len(
        {node for steps in paths.values() for node, _ in steps})  # one request per node of the tree, not per class
    model = AutoModelForImageTextToText.from_pretrained(str(trained_run["merged"]), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(trained_run["merged"]))
    for item in items:
        image = Image.open(io.BytesIO(item["image"])).convert("RGB")
        for label, text in texts.items():
            conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                         {"type": "text", "text": item["question"]}]},
                            {"role": "assistant", "content": [{"type": "text", "text": text}]}]
            inputs = processor.apply_chat_template(conversation, continue_final_message=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt")
            ids = inputs["input_ids"][0]
            assert ids[-len(tokens[label]):].tolist() == tokens[label]  # the candidate ends the prompt as tokenized
            with torch.no_grad():
                logp = torch.log_softmax(model(**inputs).logits[0].float(), -1)
            start = len(ids) - len(tokens[label])
            expected = sum(logp[start + len(node) - 1, token].item() for node, token in paths[label])
            assert stored[item["id"]][label] == pytest.approx(expected, abs=1e-4)
    # what a page showing one answer calls: the same scores, ranked at the val operating point, and the sentence
    from dermvlm.evaluation.class_scores import score_image
    from dermvlm.evaluation.operating_point import OperatingPoint, rank

    one = score_image(ep, items[0]["image"], items[0]["question"], names)
    assert one == pytest.approx(stored[items[0]["id"]], abs=1e-4)
    op = OperatingPoint.load(tmp_path / "val")
    ranked = rank(one, op)
    assert [c for c, _ in ranked] and sum(p for _, p in ranked) == pytest.approx(1.0)
    assert "τ" in op.statement() and "val" in op.statement()


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


def test_evaluation_resumes_after_the_server_is_killed(trained_run, tmp_path):
    # Resumed must equal uninterrupted, item by item. The server is made deterministic for that demand: one request
    # at a time and no prefix cache (batch mates or a warm cache can change float sums, and the tiny random model's
    # greedy answers are near ties). The kill lands mid-answer: vLLM then returns the partial text with
    # finish_reason "abort", which must be asked again, never kept (it was kept once: macro-F1 0.0877 vs 0.0833).
    def deterministic(log: str) -> VLLMServer:
        return VLLMServer(ServeOptions(model=str(trained_run["merged"]), served_model_name="derm", dtype="float32",
                                       log_file=str(tmp_path / log), extra_args=["--no-enable-prefix-caching"]))

    # the answers' resumption is what is checked: class scores (more requests per item) stay off here
    suite_file = tmp_path / "sample.yaml"
    suite_file.write_text(SUITE.read_text() + "class_scores: false\n")
    suite = load_config(suite_file, SuiteConfig)
    with deterministic("victim.log") as victim:  # stopped on the way out too, if an assertion fails first
        reference = run_suite(suite, tmp_path / "ref", endpoint=endpoint(victim, concurrency=1), base=SUITE.parent,
                              show_progress=False)
        out = tmp_path / "resumed"
        cmd = [sys.executable, "-m", "dermvlm.cli", "eval", str(suite_file), "--endpoint", victim.base_url,
               "--model", "derm", "--out", str(out), "--concurrency", "1"]
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
    with deterministic("restarted.log") as restarted:
        cmd[cmd.index("--endpoint") + 1] = restarted.base_url
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["run"]["skipped_as_done"] == answered
    assert len(preds.read_text().splitlines()) == reference["metrics"]["n"]
    uninterrupted = {p["id"]: p["response"] for p in read_predictions(tmp_path / "ref" / "predictions.jsonl")}
    assert {p["id"]: p["response"] for p in read_predictions(preds)} == uninterrupted
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


def cli_eval(*args: str):
    return CliRunner().invoke(app, ["eval", str(SUITE), *args])


def test_wrong_model_or_url_stop_with_one_line_and_no_answers(server, tmp_path):
    out = tmp_path / "out"
    r = cli_eval("--endpoint", server.base_url, "--model", "dermm", "--out", str(out))
    assert r.exit_code == 2 and r.stderr.strip() == (f"error: {server.base_url}: model 'dermm' is not served there "
                                                     "(it serves 'derm'): check --model"), r.output
    r = cli_eval("--endpoint", server.url, "--model", "derm", "--out", str(out))  # no /v1
    assert r.exit_code == 2 and r.stderr.strip() == (f"error: {server.url}: 404 Not Found on GET /models: not an "
                                                     "OpenAI-compatible API base URL (it usually ends in /v1)")
    assert not (out / "predictions.jsonl").exists() and not (out / "metrics.json").exists()


def test_a_malformed_image_is_an_error_not_an_answer_and_is_retried(server, tmp_path, monkeypatch):
    suite = load_config(SUITE, SuiteConfig)
    real = suite_module.build_items

    def one_broken(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[1] = rows[1] | {"image": b"\xff\xd8\xff\xe0" + b"not a jpeg" * 40}
        return rows

    monkeypatch.setattr(suite_module, "build_items", one_broken)
    out = tmp_path / "out"
    result = run_suite(suite, out, endpoint=endpoint(server), base=SUITE.parent, limit=4, show_progress=False)
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert result["errors"] == 1 and result["metrics"]["errors"] == 1 and len(errors) == 1
    assert errors[0]["status"] == 400 and errors[0]["error"].startswith("HTTP 400")
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and errors[0]["id"] not in {p["id"] for p in preds}
    assert "**1 of 4 items errored**" in (out / "report.md").read_text()
    monkeypatch.setattr(suite_module, "build_items", real)
    again = run_suite(suite, out, endpoint=endpoint(server), base=SUITE.parent, limit=4, show_progress=False)
    assert again["run"]["asked"] == 1 and again["run"]["skipped_as_done"] == 3 and again["errors"] == 0
    assert not (out / "errors.jsonl").exists() and again["metrics"]["n"] == 4


def test_answers_are_reused_only_for_the_same_setup(server, tmp_path):
    suite = load_config(SUITE, SuiteConfig)
    out = tmp_path / "out"
    run_suite(suite, out, endpoint=endpoint(server), base=SUITE.parent, limit=3, show_progress=False)
    with pytest.raises(CacheMismatch, match=r"system prompt differs.*--fresh"):
        run_suite(suite, out, endpoint=endpoint(server), base=SUITE.parent, limit=3, system_prompt="dermiq",
                  show_progress=False)
    hot = suite.model_copy(update={"temperature": 1.0})
    with pytest.raises(CacheMismatch, match=r"temperature 0\.0 → 1\.0"):
        run_suite(hot, out, endpoint=endpoint(server), base=SUITE.parent, limit=3, show_progress=False)
    fresh = run_suite(suite, out, endpoint=endpoint(server), base=SUITE.parent, limit=3, system_prompt="dermiq",
                      fresh=True, show_progress=False)
    assert fresh["run"]["asked"] == 3 and fresh["run"]["skipped_as_done"] == 0
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["settings"]["system_prompt"] == SYSTEM_PROMPT
    assert recorded["suite_config"]["system_prompt"] == "dermiq" and recorded["suite_config"]["limit"] == 3


def test_sigterm_to_eval_serve_stops_its_vllm_server(trained_run, tmp_path):
    import urllib.request

    cmd = [sys.executable, "-m", "dermvlm.cli", "eval", str(SUITE), "--serve", str(trained_run["merged"]),
           "--dtype", "float32", "--out", str(tmp_path / "out"), "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    groups: set[int] = set()  # the server's processes: children of the command, each group of its own
    try:
        deadline = time.monotonic() + 300
        port = None
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            for kid in [p for p, (ppid, _, _) in proc_table().items() if ppid == proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    groups.add(os.getpgid(kid))
            port = port or front_door_port(descendants(proc.pid))
            if port is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.2)
        assert groups and os.getpgid(proc.pid) not in groups
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 60
        assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM: stopped the vLLM server")
        assert "Traceback" not in stderr
        gone = time.monotonic() + 10
        while any(group_alive(g) for g in groups) and time.monotonic() < gone:
            time.sleep(0.2)
        assert not any(group_alive(g) for g in groups), "a process of the vLLM server's groups is still running"
    finally:
        proc.kill()
        for g in groups:
            if group_alive(g):
                os.killpg(g, signal.SIGKILL)


def test_robustness_sweep_one_server_cached_runs_and_summary(server, tmp_path, recipe_data):
    from dermvlm.config import RobustnessSpec
    from dermvlm.evaluation.robustness import run_robustness

    suite = load_config(SUITE, SuiteConfig).model_copy(update={"robustness": RobustnessSpec(
        corruptions=["brightness_down", "black_corner"], severities=[1, 5], limit=6), "bootstrap": 50})
    out = tmp_path / "rob"
    summary = run_robustness(suite, out, endpoint(server), base=SUITE.parent, show_progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        ["items", "clean", "brightness_down-1", "brightness_down-5", "black_corner-1", "black_corner-5"])
    assert not (out / "black_corner-5" / "items").exists()  # the suite's items are built once, in out/items
    ids = {json.loads(line)["id"] for line in (out / "black_corner-5" / "predictions.jsonl").read_text().splitlines()}
    assert len(ids) == 6 and all(i.endswith("~black_corner-5") for i in ids)
    cell = summary["corruptions"]["black_corner"]["5"]
    assert cell["n"] == summary["clean"]["n"] and summary["worst_corruption"] in ("brightness_down", "black_corner")
    clean_ba = summary["clean"]["balanced_accuracy"]
    if clean_ba:
        assert cell["balanced_accuracy_relative"] == pytest.approx(cell["balanced_accuracy"] / clean_ba, abs=1e-3)
    for name in ("robustness.json", "robustness.md", "robustness.png"):
        assert (out / name).is_file()
    assert "| black_corner |" in (out / "robustness.md").read_text()
    again = run_robustness(suite, out, endpoint(server), base=SUITE.parent, show_progress=False)
    assert again == summary  # every run answered from its own cache
    run = json.loads((out / "brightness_down-1" / "metrics.json").read_text())["run"]
    assert run["asked"] == 0 and run["skipped_as_done"] == 6


def test_eval_log_mlflow_puts_metrics_and_plots_in_its_own_store_and_a_dead_server_stops_it_first(
        server, tmp_path, monkeypatch):
    """A standalone evaluation reaches the tracker as the pipeline's does: the metrics it wrote and its plots, in
    the store beside its answers (nothing in the working directory); a tracking server that does not answer stops
    it in one line before any question is asked."""
    import mlflow

    from dermvlm.tracking import flat_metrics

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    r = cli_eval("--endpoint", server.base_url, "--model", "derm", "--out", str(out), "--limit", "3", "--log",
                 "mlflow")
    assert r.exit_code == 0, r.output
    written = json.loads((out / "metrics.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sample").experiment_id])
    expected = flat_metrics(written["metrics"], "eval/sample")
    assert expected and {k: run.data.metrics[k] for k in expected} == pytest.approx(expected)
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "eval/sample")}
    assert "report.md" in logged and {p.name for p in out.glob("*.png")} <= logged and len(logged) > 1
    assert not (tmp_path / "mlruns").exists() and "MLFLOW_TRACKING_URI" not in os.environ

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    r = cli_eval("--endpoint", server.base_url, "--model", "derm", "--out", str(tmp_path / "dead"), "--log", "mlflow")
    assert r.exit_code == 2 and f"the tracking server http://127.0.0.1:{port} does not answer" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "dead" / "predictions.jsonl").exists()
