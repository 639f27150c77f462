"""Experiment tracking: a nano pipeline logs to a real MLflow tracking server (started here on 127.0.0.1 with a
SQLite store) and to W&B in offline mode; the metrics are read back through MLflow's client; an unreachable server
or W&B without a key is refused in one line before anything is written."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from dermvlm.cli import app

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as (url, _):
        yield url


@contextlib.contextmanager
def running_mlflow(work: Path):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend): yields its URL and process."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                             "--default-artifact-root", str(work / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (work / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "MLflow server did not start"
            time.sleep(0.5)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def tiny_config(tmp_path: Path, logging, steps: int = 3) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    cfg.update(name="tracked", output_dir=str(tmp_path / "runs"), logging=logging, evaluate=[])
    cfg["data"]["recipe"] = str(ROOT / "data_recipes" / "sample.yaml")
    cfg["stages"] = [{"name": "sft", "kind": "sft", "use_lora": True, "data": ["reasoning_trace"],
                      "trl": {"max_steps": steps, "per_device_train_batch_size": 2, "logging_steps": 1}}]
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_nano_run_logs_to_mlflow_and_wandb_offline(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from dermvlm.config import RunConfig, load_config
    from dermvlm.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = tiny_config(tmp_path, ["mlflow", "wandb"])
    r = CliRunner().invoke(app, ["pipeline", str(config)])
    assert r.exit_code == 0, r.output
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert {"tracked", "sft"} <= set(runs), sorted(runs)
    parent, stage = runs["tracked"], runs["sft"]
    assert stage.data.tags.get("mlflow.parentRunId") == parent.info.run_id  # each stage nests under the run
    losses = client.get_metric_history(stage.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3] and all(m.value > 0 for m in losses)
    assert parent.info.status == "FINISHED" and stage.info.status == "FINISHED"
    wandb_runs = list((tmp_path / "runs" / "tracked" / "wandb").glob("offline-run-*"))
    assert wandb_runs and any(p.suffix == ".wandb" for p in wandb_runs[0].iterdir()), wandb_runs

    # the evaluation's metrics and plots go to the same MLflow run (what serve_and_evaluate hands over)
    out = tmp_path / "eval"
    out.mkdir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1])
    plt.savefig(out / "per_class.png")
    plt.close()
    cfg = load_config(config, RunConfig)
    tracker = Tracker(["mlflow"], cfg.name, tmp_path / "runs" / "tracked", cfg.model_dump())
    tracker.evaluation("sample", {"metrics": {"types": {"mcq": {"n": 30, "accuracy": 0.4}}}}, out)
    tracker.close()
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tracked'")
    latest = max(runs, key=lambda run: run.info.start_time)
    assert latest.data.metrics["eval/sample/mcq/accuracy"] == pytest.approx(0.4)
    assert [a.path for a in client.list_artifacts(latest.info.run_id, "eval/sample")] == ["eval/sample/per_class.png"]


def test_an_unreachable_server_or_wandb_without_a_key_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    r = CliRunner().invoke(app, ["pipeline", str(tiny_config(tmp_path, "mlflow"))])
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "does not answer" in errors[0] and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    r = CliRunner().invoke(app, ["pipeline", str(tiny_config(tmp_path, "wandb"))])
    assert r.exit_code == 2 and "no W&B API key" in r.output and "WANDB_MODE=offline" in r.output
    assert not (tmp_path / "runs").exists()


def test_a_tracking_server_that_dies_mid_run_is_one_line_naming_it(tmp_path):
    """The server answers at the start (the check passes), then is killed once the stage has logged a step: the
    pipeline stops with one error line naming the server and what to do, no traceback, within MLflow's (shortened)
    retries, and the stage's finished checkpoints stay for the rerun."""
    with running_mlflow(tmp_path / "mlflow") as (url, server):
        config = tiny_config(tmp_path, "mlflow", steps=20)
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "pipeline", str(config)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        train_log = tmp_path / "runs" / "tracked" / "sft" / "train_log.jsonl"
        deadline = time.monotonic() + 300
        while not (train_log.is_file() and train_log.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(server.pid, 9)
        killed, at_step = time.monotonic(), len(train_log.read_text().splitlines())
        out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and errors == lines[-1:], (out[-2000:], err[-3000:])
    assert errors[0].startswith("error: logging: mlflow: the tracking server") and url in errors[0], errors
    assert "during stage sft" in errors[0] and "rerun" in errors[0] and "Traceback" not in out + err
    # MLflow's own failure notices (one per logged batch, and urllib3's per retry) are shown once, not per batch
    assert sum("Failed to log run data" in line for line in lines) <= 1, lines
    assert sum("Retrying" in line for line in out.splitlines()) <= 1, out[-3000:]
    assert time.monotonic() - killed < 120
    assert not (tmp_path / "runs" / "tracked" / "sft" / "done.json").exists()
    print(f"tracking server killed after logged step {at_step}: one line {time.monotonic() - killed:.0f} s later")
