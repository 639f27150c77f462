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
