"""Config errors name the file, the field path and what is allowed (asserted text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import ConfigError, RunConfig, load_config
from dermvlm.pipeline import check_stages
from dermvlm.run_check import check_run

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
name: t
model:
  nano: {preset: nano}
stages:
  - {name: sft, trl: {max_steps: 2}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        check_stages(cfg, str(path))
        check_run(cfg, str(path), plan=False)  # what `config check` checks, the pixel budget included


def test_unknown_key_names_file_path_allowed_keys_and_suggestion(tmp_path):
    p = write(tmp_path, GOOD.replace("nano: {preset: nano}", "nano: {preset: nano}\n  lora: {rank: 8}"))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "model.lora.rank: unknown key 'rank' (did you mean 'r'?)" in msg
    assert "allowed keys: alpha, bias, dropout, include_vision, r, target_modules" in msg


def test_wrong_type_and_bad_choice(tmp_path):
    p = write(tmp_path, GOOD.replace("{preset: nano}", "{preset: tiny, seed: abc}") + "seed: [1]\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "model.nano.preset: allowed values are 'nano' or 'micro' (got 'tiny')" in msg
    assert "model.nano.seed: Input should be a valid integer" in msg and "(got 'abc')" in msg
    assert "seed: Input should be a valid integer" in msg


def test_missing_required_and_conflicting_fields(tmp_path):
    p = write(tmp_path, "name: t\nmodel: {name_or_path: x, nano: {}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "stages: required field is missing" in msg
    assert "give exactly one of 'name_or_path'" in msg


def test_missing_file_folder_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"\(it is a folder\)"):
        load_config(tmp_path)
    p = write(tmp_path, "name: t\nmodel: {nano: {preset: nano}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+, column \d+: not valid YAML"):
        load_config(p)
    p = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(p)


def test_trl_field_typo_fails_before_training(tmp_path):
    p = write(tmp_path, GOOD + "  - {name: sft2, trl: {learning_rat: 0.1}}\n")
    cfg = load_config(p, RunConfig)
    with pytest.raises(ConfigError) as err:
        check_stages(cfg, str(p))
    msg = str(err.value)
    assert f"{p}: stages[1] (sft2).trl.learning_rat: unknown SFTConfig field 'learning_rat'" in msg
    assert "(did you mean 'learning_rate'?)" in msg


def test_cli_config_check_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(write(tmp_path, GOOD))])
    assert ok.exit_code == 0 and "ok (1 stages: sft)" in ok.output
    bad = runner.invoke(app, ["config", "check", str(write(tmp_path, GOOD + "serv: {}\n"))])
    assert bad.exit_code == 2
    assert "serv: unknown key 'serv' (did you mean 'serve'?)" in bad.output
