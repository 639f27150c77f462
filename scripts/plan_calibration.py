"""Calibrate ``dermvlm plan`` against what a real QLoRA SFT step holds in memory, on CPU.

For each real-shape build (``dermvlm nano build --like NAME --layers N``) it runs two TRL ``SFTTrainer`` steps the
way ``run_sft`` does (bitsandbytes 4-bit on CPU, LoRA, gradient checkpointing on and off) on one real-size
dermoscopy photo under ``torch.profiler`` and reads the memory timeline by category (parameters, gradients,
optimizer state, activations and temporaries) at the step's peak; then it asks the planner for the same workload
(``plan.memory_bytes`` with the measured sequence length) and reports the error per component. Float32 on CPU
(what CPU training uses); the planner is asked for float32 too, so the comparison is like for like.

    python scripts/plan_calibration.py --out benchmarks/results/plan_calibration.json \\
        --runs qwen2.5-vl-7b:1,2 medgemma-4b:1,2,4 qwen3-vl-4b:1,2 smolvlm:1,2,4

Takes about a minute per run on 2 cores (most of it bitsandbytes quantizing the weights on CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSWER = ("<think>The image shows an asymmetric pigmented lesion with irregular borders, several shades of brown "
          "and a blue-white veil in one part; there is an atypical pigment network and regression structures. "
          "Differential: melanoma, dysplastic naevus, seborrhoeic keratosis. The colour variation and the veil "
          "favour melanoma.</think><answer>melanoma</answer>")


def photo():
    """A real-size dermoscopy photo (1024x768): ../shared/data/isic_cc0 (or DERMVLM_DATA_ROOT) is needed."""
    from PIL import Image

    shared = Path(os.environ.get("DERMVLM_DATA_ROOT") or ROOT.parent / "shared" / "data") / "isic_cc0" / "images"
    sized = [f for f in sorted(shared.glob("*.jpg")) if Image.open(f).size == (1024, 768)]
    if not sized:
        raise SystemExit(f"error: no 1024x768 photo under {shared}; set DERMVLM_DATA_ROOT")
    return Image.open(sized[0]).convert("RGB")


def step_peaks(prof) -> dict[str, float]:
    """GiB at the step's peak from torch's memory profiler: tensors the step created (the weights and adapters
    existed before it), split into LoRA's gradients and Adam state and everything else (activations, temporaries
    such as bitsandbytes' dequantised weights, inputs, logits)."""
    from torch.profiler._memory_profiler import Action, Category, MemoryProfileTimeline

    timeline = MemoryProfileTimeline(prof._memory_profile())
    live: dict = {}
    state = step = peak = peak_state = peak_step = 0.0
    for _, action, (key, version), size in timeline.timeline:
        if action == Action.PREEXISTING:
            continue
        category = timeline.categories.get(key, version)
        is_state = category in (Category.GRADIENT, Category.OPTIMIZER_STATE)
        if action == Action.CREATE:
            live[key] = (size, is_state)
        elif action == Action.DESTROY and key in live:
            size, is_state = live.pop(key)
            size = -size
        else:
            continue
        state += size if is_state else 0
        step += 0 if is_state else size
        if state + step > peak:
            peak, peak_state, peak_step = state + step, state, step
    return {"state_at_peak": peak_state / 2**30, "step_at_peak": peak_step / 2**30, "created_peak": peak / 2**30}


def storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def measure(model_dir: Path, image, gradient_checkpointing: bool, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from torch.profiler import ProfilerActivity, profile
    from trl import SFTTrainer

    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.models.loading import lora_config
    from dermvlm.training.common import load_for_stage
    from dermvlm.training.sft import sft_config

    spec = ModelSpec(name_or_path=str(model_dir), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0},
                     quantization={"load_in_4bit": True, "on_cpu": "use", "compute_dtype": "bfloat16"})
    stage = make_stage(name="sft", use_lora=True, trl={"max_steps": 2, "per_device_train_batch_size": 1,
                                                      "gradient_checkpointing": gradient_checkpointing,
                                                      "save_strategy": "no"})
    args = sft_config(stage, work, 0)
    started = time.perf_counter()
    model, processor = load_for_stage(spec, model_dir, stage)
    load_seconds = time.perf_counter() - started
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
                 "What is the most likely diagnosis of this skin lesion? Think first, then answer."}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    rows = Dataset.from_dict({"images": [[image]] * 2, "messages": [messages] * 2})  # step 2 holds Adam's state
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor,
                         peft_config=lora_config(spec.lora, model))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    seq_len = int(batch["input_ids"].shape[1])
    lora = [p for n, p in trainer.model.named_parameters() if "lora_" in n]
    weights = storage_bytes([*trainer.model.parameters(), *trainer.model.buffers()]) - storage_bytes(lora)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        started = time.perf_counter()
        trainer.train()
        step_seconds = time.perf_counter() - started
    result = {"seq_len": seq_len, "load_seconds": round(load_seconds, 1), "step_seconds": round(step_seconds, 1),
              "weights": round(weights / 2**30, 4), "lora": round(storage_bytes(lora) / 2**30, 4),
              **{k: round(v, 4) for k, v in step_peaks(prof).items()}}
    del trainer, model, prof
    gc.collect()
    torch.manual_seed(0)
    return result


def planned(model_dir: Path, seq_len: int, image, gradient_checkpointing: bool) -> dict[str, float]:
    """The planner's components (GiB) for the measured workload, float32 on CPU, one GPU's formula."""
    from transformers import AutoConfig, AutoImageProcessor

    from dermvlm.config import LoraSpec
    from dermvlm.models.families import get_family
    from dermvlm.models.footprint import footprint, image_geometry
    from dermvlm.plan import GIB, Workload, memory_bytes

    config = AutoConfig.from_pretrained(model_dir)
    fp = footprint(config, str(model_dir))
    geometry = image_geometry(config, AutoImageProcessor.from_pretrained(model_dir), image.size)
    w = Workload(kind="sft", use_lora=True, four_bit=True, double_quant=True, dtype_bytes=4, sequences=1,
                 seq_len=seq_len, logits_tokens=seq_len, images=1, image=geometry,
                 gradient_checkpointing=gradient_checkpointing,
                 lora_targets=LoraSpec().targets(get_family(fp.family)), lora_r=8)
    mem = memory_bytes(fp, w)
    parts = {"weights": (mem["weights"] + mem["weights_trainable"]) / GIB,
             "trainable_state": (mem["trainable_state"] - mem["weights_trainable"]) / GIB,
             "activations": mem["activations"] / GIB}
    return {**parts, "total": sum(parts.values()), "tokens_per_image": geometry.tokens}


# Published peaks of plain transformers + PEFT QLoRA runs (no custom kernels) to hold the GPU formula against:
# LLaMA-Factory's performance comparison (https://github.com/hiyouga/LLaMA-Factory/wiki/Performance-comparison):
# LLaMA2-7B, 4-bit, LoRA rank 8 on all linear layers, gradient checkpointing, FlashAttention-2, A100 40GB, batch 1
# (the context-length table), and batch 4 at length 1024 (the "HF, 4 bits" row, 9 GB). And Unsloth's stated
# minimum VRAM (https://unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements: 8B QLoRA 6 GB)
# which is with Unsloth's own kernels, so the plain-HF formula should lie above it.
PUBLISHED = [
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 1, 1024 tokens", "llama2-7b", 1, 1024, 6.0),
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 1, 2048 tokens", "llama2-7b", 1, 2048, 7.0),
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 1, 4096 tokens", "llama2-7b", 1, 4096, 9.0),
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 1, 8192 tokens", "llama2-7b", 1, 8192, 12.0),
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 1, 16384 tokens", "llama2-7b", 1, 16384, 19.0),
    ("LLaMA-Factory, LLaMA2-7B QLoRA r8, batch 4, 1024 tokens (HF 4-bit row)", "llama2-7b", 4, 1024, 9.0),
    ("Unsloth minimum (own kernels), Llama-3.1-8B QLoRA, batch 1, 2048 tokens", "llama3.1-8b", 1, 2048, 6.0),
]
TEXT_MODELS = {  # published config.json values (meta-llama/Llama-2-7b-hf, meta-llama/Llama-3.1-8B)
    "llama2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "llama3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}


def published_rows() -> list[dict]:
    """The GPU formula (bf16, overhead included, one GPU) for each published run above."""
    from transformers import LlamaConfig

    from dermvlm.models.footprint import ImageGeometry, footprint
    from dermvlm.plan import Workload, memory_bytes, shard

    rows = []
    for label, model, batch, length, gb in PUBLISHED:
        fp = footprint(LlamaConfig(**TEXT_MODELS[model], tie_word_embeddings=False), model)
        w = Workload(kind="sft", use_lora=True, four_bit=True, double_quant=True, dtype_bytes=2, sequences=batch,
                     seq_len=length, logits_tokens=length, images=0, image=ImageGeometry((0, 0), 0, 0),
                     gradient_checkpointing=True, lora_r=8,
                     lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        planned = shard(memory_bytes(fp, w), fp, w, "one GPU", 1, None)["total"]
        rows.append({"run": label, "published_gb": gb, "planned_gib": round(planned, 2),
                     "error": round((planned * 2**30 / 1e9 - gb) / gb, 3)})
    return rows


def compare(row: dict, want: dict) -> None:
    """Fill a run's measured components, the planned ones and the relative error of each."""
    got = row["measured"]
    measured = {"weights": got["weights"] + got["lora"], "trainable_state": got["state_at_peak"],
                "activations": got["step_at_peak"], "total": got["weights"] + got["lora"] + got["created_peak"]}
    row["measured_components"] = {k: round(v, 4) for k, v in measured.items()}
    row["planned"] = {k: round(v, 4) for k, v in want.items()}
    row["error"] = {k: round((want[k] - v) / v, 3) if v else None for k, v in measured.items()}


def readme_tables(report: dict) -> dict[str, str]:
    """The README's two tables (between its ``plan-calibration`` and ``plan-published`` markers)."""
    lines = ["| real shape | layers | GC | sequence (image) tokens | weights GiB measured / planned | "
             "LoRA grads + Adam MiB | activations GiB | peak GiB | peak error |", "|---" * 9 + "|"]
    for r in report.get("runs", []):
        m, p = r["measured_components"], r["planned"]
        lines.append(
            f"| {r['shape']} | {r['layers']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['measured']['seq_len']} ({p['tokens_per_image']}) | {m['weights']:.3f} / {p['weights']:.3f} | "
            f"{m['trainable_state'] * 1024:.1f} / {p['trainable_state'] * 1024:.1f} | "
            f"{m['activations']:.3f} / {p['activations']:.3f} | {m['total']:.3f} / {p['total']:.3f} | "
            f"{r['error']['total']:+.1%} |")
    published = ["| published run | published | planned (GiB) | error |", "|---|---|---|---|"]
    for r in report["published"]:
        published.append(f"| {r['run']} | {r['published_gb']:g} GB | {r['planned_gib']:.1f} | {r['error']:+.0%} |")
    return {"plan-calibration": "\n".join(lines), "plan-published": "\n".join(published)}


def write_readme(report: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for marker, table in readme_tables(report).items():
        start = text.index(f"<!-- {marker}: begin -->\n") + len(f"<!-- {marker}: begin -->\n")
        text = text[:start] + table + "\n" + text[text.index(f"<!-- {marker}: end -->"):]
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", default=["qwen2.5-vl-7b:1,2", "medgemma-4b:1,2,4", "smolvlm:1,2,4"])
    parser.add_argument("--max-pixels", type=int, default=448 * 448, help="Qwen pixel budget of the builds")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--published-only", action="store_true", help="only the published comparison (seconds)")
    parser.add_argument("--readme", action="store_true", help="write the tables of --out's JSON into the README")
    parser.add_argument("--replan", action="store_true", help="recompute the planned side of --out's JSON (the "
                        "builds must still be in --work)")
    args = parser.parse_args()
    if args.readme:
        write_readme(json.loads(args.out.read_text()))
        return
    if args.replan:
        report = json.loads(args.out.read_text())
        report["published"] = published_rows()
        for row in report["runs"]:
            folder = args.work / f"{row['shape']}-{row['layers']}"
            compare(row, planned(folder, row["measured"]["seq_len"], photo(), row["gradient_checkpointing"]))
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from dermvlm.models.real_shapes import build_like, get_shape

    report = {"published": published_rows()}
    print(json.dumps(report["published"], indent=1))
    if args.published_only:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="plan-cal-"))
    image = photo()
    report.update({"machine": {"cpu": platform.processor() or platform.machine(),
                               "threads": os.environ.get("OMP_NUM_THREADS")}, "image_size": image.size, "runs": []})
    for spec in args.runs:
        name, depths = spec.split(":")
        for layers in (int(d) for d in depths.split(",")):
            qwen = get_shape(name).family.startswith("qwen")
            folder = work / f"{name}-{layers}"
            if not (folder / "config.json").is_file():
                build_like(folder, name, layers, max_pixels=args.max_pixels if qwen else None)
            for gc_on in (True, False):
                got = measure(folder, image, gc_on, work / "trainer")
                row = {"shape": name, "layers": layers, "gradient_checkpointing": gc_on, "measured": got}
                compare(row, planned(folder, got["seq_len"], image, gc_on))
                report["runs"].append(row)
                print(json.dumps({k: row[k] for k in ("shape", "layers", "gradient_checkpointing", "error")}),
                      flush=True)
                args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
