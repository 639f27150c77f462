"""FSDP2 for real on CPU: 2 processes (torchrun, gloo) with the settings of ``configs/accelerate/fsdp.yaml`` run the
project's own stages (LoRA SFT, then GRPO++ with the curriculum and the synced reference adapter, then DPO on policy
pairs) through accelerate's FSDP2 path: the model loaded with low-RAM placeholders on rank 1, sharded per decoder
layer by ``fully_shard``, rank 0's weights broadcast, trained, gathered in full at save and resumed from an FSDP
checkpoint. Inside, each process reports what it holds (DTensors whose local shard is smaller than the tensor), what
its forward passes give and how the reference adapter moves; the tests compare that with what was saved.

accelerate runs FSDP only on accelerators: on CPU it keeps DDP (``MULTI_CPU``) and drops the FSDP plugin
(ENVIRONMENT.md, "FSDP on CPU"). Everything behind that gate runs on CPU with gloo, so the worker lifts that one
gate (``_lift_accelerate_cpu_gate``) and nothing else. This file is both the tests and, run by torchrun, the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
CLASSES = ["melanoma", "melanocytic_nevus"]
pytestmark = pytest.mark.slow


def fsdp_env(config: Path) -> dict[str, str]:
    """What ``accelerate launch --config_file config`` puts in each process's environment for FSDP (its
    ``fsdp_config`` keys as ``FSDP_*`` variables), with mixed precision off on CPU."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    env = {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "no"}
    for key, value in cfg["fsdp_config"].items():
        env[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, nano_dir, recipe_data):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = os.environ | fsdp_env(FSDP_CONFIG) | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", __file__, str(nano_dir),
                           str(recipe_data), str(out)], capture_output=True, text=True, env=env, timeout=900,
                          cwd=out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    reports = [json.loads((out / f"report-{r}.json").read_text()) for r in (0, 1)]
    return out, reports


def test_the_run_is_fsdp2_and_every_stage_trains_sharded_parameters(fsdp_run):
    _, reports = fsdp_run
    for r, report in enumerate(reports):
        assert report["world"] == 2 and report["sharding"] == "fsdp" and report["distributed_type"] == "FSDP"
        for stage in ("sft", "sft-resumed", "grpo", "dpo"):
            seen = report[stage]
            assert seen["fsdp_version"] == 2
            # every parameter is a DTensor; every one with more than one row holds half its rows here
            assert seen["dtensors"] == seen["params"] > 0, (r, stage, seen)
            assert seen["smaller_local_shard"] == seen["multi_row"] > 0, (r, stage, seen)
            assert seen["local_numel"] < 0.6 * seen["full_numel"], (r, stage, seen)


def test_low_ram_loading_leaves_zeros_beyond_rank_0_and_the_broadcast_fills_them(fsdp_run):
    _, (r0, r1) = fsdp_run
    assert r0["loaded_nonzero_fraction"] > 0.9 and r1["loaded_nonzero_fraction"] == 0.0
    # the curriculum's forward pass on the sharded model equals the unsharded model's, on both processes
    assert r0["grpo"]["forward_max_abs_diff"] < 1e-4 and r1["grpo"]["forward_max_abs_diff"] < 1e-4


def test_the_vision_stage_refusal_is_right(fsdp_run):
    """The vision stage embeds the class descriptions with the language model as loaded, before any trainer: under
    FSDP rank 1 embeds them with zeros (the ranks disagree), and ``config check`` refuses the stage in one line."""
    from dermvlm.config import RunConfig
    from dermvlm.launch import launch_problems, sharding_from_config

    _, (r0, r1) = fsdp_run
    assert r0["descriptions_equal_across_ranks"] is False and r1["descriptions_equal_across_ranks"] is False
    cfg = RunConfig.model_validate({"name": "v", "model": {"nano": {"preset": "nano"}},
                                    "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml")},
                                    "stages": [{"name": "vision", "kind": "vision"}]})
    problems = launch_problems(cfg, sharding_from_config(FSDP_CONFIG), "v.yaml")
    assert len(problems) == 1 and "cannot run under FSDP" in problems[0] and "stages[0] (vision)" in problems[0]


def test_the_reference_adapter_moves_by_its_ema_under_sharding(fsdp_run):
    _, reports = fsdp_run
    for report in reports:
        grpo = report["grpo"]
        assert grpo["ema_checks"] == grpo["steps"] == 2
        assert grpo["ema_max_abs_error"] < 1e-6 and grpo["ref_moved"] > 1e-5


def test_the_saved_adapters_and_merged_models_equal_the_gathered_weights(fsdp_run):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    out, _ = fsdp_run
    stages = [("sft", None), ("grpo", "sft"), ("dpo", "grpo")]
    for stage, parent in stages:
        gathered = load_file(str(out / f"gathered-{stage}.safetensors"))
        saved = load_file(str(out / stage / "adapter" / "adapter_model.safetensors"))
        assert set(saved) == set(gathered) and len(saved) > 0
        for key, tensor in saved.items():
            assert torch.equal(tensor, gathered[key]), (stage, key)
        if stage != "grpo":  # (GRPO's nano groups carry no gradient: only its lora_A decays)
            assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k), stage  # it trained
        if parent is None:
            continue
        base, merged = (dict(AutoModelForImageTextToText.from_pretrained(str(out / s / "model")).named_parameters())
                        for s in (parent, stage))
        scale = LORA["alpha"] / LORA["r"]
        checked = 0
        for key, a in saved.items():
            if ".lora_A." not in key:
                continue
            b = saved[key.replace(".lora_A.", ".lora_B.")]
            weight = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            expected = base[weight].detach() + scale * (b @ a)
            assert torch.allclose(merged[weight].detach(), expected, atol=1e-6), (stage, weight)
            checked += 1
        assert checked == sum(".lora_A." in k for k in saved) > 0


def test_a_killed_fsdp_stage_resumes_from_its_checkpoint_to_the_same_adapter(fsdp_run):
    import torch
    from safetensors.torch import load_file

    from dermvlm.training.resume import last_checkpoint

    out, reports = fsdp_run
    # accelerate's FSDP checkpoints (full state dict for SFT, sharded for DPO) are complete ones
    assert (out / "sft" / "checkpoints" / "checkpoint-2" / "optimizer.bin").is_file()
    assert (out / "dpo" / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert last_checkpoint(out / "sft").endswith("checkpoint-2") and last_checkpoint(out / "dpo").endswith("-2")
    for report in reports:
        assert report["sft-resumed"]["start_step"] == 1 and report["sft-resumed"]["steps"] == 1
    whole = load_file(str(out / "sft" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(out / "sft-resumed" / "adapter" / "adapter_model.safetensors"))
    assert set(whole) == set(resumed)
    for key in whole:
        assert torch.allclose(whole[key], resumed[key], atol=1e-6), key


def test_policy_pairs_are_sampled_by_the_process_that_holds_the_weights(fsdp_run):
    out, _ = fsdp_run
    stats = json.loads((out / "dpo" / "pairs_stats.json").read_text())
    assert stats["sampler"] == "transformers" and stats["processes"] == 1 and stats["prompts"] == 6
    assert not list((out / "dpo").glob(".pairs-part-*"))


# ---- the worker: run by torchrun, one per process ----------------------------------------------------------------


def _lift_accelerate_cpu_gate() -> None:
    """Let accelerate take its FSDP path on CPU: its state keeps ``MULTI_CPU`` and no FSDP plugin there."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def lifted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    AcceleratorState.__init__ = lifted


def _full(param):
    return param.full_tensor() if hasattr(param, "full_tensor") else param.detach().clone()


def _adapter(model, name: str) -> dict:
    """The full tensors of one LoRA adapter (a collective: every process calls it)."""
    return {n: _full(p).detach().clone() for n, p in model.named_parameters() if f".{name}." in n}


def _inspector(stage: str, out: Path, report: dict, probe: dict | None = None, ema_alpha: float | None = None):
    """A callback that records what this process holds and computes while ``stage`` trains."""
    import torch
    from torch.distributed.tensor import DTensor
    from transformers import TrainerCallback

    seen: dict = {"steps": 0}
    report[stage] = seen

    class Inspector(TrainerCallback):
        ref = policy = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from accelerate.state import AcceleratorState

            params = list(model.parameters())
            sharded = [p for p in params if isinstance(p, DTensor)]
            seen.update(params=len(params), dtensors=len(sharded), start_step=state.global_step,
                        fsdp_version=AcceleratorState().fsdp_plugin.fsdp_version,
                        multi_row=sum(p.shape[0] > 1 for p in sharded),
                        smaller_local_shard=sum(p.to_local().numel() < p.numel() for p in sharded if p.shape[0] > 1),
                        local_numel=sum(p.to_local().numel() for p in sharded),
                        full_numel=sum(p.numel() for p in params))
            if probe is not None:  # a forward pass of the sharded model, as the curriculum runs it
                model.eval()
                with torch.no_grad():
                    logits = model(**probe["inputs"]).logits
                model.train()
                seen["forward_max_abs_diff"] = float((logits - probe["logits"]).abs().max())
            if ema_alpha is not None:
                self.ref, seen["ema_checks"], seen["ema_max_abs_error"] = _adapter(model, "ref"), 0, 0.0
                self.ref0 = self.ref

        def _check_ema(self, model):
            if self.policy is None:
                return
            ref = _adapter(model, "ref")
            for name, value in ref.items():
                policy = self.policy[name.replace(".ref.", ".default.")]
                expected = (1 - ema_alpha) * self.ref[name] + ema_alpha * policy
                seen["ema_max_abs_error"] = max(seen["ema_max_abs_error"], float((value - expected).abs().max()))
            seen["ema_checks"] += 1
            seen["ref_moved"] = max(float((ref[n] - self.ref0[n]).abs().max()) for n in ref)
            self.ref, self.policy = ref, None

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if ema_alpha is not None:
                self._check_ema(model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen["steps"] += 1
            if ema_alpha is not None:  # after the optimizer step, before the reference's update (a later callback)
                self.policy = _adapter(model, "default")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            from safetensors.torch import save_file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            if ema_alpha is not None:
                self._check_ema(model)
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if full:  # rank 0: the adapter as peft names its saved tensors
                adapter = {k.replace(".default", ""): v.contiguous() for k, v in full.items() if ".default." in k}
                save_file(adapter, str(out / f"gathered-{stage}.safetensors"))

    return Inspector()


def _probe(spec, model_path: Path, dataset) -> dict:
    """Inputs for one GRPO prompt and the logits of the unsharded model (rank 0 loads real weights)."""
    import torch

    from dermvlm.models.loading import load_model

    model, processor = load_model(spec, model_path)
    row = dataset[0]
    text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    inputs = dict(processor(text=[text], images=row["images"], return_tensors="pt"))
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    return {"inputs": inputs, "logits": logits}


def worker(nano: Path, data: Path, out: Path) -> None:
    import shutil

    import torch
    import torch.distributed as dist

    _lift_accelerate_cpu_gate()
    from accelerate.state import PartialState

    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.distributed import barrier, init_processes
    from dermvlm.knowledge import load_graph
    from dermvlm.launch import sharding_from_env
    from dermvlm.models.families import family_for
    from dermvlm.models.loading import load_model
    from dermvlm.pipeline import stage_dataset
    from dermvlm.ranks import rank, world_size
    from dermvlm.training.dpo import run_dpo
    from dermvlm.training.grpo import run_grpo
    from dermvlm.training.sft import run_sft
    from dermvlm.training.vision import description_embeddings

    init_processes()
    me = rank()
    report: dict = {"world": world_size(), "sharding": sharding_from_env()}
    spec = ModelSpec(name_or_path=str(nano), dtype="float32", lora=LORA)

    # loading as every stage loads (FSDP's cpu_ram_efficient_loading), and the vision stage's pre-trainer forward
    model, processor = load_model(spec, nano)
    params = list(model.parameters())
    report["loaded_nonzero_fraction"] = sum(int(p.count_nonzero()) for p in params) / sum(p.numel() for p in params)
    embeddings = description_embeddings(model, family_for(model), processor, load_graph(), CLASSES, "cpu")
    both = [None, None]
    dist.all_gather_object(both, embeddings)
    report["descriptions_equal_across_ranks"] = bool(torch.allclose(both[0], both[1]))
    del model, params

    sft = make_stage(name="sft", kind="sft", use_lora=True, data=["reasoning_trace"],
                     trl={"max_steps": 2, "save_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 2})
    rows = stage_dataset(sft, data, "sft")
    run_sft(sft, spec, nano, rows, out / "sft", callbacks=[_inspector("sft", out, report)])
    report["distributed_type"] = PartialState().distributed_type.name
    # a kill after step 1: the stage folder as it was then (its first checkpoint), run again
    if me == 0:
        shutil.copytree(out / "sft" / "checkpoints" / "checkpoint-1",
                        out / "sft-resumed" / "checkpoints" / "checkpoint-1")
    barrier("the copied checkpoint")
    run_sft(sft, spec, nano, rows, out / "sft-resumed", callbacks=[_inspector("sft-resumed", out, report)])

    grpo = make_stage(name="grpo", kind="grpo", use_lora=True, rewards={"format": 0.2, "partial_credit": 1.0},
                      plus={"curriculum": True, "zero_variance_filter": False, "ref_sync_steps": 1,
                            "ref_sync_alpha": 0.5},
                      # the nano policy's groups are rewarded alike (no gradient): weight decay moves the policy,
                      # so the reference has something to follow
                      trl={"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
                           "max_completion_length": 16, "learning_rate": 0.1, "weight_decay": 0.5})
    prompts = stage_dataset(grpo, data, "grpo")
    probe = _probe(spec, out / "sft" / "model", prompts) if me == 0 else None
    both = [None, None]
    dist.all_gather_object(both, probe)
    run_grpo(grpo, spec, out / "sft" / "model", prompts, out / "grpo",
             callbacks=[_inspector("grpo", out, report, both[0], ema_alpha=0.5)])

    dpo = make_stage(name="dpo", kind="dpo", use_lora=True, pairs_from="policy", sampler="transformers",
                     policy_samples=2, min_margin=0.0, max_prompts=6, sample_max_new_tokens=12,
                     trl={"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 2})
    os.environ["FSDP_STATE_DICT_TYPE"] = "SHARDED_STATE_DICT"  # the other kind of FSDP checkpoint, for one stage
    run_dpo(dpo, spec, out / "grpo" / "model", stage_dataset(dpo, data, "dpo"), out / "dpo",
            callbacks=[_inspector("dpo", out, report)])
    (out / f"report-{me}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    worker(*(Path(a) for a in sys.argv[1:4]))
