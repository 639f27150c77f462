"""The multi-process path for real: `accelerate launch --num_processes 2` (CPU, gloo) runs the nano pipeline (SFT,
GRPO++ with the curriculum and the synced reference, DPO with policy pairs); data and the base model are built once,
both ranks train (the global batch is two devices' worth), DPO samples each prompt once across the ranks, one valid
model is saved, and vLLM serves it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CONFIG = """\
name: mp
seed: 0
output_dir: {out}
model:
  nano: {{preset: nano, seed: 0}}
  dtype: float32
  lora: {{r: 8, alpha: 16, dropout: 0.0}}
data:
  recipe: {root}/data_recipes/sample.yaml
evaluate: []
stages:
  - {{name: sft, kind: sft, use_lora: true, data: [reasoning_trace],
      trl: {{max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2}}}}
  - {{name: grpo, kind: grpo, use_lora: true, rewards: {{format: 0.2, partial_credit: 1.0}},
      plus: {{curriculum: true, zero_variance_filter: false, ref_sync_steps: 1}},
      trl: {{max_steps: 2, num_generations: 2, per_device_train_batch_size: 2, max_completion_length: 24,
            learning_rate: 1.0e-4}}}}
  - {{name: dpo, kind: dpo, use_lora: true, pairs_from: policy, policy_samples: 2, min_margin: 0.0, max_prompts: 6,
      sample_max_new_tokens: 24, trl: {{max_steps: 2, learning_rate: 5.0e-5, per_device_train_batch_size: 2}}}}
"""


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    cfg = tmp / "mp.yaml"
    cfg.write_text(CONFIG.format(out=tmp / "runs", root=ROOT))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dermvlm.cli", "pipeline", str(cfg)],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "mp", proc.stdout + proc.stderr


def test_both_ranks_finish_and_data_and_base_are_built_once(two_rank_run):
    _, log = two_rank_run
    assert log.count("final model: ") == 2  # each rank reached the end
    assert log.count("building the run's data") == 1 and log.count("building the qwen2_5_vl nano model") == 1


def test_both_ranks_train_one_global_batch(two_rank_run):
    from datasets import load_from_disk

    run, _ = two_rank_run
    n = len(load_from_disk(str(run / "data" / "reasoning_trace"))["train"])
    history = json.loads((run / "sft" / "log_history.json").read_text())
    per_rank_steps = math.ceil(math.ceil(n / 2) / 2)  # the distributed sampler gives each rank half the rows
    assert history[-1]["epoch"] == pytest.approx(2 / per_rank_steps, rel=1e-6)


def test_the_curriculum_plans_alike_on_both_ranks(two_rank_run):
    run, log = two_rank_run
    plan = json.loads((run / "grpo" / "plan.json").read_text())
    assert plan["info"]["difficulty_scored"] > 0 and None not in plan["plan"]
    assert log.count("GRPO++ grpo:") == 2  # both ranks planned (and scored the same prompts in the same order)


def test_dpo_policy_pairs_are_sampled_once_across_ranks(two_rank_run):
    run, _ = two_rank_run
    stats = json.loads((run / "dpo" / "pairs_stats.json").read_text())
    assert stats["processes"] == 2 and stats["prompts"] == 6 and stats["pairs"] == 6
    assert not list((run / "dpo").glob(".pairs-part-*"))  # the shares were joined and removed
    assert not list(run.glob("*/.*.saving"))


def test_the_one_saved_model_loads_and_is_served(two_rank_run, isic_images):
    import openai
    from safetensors.torch import load_file

    from dermvlm.recipes.text import OPEN_QUESTIONS
    from dermvlm.serving.client import ask_about_image
    from dermvlm.serving.server import ServeOptions, VLLMServer

    run, _ = two_rank_run
    adapter = load_file(str(run / "dpo" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())  # not empty partitions
    model = run / "dpo" / "model"
    with VLLMServer(ServeOptions(model=str(model), served_model_name="mp", dtype="float32",
                                 log_file=str(run / "server.log"))) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="EMPTY", max_retries=0, timeout=120)
        r = ask_about_image(client, "mp", isic_images[0], OPEN_QUESTIONS[0], max_tokens=8)
    assert r.usage.prompt_tokens > 16 and r.usage.completion_tokens > 0
