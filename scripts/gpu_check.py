"""The prepared GPU check: what a user's first real run does, at a real checkpoint's widths, in minutes.

On a real-shape build (``dermvlm nano build --like qwen2.5-vl-7b --layers 2``: the 7B's widths, heads, vision tower
and processor, two layers, random weights) it runs every stage kind through ``run_pipeline`` one stage at a time:
the vision stage, then SFT, GRPO++ (curriculum on) and DPO with policy pairs in 4-bit with gradient checkpointing,
on real-size dermoscopy photos at the processor's own pixel budget. For each stage it records the seconds, the
GPU peak (``torch.cuda.max_memory_allocated``) and what ``dermvlm plan`` estimated for it. Then a bf16 LoRA GRPO
step with vLLM generation (colocate) and a vLLM serve of the final model with one question, where vLLM is
installed. One JSON: pass / fail / skipped (with the reason) per step.

    python scripts/gpu_check.py --out gpu_check.json            # on a CUDA machine (scripts/gpu_check.sh)
    python scripts/gpu_check.py --out x.json --dry-run          # CPU: the same steps, 1 layer, 4-bit on CPU,
                                                                # peak RSS instead of GPU peak, no vLLM steps

Nothing here is mocked: a step that cannot run on this machine says why in the JSON instead of passing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the most likely diagnosis of this skin lesion?"
CARRIED = ("transformers", "trl", "peft", "datasets", "bitsandbytes", "pydantic", "ImageHash", "accelerate")


class Skipped(Exception):
    """A step this machine cannot run (the message says why)."""


def step(report: dict[str, Any], name: str, fn, *args):
    started = time.perf_counter()
    try:
        value = fn(*args)
        report[name] = {"status": "pass", "seconds": round(time.perf_counter() - started, 1),
                        **(value if isinstance(value, dict) else {})}
        return value
    except Skipped as why:
        report[name] = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # the check reports every failure and goes on with the next step
        report[name] = {"status": "fail", "seconds": round(time.perf_counter() - started, 1),
                        "error": f"{type(err).__name__}: {err}"[:500], "where": traceback.format_exc()[-1500:]}
    return None


def environment() -> dict[str, Any]:
    """Versions of what the project needs, and every installed requirement of them that is missing or too old
    (what ``gpu_check.sh fetch`` must add to the wheels next time)."""
    import torch
    from packaging.requirements import Requirement

    versions, problems = {}, []
    for name in CARRIED:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        versions[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}: {have} installed")
    from dermvlm.serving.server import vllm_build

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "vllm_build": vllm_build(), "versions": versions, "requirement_problems": problems}


def photos_source() -> dict[str, Any]:
    """Real-size photos: ``isic_cc0`` under DERMVLM_DATA_ROOT or ../shared/data; else the bundled sample."""
    shared = Path(os.environ.get("DERMVLM_DATA_ROOT") or ROOT.parent / "shared" / "data") / "isic_cc0"
    if (shared / "images").is_dir():
        return {"name": "isic", "root": str(shared), "limit_per_split": 8}
    return {"name": "sample", "limit_per_split": 8}


def run_config(work: Path, dry: bool, like: str, layers: int, has_vllm: bool) -> dict[str, Any]:
    """The check's run (``dermvlm.stage_check``): every stage kind, 4-bit + gradient checkpointing."""
    from dermvlm.stage_check import stage_check_config, write_recipe

    recipe = write_recipe(work / "recipe.yaml", photos_source())
    return stage_check_config("gpu-check", like, layers, recipe, work / "runs", cpu=dry,
                              sampler="auto" if has_vllm else "transformers")


def run_stages(cfg, report: dict[str, Any], cuda: bool, gpu_memory: int | None) -> Path | None:
    """Each stage alone (``run_pipeline(to_stage=...)``), its peak (``done.json``: the GPU allocator's on a GPU,
    the process's RSS on CPU) next to the planner's estimate."""
    from dermvlm.pipeline import run_pipeline
    from dermvlm.plan import Hardware, plan_run

    _, plans = plan_run(cfg, Hardware(gpu_memory=gpu_memory), "gpu_check", gpu=cuda)
    planned = {p.name: p for p in plans}
    final = None
    for stage in cfg.stages:
        def one(name=stage.name):
            folder = run_pipeline(cfg, "gpu_check", to_stage=name, evaluate=False)
            done = json.loads((folder.parent / "done.json").read_text())
            peak = (done["gpu_peak_allocated_mb"] if cuda else done["peak_rss_mb"]) / 1024
            plan = planned[name]
            parts = plan.memory["one GPU"]
            allocated = parts["total"] - parts["overhead"]  # what torch's allocator can see of the plan
            return {"steps": done.get("steps"), "peak_gib": round(peak, 2), "peak_is": "GPU" if cuda else "RSS",
                    "gpu_peak_reserved_gib": round((done.get("gpu_peak_reserved_mb") or 0) / 1024, 2),
                    "planned_gib": round(allocated, 2), "planned_parts": parts,
                    "peak_over_planned": round(peak / allocated, 3), "model": str(folder)}

        result = step(report, f"stage_{stage.name}", one)
        if result is None:
            return None
        final = Path(result["model"])
    return final


def release_gpu_cache() -> None:
    """Hand back what the finished stages left in torch's allocator cache before vLLM takes its share."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def grpo_vllm_colocate(cfg, has_vllm: bool, cuda: bool) -> dict[str, Any]:
    """A bf16 LoRA GRPO step generating with vLLM in the training process (TRL's colocate mode)."""
    if not (has_vllm and cuda):
        raise Skipped("vLLM is not installed" if cuda else "no CUDA: TRL's colocate mode needs the CUDA vLLM")
    from dermvlm.pipeline import run_pipeline

    release_gpu_cache()
    grpo = next(s for s in cfg.stages if s.kind == "grpo")
    trl = {**grpo.trl, "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
    bf16 = cfg.model_copy(update={
        "name": cfg.name + "-bf16-vllm", "stages": [grpo.model_copy(update={"trl": trl})],
        "model": cfg.model.model_copy(update={"quantization": cfg.model.quantization.model_copy(
            update={"load_in_4bit": False})})})
    folder = run_pipeline(bf16, "gpu_check", evaluate=False)
    return {"model": str(folder)}


def serve_and_ask(model_dir: Path | None, has_vllm: bool, dry: bool, work: Path) -> dict[str, Any]:
    if model_dir is None:
        raise Skipped("no final model (a stage failed)")
    if not has_vllm:
        raise Skipped("vLLM is not installed on this machine")
    from openai import OpenAI

    from dermvlm.serving.client import ask_about_image
    from dermvlm.serving.server import ServeOptions, VLLMServer

    image = next(iter(sorted((ROOT / "src/dermvlm/sample_data/isic").glob("*.jpg"))))
    if not dry:
        release_gpu_cache()
    options = ServeOptions(model=str(model_dir), served_model_name="check", dtype="float32" if dry else "auto",
                           max_model_len=2048, api_key="check", log_file=str(work / "serve.log"),
                           **({} if dry else {"gpu_memory_utilization": 0.5}))
    with VLLMServer(options) as server:
        client = OpenAI(base_url=server.base_url, api_key="check")
        reply = ask_about_image(client, "check", image, QUESTION, max_tokens=16)
    return {"answer": reply.choices[0].message.content, "prompt_tokens": reply.usage.prompt_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU: everything but CUDA (1 layer)")
    parser.add_argument("--like", default="qwen2.5-vl-7b", help="the real shape (dermvlm nano build --like)")
    parser.add_argument("--layers", type=int, help="text layers and vision blocks (default 2; 1 with --dry-run)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    import torch

    from dermvlm.config import RunConfig, validate

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on CPU")
    has_vllm = importlib.util.find_spec("vllm") is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    report: dict[str, Any] = {"mode": "dry-run (CPU)" if args.dry_run else "gpu", "like": args.like}
    step(report, "environment", environment)
    layers = args.layers or (1 if args.dry_run else 2)
    cfg = validate(run_config(work, args.dry_run, args.like, layers, has_vllm), RunConfig, "gpu_check")
    report["config"] = cfg.model_dump(mode="json")
    gpu_memory = torch.cuda.get_device_properties(0).total_memory if cuda else None
    final = run_stages(cfg, report, cuda, gpu_memory)
    args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a timeout
    step(report, "grpo_bf16_lora_vllm_colocate", grpo_vllm_colocate, cfg, has_vllm, cuda)
    step(report, "vllm_serve_and_ask", serve_and_ask, final, has_vllm, args.dry_run, work)
    report["seconds"] = round(time.perf_counter() - started, 1)
    statuses = [v["status"] for v in report.values() if isinstance(v, dict) and "status" in v]
    report["summary"] = {k: statuses.count(k) for k in ("pass", "fail", "skipped")}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"]))


if __name__ == "__main__":
    main()
