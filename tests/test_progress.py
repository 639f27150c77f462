"""The training display: a stage prints one progress bar, not a metric dict per step; the dicts go to the stage's
train_log.jsonl."""

from __future__ import annotations

import json


def test_a_stage_prints_no_metric_dicts_and_logs_them_to_a_file(nano_dir, recipe_data, tmp_path, capsys):
    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.progress import LOG_FILE
    from dermvlm.training.sft import run_sft

    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    stage = make_stage(name="sft", use_lora=True, trl={"max_steps": 3, "logging_steps": 1,
                                                       "per_device_train_batch_size": 2})
    run_sft(stage, spec, nano_dir, recipe_dataset(recipe_data, ["reasoning_trace"]), tmp_path / "sft")
    shown = capsys.readouterr()
    assert "{'loss'" not in shown.out + shown.err and "'grad_norm'" not in shown.out + shown.err
    logged = [json.loads(line) for line in (tmp_path / "sft" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    assert "train_runtime" in logged[-1]


def test_without_a_terminal_progress_is_plain_lines_with_an_eta(monkeypatch, capsys):
    import dermvlm.progress as P

    monkeypatch.setattr(P, "plain_output", lambda: True)
    line = P.ProgressLine("pretrain (sft)", 100, "steps", every=0.0).start()
    line.update(40, info="loss 2.31")
    line.stop()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pretrain (sft): 0/100 steps"
    assert err[1].startswith("pretrain (sft): 40/100 steps (40%)  loss 2.31, ") and ", ETA " in err[1]
    assert len(err) == 3 and "(done)" not in err[2]  # stopped early: no "(done)"


def test_vllm_start_up_names_the_expected_wait_from_this_machines_last_starts(monkeypatch, tmp_path, capsys):
    import dermvlm.progress as P
    from dermvlm.serving.startup_status import StartupStatus

    monkeypatch.setattr(P, "plain_output", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = StartupStatus("127.0.0.1")
    first.ready()
    assert "starting vLLM on 127.0.0.1 (the first start here: 1-2 min)" in capsys.readouterr().err
    (tmp_path / "dermvlm" / "vllm_startup.json").write_text('{"seconds": [70, 80, 90]}')
    StartupStatus("127.0.0.1").stop()
    assert "starting vLLM on 127.0.0.1 (about 80 s on this machine)" in capsys.readouterr().err
