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
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pretrain (sft): 0/100 steps"
    assert out[1].startswith("pretrain (sft): 40/100 steps (40%)  loss 2.31, ") and ", ETA " in out[1]
    assert len(out) == 3 and "(done)" not in out[2]  # stopped early: no "(done)"


def test_vllm_start_up_names_the_expected_wait_from_this_machines_last_starts(monkeypatch, tmp_path, capsys):
    import dermvlm.progress as P
    from dermvlm.serving.startup_status import StartupStatus

    monkeypatch.setattr(P, "plain_output", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = StartupStatus("127.0.0.1")
    first.ready()
    assert "starting vLLM on 127.0.0.1 (the first start here: 1-2 min)" in capsys.readouterr().out
    (tmp_path / "dermvlm" / "vllm_startup.json").write_text('{"seconds": [70, 80, 90]}')
    StartupStatus("127.0.0.1").stop()
    assert "starting vLLM on 127.0.0.1 (about 80 s on this machine)" in capsys.readouterr().out


def test_trls_vllm_range_warning_is_one_line_once_and_others_pass(caplog, recwarn):
    import logging
    import warnings

    from dermvlm import known_warnings

    known_warnings._shown.clear()
    known_warnings.install()
    text = ("TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.32.0 installed. We "
            "recommend installing a supported version to avoid compatibility issues.")
    with caplog.at_level(logging.INFO, logger="dermvlm"):
        for lineno in (42, 48, 57):  # TRL warns once per importing module
            warnings.showwarning(UserWarning(text), UserWarning, f"trl/m{lineno}.py", lineno)
        warnings.showwarning(UserWarning("y_pred contains classes not in y_true"), UserWarning, "sk.py", 1)
    notes = [r.getMessage() for r in caplog.records if "vLLM 0.32.0 is newer" in r.getMessage()]
    assert len(notes) == 1 and "0.22.0-0.31.0" in notes[0] and "\n" not in notes[0]
    assert not any("y_pred" in r.getMessage() for r in caplog.records)
