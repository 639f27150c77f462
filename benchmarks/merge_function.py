"""Does merging a QLoRA adapter change the model's function? Measured on the logits, not per element.

A Qwen2.5-VL with the 7B checkpoint's widths (text hidden 3584, intermediate 18944, 28 heads, 4 KV heads; vision
hidden 1280, out 3584; ``--layers`` text layers, one vision block; the nano build's tokenizer, processor and
vocabulary; random N(0, 0.02) weights stored in bfloat16 like a real checkpoint) goes through three QLoRA stages
trained for real by the project's ``run_sft`` (bitsandbytes NF4 with double quantisation on CPU, r 32, alpha 64: the
7B config's LoRA), each loading in 4-bit the bfloat16 folder the stage before it merged into, as the pipeline does
with a ``*-qlora.yaml`` config (``save_stage_model`` merges into the unquantized base in ``model.dtype`` bfloat16).
The stages' learning rates give the same sum of learning rates over their steps as the 7B config's GRPO++
(1e-5 x 800, cosine), SFT (1e-4 x 600, cosine) and DPO (5e-6 x 400) stages, so that the updates have comparable
sizes (all three are SFT on the bundled sample's rows: GRPO and DPO cannot run at this width here).

For each stage, over held-out rows (the recipe's val split, real sample images), teacher-forced on the answer tokens,
every model evaluated in float32 (only the weights differ), against the reference **R = the adapter on the 4-bit
base it was trained on** (every linear layer but the head dequantized from NF4, plus ``scale * B @ A``; checked once
against peft on the bitsandbytes model):

- (a) the pipeline's merge: the adapter merged into the unquantized base in bfloat16 (``models/merge.py``);
- (b) ``dermvlm model merge``'s default: the same in float32;
- (c) dequantize, then merge: the dequantized NF4 base (every linear layer) plus the update, stored in bfloat16;
- (d) (a) re-quantized to NF4: what the next QLoRA stage (or a 4-bit server) computes with.

Numbers per variant: KL(R || variant) per answer token, greedy-token agreement with R (at every answer position,
and at the positions where the adapter changed R's greedy token), the held-out loss, the logit change error
``|z_v - z_R| / |z_R - z_base4|`` relative to the adapter's own change, and the share of the adapter's loss reduction
kept. For scale: the adapter's own KL (R against the 4-bit base) and NF4's own (the 4-bit base against the
unquantized one). Update sizes ``|scale * B @ A| / |W|`` per adapted matrix. CPU, 2 shared cores: about 10 minutes
a stage.

    python benchmarks/merge_function.py [--layers 1] [--stages 2] [--steps 4] [--held-out 2] [--out FILE]
    python benchmarks/merge_function.py --run runs/nano-cpu   # update sizes of a pipeline run's LoRA stages
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 32, "alpha": 64, "dropout": 0.0}
# the 7B config's stages: sum of the learning rate over the steps (cosine: half of lr x steps)
CONFIG_LR_SUMS = {"grpo": 1e-5 * 800 / 2, "sft": 1e-4 * 600 / 2, "dpo": 5e-6 * 400}
STAGES = [("grpo", ["reasoning_trace"]), ("sft", ["conversation", "reasoning_trace"]),
          ("dpo", ["open_diagnosis", "mcq"])]
HELD_OUT = ["reasoning_trace", "open_diagnosis"]  # the recipe's val rows (its test split is the evaluation's)
TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
VISION = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584, "depth": 1,
          "fullatt_block_indexes": [0]}


def build_wide(out: Path, layers: int, seed: int = 0) -> Path:
    """The nano build with the 7B checkpoint's widths and ``layers`` text layers, stored in bfloat16."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from dermvlm.models.nano import build_nano

    nano = build_nano(out.with_name("nano"), "nano", seed=seed)
    fields = AutoConfig.from_pretrained(str(nano)).to_dict()
    fields["text_config"].update(TEXT, num_hidden_layers=layers, layer_types=["full_attention"] * layers)
    fields["vision_config"].update(VISION)
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    AutoProcessor.from_pretrained(str(nano)).save_pretrained(str(out))
    return out


def held_out_batch(processor, rows) -> list[dict]:
    """Each row's conversation as model inputs, with the last answer's positions (teacher forcing)."""
    out = []
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = processor.apply_chat_template(row["messages"], tokenize=False)
        inputs = dict(processor(text=[full], images=row["images"], return_tensors="pt"))
        start = processor(text=[prompt], images=row["images"], return_tensors="pt")["input_ids"].shape[1]
        out.append({"inputs": inputs, "start": start})
    return out


def logits_of(model, batch) -> list:
    """Answer-position logits (each predicting the next answer token), per row."""
    import torch

    with torch.no_grad():
        return [model(**item["inputs"]).logits[0, item["start"] - 1:-1].float() for item in batch]


def logits_of_targets(batch) -> list:
    """The answer tokens of each row (what the answer positions predict)."""
    return [item["inputs"]["input_ids"][0][item["start"]:] for item in batch]


def kl(z_p, z_q) -> float:
    """Mean KL(p || q) per position, from logits."""
    import torch.nn.functional as F

    return float(F.kl_div(F.log_softmax(z_q, -1), F.log_softmax(z_p, -1), log_target=True, reduction="batchmean"))


def compare(z_base, z_true, z_var, targets) -> dict:
    """``z_var`` against ``z_true`` (the reference), with ``z_base`` (the reference without its adapter) for scale."""
    import torch
    import torch.nn.functional as F

    base, true, var, tgt = (torch.cat(x) for x in (z_base, z_true, z_var, targets))
    loss = {k: float(F.cross_entropy(z, tgt)) for k, z in (("base", base), ("true", true), ("variant", var))}
    flipped = base.argmax(-1) != true.argmax(-1)
    agree = var.argmax(-1) == true.argmax(-1)
    gain = loss["base"] - loss["true"]
    return {"kl_vs_reference": float(f"{kl(true, var):.3g}"),
            "greedy_agreement": round(float(agree.float().mean()), 4),
            "adapter_flips": int(flipped.sum()),
            "flips_kept": round(float(agree[flipped].float().mean()), 4) if flipped.any() else None,
            "dlogits_rel_error": round(float((var - true).norm() / (true - base).norm()), 4),
            "loss_reference": round(loss["true"], 4), "loss_variant": round(loss["variant"], 4),
            "loss_gain_kept": round((loss["base"] - loss["variant"]) / gain, 4) if gain else None}


class Update:
    """A saved adapter's update ``scale * B @ A`` per adapted matrix (in-memory names), computed when asked."""

    def __init__(self, adapter_dir: Path):
        from safetensors.torch import load_file

        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        self.scale = cfg["lora_alpha"] / cfg["r"]
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
        self.factors = {key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"):
                        (tensors[key.replace(".lora_A.", ".lora_B.")], a)
                        for key, a in tensors.items() if ".lora_A." in key}

    def __getitem__(self, name: str):
        """The update of ``name``; 0 for a matrix the adapter does not touch."""
        if name not in self.factors:
            return 0.0
        b, a = self.factors[name]
        return (self.scale * (b.double() @ a.double())).float()


class Stored:
    """The matrices as a model folder stores them (bfloat16), read one at a time by their in-memory names."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.file = safe_open(str(folder / "model.safetensors"), "pt")

    def __getitem__(self, name: str):
        # in memory model.language_model.* and model.visual.*; on disk model.* and visual.*
        key = name.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        return self.file.get_tensor(key)


def nf4(weight):
    """``weight`` quantized to NF4 as ``load_in_4bit`` does (blocks of 64, double quantisation), dequantized to
    float32 (what a float32-compute 4-bit linear multiplies by)."""
    import bitsandbytes.functional as bnb

    packed, state = bnb.quantize_4bit(weight.float(), blocksize=64, quant_type="nf4", compress_statistics=True)
    return bnb.dequantize_4bit(packed, state).float()


class Evaluator:
    """One float32 model whose adapted matrices are set, variant by variant, then run on the held-out rows."""

    def __init__(self, folder: Path, batch: list[dict]):
        import torch
        from transformers import AutoModelForImageTextToText

        self.model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.params = dict(self.model.named_parameters())
        # what ``load_in_4bit`` quantizes: every linear layer but the output head
        self.names = sorted(f"{n}.weight" for n, m in self.model.named_modules()
                            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
        self.batch = batch

    def logits(self, weight_of) -> list:
        """``weight_of(name)``: the matrix to use (any dtype), set one at a time."""
        import torch

        with torch.no_grad():
            for n in self.names:
                self.params[n].copy_(weight_of(n))
        return logits_of(self.model, self.batch)


def relative_sizes(update: Update, base: Stored) -> dict:
    rel = [float(update[n].norm() / base[n].float().norm()) for n in update.factors]
    return {"median": float(f"{statistics.median(rel):.3g}"), "min": float(f"{min(rel):.3g}"),
            "max": float(f"{max(rel):.3g}"), "matrices": len(rel)}


def run_update_sizes(run: Path) -> dict:
    """``|scale * B @ A| / |W|`` of every LoRA stage of a finished pipeline run, against the folder it trained on."""
    from dermvlm.models.merge import adapter_base

    return {adapter.parent.name: relative_sizes(Update(adapter), Stored(Path(adapter_base(adapter))))
            for adapter in sorted(run.glob("*/adapter")) if (adapter / "adapter_config.json").is_file()}


def peft_on_4bit_logits(folder: Path, adapter: Path, batch: list[dict]) -> list:
    """The reference as peft and bitsandbytes compute it: ``folder`` loaded in NF4 (float32 compute), the adapter
    on it. In training mode (nothing here drops out): in eval mode bitsandbytes 0.50.2 repacks 4-bit weights for
    AVX512-BF16 CPUs and fails on a width that is not a multiple of its block (the 7B vision MLP's 3420)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32, device_map="cpu",
                                                        quantization_config=quant)
    return logits_of(PeftModel.from_pretrained(model, str(adapter)).train(), batch)


def stage_variants(ev: Evaluator, base: Stored, merged: Stored, update: Update, targets: list) -> tuple[dict, list]:
    """Every variant of one stage against its reference (the adapter on the 4-bit base); the reference's logits."""
    import torch

    z_full = ev.logits(base.__getitem__)
    z_base4 = ev.logits(lambda n: nf4(base[n]))
    z_ref = ev.logits(lambda n: nf4(base[n]) + update[n])
    variants = {
        "a_bf16_merge_into_unquantized_base": ev.logits(merged.__getitem__),
        "b_float32_merge_into_unquantized_base": ev.logits(lambda n: base[n].float() + update[n]),
        "c_dequantize_then_merge_bf16": ev.logits(lambda n: (nf4(base[n]) + update[n]).to(torch.bfloat16)),
        "d_a_requantized_nf4": ev.logits(lambda n: nf4(merged[n])),
    }
    out = {name: compare(z_base4, z_ref, z, targets) for name, z in variants.items()}
    out["scale"] = {"adapter_kl_reference_vs_4bit_base": float(f"{kl(torch.cat(z_ref), torch.cat(z_base4)):.3g}"),
                    "nf4_kl_unquantized_vs_4bit_base": float(f"{kl(torch.cat(z_full), torch.cat(z_base4)):.3g}")}
    return out, z_ref


def git_commit() -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    import torch

    from dermvlm.training.preload import preload_trainers

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--stages", type=int, default=2, choices=[1, 2, 3], help="the first N of GRPO++, SFT, DPO")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--held-out", type=int, default=2, help="val rows of each held-out kind")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "merge_function.json"))
    ap.add_argument("--run", type=Path, help="only the update sizes of a finished pipeline run's LoRA stages")
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_update_sizes(args.run), indent=1))
        return
    torch.set_num_threads(2)
    torch.manual_seed(0)
    preload_trainers()
    work = Path(tempfile.mkdtemp(prefix="merge-function-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def measure(args, work: Path) -> dict:
    """Build, train the stages, compare the variants; the record."""
    import torch
    from datasets import concatenate_datasets

    from dermvlm.config import ModelSpec, RecipeConfig, load_config, make_stage
    from dermvlm.devices import release_memory
    from dermvlm.models.loading import load_processor
    from dermvlm.recipes.build import build
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.sft import run_sft

    started = time.perf_counter()
    base_dir = build_wide(work / "base", args.layers)
    data = work / "data"
    build(load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig), data, progress=False)
    held = held_out_batch(load_processor(base_dir), concatenate_datasets(
        [recipe_dataset(data, [kind], "val").select(range(args.held_out)) for kind in HELD_OUT]))
    targets = logits_of_targets(held)
    spec = ModelSpec(name_or_path=str(base_dir), dtype="bfloat16", lora=LORA,
                     quantization={"load_in_4bit": True, "on_cpu": "use", "compute_dtype": "float32"})

    folders, rows, ev, check = [base_dir], [], None, None
    for name, kinds in STAGES[:args.stages]:
        lr = CONFIG_LR_SUMS[name] / args.steps
        stage = make_stage(name=name, kind="sft", use_lora=True, data=kinds,
                           trl={"max_steps": args.steps, "learning_rate": lr, "per_device_train_batch_size": 2,
                                "save_steps": 10_000})
        t0 = time.perf_counter()
        result = run_sft(stage, spec, folders[-1], recipe_dataset(data, kinds), work / name)
        seconds = round(time.perf_counter() - t0, 1)
        release_memory()
        update, base, merged = Update(result.adapter_dir), Stored(folders[-1]), Stored(result.model_dir)
        if ev is None:
            ev = Evaluator(base_dir, held)
        variants, z_ref = stage_variants(ev, base, merged, update, targets)
        rows.append({"stage": name, "kinds": kinds, "learning_rate": lr, "steps": args.steps,
                     "train_seconds": seconds, "loss_first": result.losses()[0], "loss_last": result.losses()[-1],
                     "update_size": relative_sizes(update, base), "variants": variants})
        print(json.dumps(rows[-1]), flush=True)
        if check is None:  # the float32 reference is what peft computes on the bitsandbytes model
            z_peft = peft_on_4bit_logits(folders[-1], result.adapter_dir, held)
            check = float(max((a - b).abs().max() for a, b in zip(z_ref, z_peft, strict=True)))
            print(f"reference vs peft on bitsandbytes: max |logit difference| {check:.3g}", flush=True)
            release_memory()
        folders.append(result.model_dir)
    return {"benchmark": "merge_function", "commit": git_commit(), "seed": 0, "layers": args.layers,
            "steps": args.steps, "lora": LORA, "held_out_rows": len(held), "held_out_kinds": HELD_OUT,
            "answer_tokens": int(sum(t.numel() for t in targets)),
            "reference_check_max_abs_logit_diff_vs_peft_on_bnb": float(f"{check:.3g}"),
            "stages": rows, "seconds": round(time.perf_counter() - started, 1),
            "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}


if __name__ == "__main__":
    main()
