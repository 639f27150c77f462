"""Standard VQA benchmark files: the example VLMEvalKit-style TSV and JSONL suites read into items, bad files
refused with the file, row and field named (and nothing written), text metrics on known pairs, and both example
suites evaluated end to end through the session's real vLLM server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import ConfigError, SuiteConfig, load_config
from dermvlm.evaluation.external import BenchmarkFileError, read_benchmark
from dermvlm.evaluation.items import build_items
from dermvlm.evaluation.text_metrics import text_scores, token_f1

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"
TSV = EVAL / "example_benchmark" / "derm_mcq.tsv"
JSONL = EVAL / "example_benchmark" / "derm_open.jsonl"
HEADER = "index\timage\tquestion\tA\tB\tC\tD\tanswer\tcategory\n"


def _b64_jpeg(colour: tuple[int, int, int] = (180, 120, 100)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_example_tsv_reads_as_mcq_items_with_decodable_images():
    items = read_benchmark(TSV)
    assert len(items) == 12 and len({i["id"] for i in items}) == 12  # the sample recipe's test split
    for item in items:
        assert item["type"] == "mcq" and item["answer"] in "ABCD" and len(item["options"]) == 4
        assert item["label"] == item["options"]["ABCD".index(item["answer"])]
        assert "A. " in item["question"] and "D. " in item["question"]
        with Image.open(io.BytesIO(item["image"])) as im:
            assert min(im.size) > 0


def test_example_jsonl_reads_as_open_text_items_and_suite_paths_resolve():
    suite = load_config(EVAL / "example_open.yaml", SuiteConfig)
    items = build_items(suite, Path("/nonexistent-never-written"), base=EVAL)
    assert len(items) == len(JSONL.read_text().splitlines())
    assert {i["type"] for i in items} == {"open_text"} and all(i["options"] == [] for i in items)
    assert items[0]["answer"] == json.loads(JSONL.read_text().splitlines()[0])["answer"]


def test_an_answer_given_as_option_text_becomes_its_letter(tmp_path):
    f = tmp_path / "b.tsv"
    f.write_text(HEADER + f"7\t{_b64_jpeg()}\tWhat is it?\tmelanoma\tnevus\twart\tpsoriasis\tWart\tviral\n")
    (item,) = read_benchmark(f)
    assert item["id"] == "7" and item["answer"] == "C" and item["category"] == "viral"


@pytest.mark.parametrize(("content", "expected"), [
    (HEADER + "1\tnot*base64!\tq\ta\tb\tc\td\tA\tx\n", "row 2: field image: no file"),
    (HEADER + f"1\t{base64.b64encode(b'plain text').decode()}\tq\ta\tb\tc\td\tA\tx\n",
     "row 2: field image: not a readable image"),
    ("index\timage\tA\tB\tanswer\n1\tx\ta\tb\tA\n", "missing column(s) question"),
    (HEADER + f"1\t{_b64_jpeg()}\tq\ta\tb\tc\td\tE\tx\n", "row 2: field answer: 'E' is neither"),
    (HEADER + f"1\t{_b64_jpeg()}\tq\ta\tb\tc\td\tA\tx\n1\t{_b64_jpeg()}\tq\ta\tb\tc\td\tB\tx\n",
     "row 3: id '1' repeats row 2"),
    (HEADER + f"1\t{_b64_jpeg()}\t\ta\tb\tc\td\tA\tx\n", "row 2: field question: empty"),
])
def test_bad_tsv_rows_are_named(tmp_path, content, expected):
    f = tmp_path / "bad.tsv"
    f.write_text(content)
    with pytest.raises(BenchmarkFileError, match=None) as err:
        read_benchmark(f)
    assert str(f) in str(err.value) and expected in str(err.value), str(err.value)


def test_bad_jsonl_lines_are_named(tmp_path):
    f = tmp_path / "bad.jsonl"
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    f.write_text('{"image": "x.png", "question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(BenchmarkFileError, match=r"bad.jsonl: line 2: not JSON"):
        read_benchmark(f)
    f.write_text('["a list"]\n')
    with pytest.raises(BenchmarkFileError, match=r"line 1: expected a JSON object"):
        read_benchmark(f)


def test_a_suite_cannot_mix_sources_and_a_benchmark_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nformat: tsv\ndata: x.tsv\nsources: [{name: sample}]\n")
    with pytest.raises(ConfigError, match="leave sources out"):
        load_config(f, SuiteConfig)


def test_cli_refuses_a_broken_benchmark_in_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken.tsv"
    bad.write_text(HEADER + "1\t%%%\tq\ta\tb\tc\td\tA\tx\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", str(EVAL / "example_mcq.yaml"), "--data", str(bad), "--endpoint",
                                   "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "broken.tsv: row 2: field image" in lines[0] and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["eval", str(EVAL / "example_mcq.yaml"), "--data", str(tmp_path / "x.parquet"),
                                   "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out)])
    assert res.exit_code == 2 and "name the file .tsv, .jsonl or .csv" in res.output and not out.exists()


def test_text_metrics_on_known_pairs():
    assert token_f1("The melanoma", "melanoma") == 1.0
    assert token_f1("basal cell carcinoma", "squamous cell carcinoma") == pytest.approx(2 / 3)
    assert token_f1("nevus", "melanoma") == 0.0
    s = text_scores(["Melanoma.", "basal cell carcinoma", "wart"], ["melanoma", "squamous cell carcinoma", "nevus"],
                    bootstrap=200, seed=0)
    assert s["exact_match"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["token_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-4)
    assert 0 < s["rouge_l"] < 1 and 0 <= s["bleu"] <= 100
    lo, hi = s["ci95"]["token_f1"]
    assert lo <= s["token_f1"] <= hi
    assert text_scores(["a b c"], ["a b c"], bootstrap=0)["rouge_l"] == 1.0


@pytest.mark.vllm
@pytest.mark.parametrize("suite_file", ["example_mcq.yaml", "example_open.yaml"])
def test_example_suites_end_to_end_through_a_real_server(vllm_server, tmp_path, suite_file):
    from conftest import VLLM_API_KEY

    from dermvlm.evaluation.runner import EndpointOptions
    from dermvlm.evaluation.suite import run_suite

    suite = load_config(EVAL / suite_file, SuiteConfig)
    ep = EndpointOptions(base_url=vllm_server.base_url, model="derm", api_key=VLLM_API_KEY, concurrency=4)
    result = run_suite(suite, tmp_path / "out", endpoint=ep, base=EVAL, show_progress=False)
    kind = "mcq" if "mcq" in suite_file else "open_text"
    t = result["metrics"]["types"][kind]
    assert result["errors"] == 0 and t["n"] == result["n_items"] >= 12
    assert result["metrics"]["primary"] == kind
    report = (tmp_path / "out" / "report.md").read_text()
    if kind == "open_text":
        assert {"exact_match", "token_f1", "rouge_l", "bleu"} <= set(t) and "open-ended text" in report
    else:
        assert 0 <= t["accuracy"] <= 1 and "## By category" in report


@pytest.mark.parametrize(("reply", "verdict"), [("Yes.", "yes"), ("no, it differs", "no"), (" YES", "yes"),
                                                ("yesterday", None), ("maybe", None), ("", None), (None, None)])
def test_judge_verdicts_parse_only_yes_or_no(reply, verdict):
    from dermvlm.evaluation.judge import verdict_of

    assert verdict_of(reply) == verdict


@pytest.mark.vllm
def test_llm_judge_grades_open_answers_caches_per_judge_and_refuses_a_dead_judge(vllm_server, tmp_path):
    from conftest import VLLM_API_KEY

    from dermvlm.evaluation.runner import EndpointDown, EndpointOptions
    from dermvlm.evaluation.suite import run_suite

    suite = load_config(EVAL / "example_open.yaml", SuiteConfig)
    ep = EndpointOptions(base_url=vllm_server.base_url, model="derm", api_key=VLLM_API_KEY, concurrency=4)
    judge = EndpointOptions(base_url=vllm_server.base_url, model="base", api_key=VLLM_API_KEY, concurrency=4)
    out = tmp_path / "out"
    first = run_suite(suite, out, endpoint=ep, base=EVAL, show_progress=False, judge=judge, limit=6)
    j = first["metrics"]["types"]["open_text"]["judge"]
    lines = [json.loads(x) for x in (out / "judge.jsonl").read_text().splitlines()]
    assert first["judge"]["asked"] == j["n"] == len(lines) == 6 and first["judge"]["failed"] == 0
    assert {x["verdict"] for x in lines} <= {"yes", "no", None}
    assert j["accuracy"] == pytest.approx(sum(x["verdict"] == "yes" for x in lines) / 6, abs=1e-4)
    assert "LLM judge (base at" in (out / "report.md").read_text()
    again = run_suite(suite, out, endpoint=ep, base=EVAL, show_progress=False, judge=judge, limit=6)
    assert again["judge"]["asked"] == 0  # same judge, same answers: the cached verdicts
    other = EndpointOptions(base_url=vllm_server.base_url, model="derm", api_key=VLLM_API_KEY, concurrency=4)
    assert run_suite(suite, out, endpoint=ep, base=EVAL, show_progress=False, judge=other, limit=6
                     )["judge"]["asked"] == 6  # another judge's verdicts are never reused
    dead = EndpointOptions(base_url="http://127.0.0.1:9/v1", model="judge")
    with pytest.raises(EndpointDown, match="no server answers there"):
        run_suite(suite, tmp_path / "dead", endpoint=ep, base=EVAL, show_progress=False, judge=dead, limit=6)
    assert not (tmp_path / "dead").exists()
