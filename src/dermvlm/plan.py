"""Memory and time planner: per stage of a run config, what one GPU holds at the step's peak (weights, trainable
state, activations, vLLM's share, CUDA overhead) under one GPU, DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP, and
roughly how long the stage takes.

Everything is computed from the model's shapes (``models/footprint.py``, meta device, nothing downloaded) and the
stage's trainer settings as TRL will read them. The activation model counts what autograd keeps per token and
layer for the code this project runs (LoRA on frozen, possibly 4-bit, linears, or full training), calibrated
against peaks measured on CPU for real-shape builds at 1-4 layers and checked against published QLoRA figures
(``scripts/plan_calibration.py``; the table is in the README). Time is FLOPs over an assumed sustained GPU
throughput and is not calibrated on a GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from dermvlm.config import ConfigError, RunConfig, StageSpec
from dermvlm.models.footprint import Footprint, ImageGeometry

GIB = 2**30
STRATEGIES = ("one GPU", "DDP", "ZeRO-2", "ZeRO-3", "FSDP")
# bytes per parameter of a bitsandbytes NF4/FP4 weight: 4 bits + one 8-bit absmax per 64 weights (+ one fp32 per
# 256 absmax) with double quantisation, one fp32 absmax per 64 weights without
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
# What autograd keeps per token and decoder layer, in activation elements, as multiples of the layer's widths
# (hidden h, MLP intermediate I, query width q, key/value width kv). Counted from the ops of a Llama/Qwen/Gemma
# layer in transformers 5 and fitted to the saved-tensor peaks measured on CPU (scripts/plan_calibration.py):
#   LoRA on frozen linears: RMSNorm inputs kept in fp32 (2 h, counted x2 for the fp32 upcast in bf16), the LoRA
#   A inputs (h for q/k/v, q for o, h for gate/up, I for down), SDPA's q, k, v and output, SiLU's input and the
#   gate*up product (3 I);
#   full training adds every linear's input (the weights need their gradients).
ACT_LORA = {"h": 6.0, "I": 4.0, "q": 3.0, "kv": 2.0}
ACT_FULL = {"h": 8.0, "I": 5.0, "q": 3.0, "kv": 2.0}
LORA_DROPOUT_EXTRA = {"h": 3.0, "I": 1.0, "q": 1.0}  # each target's dropout output (q/k/v/gate/up share one input)
VISION_ACT = {"h": 8.0, "I": 3.0}  # a ViT block trained in full (vision stage), per patch
PROMPT_TEXT_TOKENS = 96  # system prompt, question and the chat template's markers around one image
ANSWER_TOKENS = 256  # an SFT answer (reasoning trace) or a DPO side when no length bounds it
CUDA_OVERHEAD = 1.0 * GIB  # CUDA context, cuBLAS workspaces: outside torch's allocator, counted by nvidia-smi
FRAGMENTATION = 0.05  # the caching allocator's slack over the live peak
# Time: bf16 dense peak of an H100 SXM and a sustained fraction for transformers + PEFT training; decode steps of
# transformers generate are bound by reading the weights plus Python overhead per step (vLLM's far smaller).
PEAK_FLOPS, MFU, BANDWIDTH = 989e12, 0.35, 3.35e12
STEP_OVERHEAD = {"transformers": 0.03, "vllm": 0.004}


@dataclass(frozen=True)
class Hardware:
    gpus: int = 1
    gpu_memory: int | None = None  # bytes per GPU; needed for vLLM's share (a fraction of the GPU)


@dataclass
class Workload:
    """One stage's step as the planner sees it (the calibration script fills it from a measured batch)."""

    kind: str
    use_lora: bool
    four_bit: bool
    double_quant: bool
    dtype_bytes: int
    sequences: int  # per forward on one device (DPO: chosen and rejected)
    seq_len: int
    logits_tokens: int  # tokens whose vocabulary logits are materialised per sequence
    images: int  # per forward
    image: ImageGeometry
    gradient_checkpointing: bool
    lora_targets: str | list[str] = ""
    lora_r: int = 16
    lora_dropout: float = 0.0
    trainable_parts: tuple[str, ...] = ()  # full-parameter stages: which parts train
    ref_adapter: bool = False
    generation: tuple[int, int, int] | None = None  # (sequences, prompt tokens, new tokens) decoded at once
    sampler: str = "transformers"  # generation engine: transformers or vllm
    vllm_fraction: float = 0.0  # of the GPU, held while training (colocate)
    vllm_phase_fraction: float = 0.0  # of the GPU, held by a sampling engine before training (DPO policy pairs)
    optimizer_steps: int = 0
    grad_accum: int = 1
    generation_rounds: int = 0


@dataclass
class StagePlan:
    name: str
    kind: str
    params: int
    trainable: int
    tokens_per_image: int
    image_size: tuple[int, int]
    seq_len: int
    sequences: int
    gradient_checkpointing: bool
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # strategy -> component -> GiB
    activations_other_gc: float = 0.0  # GiB on one GPU with gradient checkpointing switched the other way
    hours: float | None = None
    notes: list[str] = field(default_factory=list)
    measured_gpu_gib: float | None = None  # the run's manifest, where a finished run recorded its GPU peak

    def total(self, strategy: str) -> float:
        return self.memory[strategy]["total"]


def _per_layer(fp: Footprint, coef: dict[str, float]) -> float:
    widths = {"h": fp.hidden, "I": fp.intermediate, "q": fp.q_dim, "kv": fp.kv_dim}
    return sum(c * widths[k] for k, c in coef.items())


def dequantized(fp: Footprint, dtype_bytes: int) -> float:
    """bitsandbytes dequantises a 4-bit weight for each training matmul: the largest one, in the compute dtype
    (bf16), plus a float32 copy when the model runs in float32 (measured on CPU)."""
    largest = max((x.in_features * x.out_features for x in fp.linears if not x.name.endswith("lm_head")), default=0)
    return largest * (2 + (4 if dtype_bytes == 4 else 0))


def trainable_params(fp: Footprint, w: Workload) -> int:
    if w.kind == "vision" or not w.use_lora:
        return sum(fp.parts[p] for p in w.trainable_parts)
    return fp.lora_params(w.lora_targets, w.lora_r)


def memory_bytes(fp: Footprint, w: Workload) -> dict[str, float]:
    """Bytes one process holds at the step's peak, by component, without sharding."""
    b = w.dtype_bytes
    if w.four_bit:
        quantized = fp.quantizable()
        weights = quantized * NF4_BYTES[w.double_quant] + (fp.total - quantized) * b
    else:
        weights = fp.total * b
    n_train = trainable_params(fp, w)
    if w.use_lora and w.kind != "vision":
        lora = n_train * 16.0  # fp32 adapters (peft upcasts them beside a low-precision base): weight, grad, Adam
        trainable = lora + (n_train * 4.0 if w.ref_adapter else 0.0)
        weights_trainable = n_train * 4.0
    else:
        trainable = n_train * 3.0 * b  # gradient and AdamW's two moments in the parameter's dtype
        weights_trainable = 0.0
    tokens = w.sequences * w.seq_len
    layer = _per_layer(fp, ACT_LORA if w.use_lora and w.kind != "vision" else ACT_FULL)
    if w.use_lora and w.lora_dropout > 0:
        layer += _per_layer(fp, LORA_DROPOUT_EXTRA) * (1 + 1 / b)  # the dropped copy and its mask
    logits = w.sequences * w.logits_tokens * fp.vocab * (b + 4 + 4)  # logits, their fp32 copy, log-softmax
    patches = w.images * w.image.patches
    block = (VISION_ACT["h"] * fp.vision_hidden + VISION_ACT["I"] * fp.vision_intermediate) * patches * b
    tower_inputs = patches * fp.vision_hidden * fp.vision_layers * b  # what a checkpointed tower keeps
    if w.kind == "vision":
        acts = block + tower_inputs if w.gradient_checkpointing else block * fp.vision_layers
    else:
        kept = fp.hidden * fp.layers + layer if w.gradient_checkpointing else layer * fp.layers
        acts = tokens * kept * b + logits + (dequantized(fp, b) if w.four_bit else 0)
        if w.gradient_checkpointing:
            # TRL makes every input embedding's output require grad under PEFT + checkpointing, the vision
            # tower's patch embedding included: the tower joins the graph, keeps its blocks' inputs through the
            # language model's backward and recomputes one block in its own
            acts = max(acts + tower_inputs, tower_inputs + block)
        else:
            passing = patches * (4 * fp.vision_hidden + 3 * fp.vision_intermediate) * b
            acts = max(acts, passing)  # a frozen tower keeps nothing; each block's tensors pass through
    if w.generation:
        seqs, prompt, new = w.generation
        kv_cache = seqs * (prompt + new) * fp.layers * 2 * fp.kv_dim * b
        acts = max(acts, kv_cache + seqs * fp.vocab * 4 * 2) if w.sampler == "transformers" else acts
    return {"weights": weights, "weights_trainable": weights_trainable, "trainable_state": trainable,
            "activations": acts}


def shard(mem: dict[str, float], fp: Footprint, w: Workload, strategy: str, gpus: int,
          gpu_memory: int | None) -> dict[str, float]:
    """Per-GPU GiB under a strategy: ZeRO-2 shards gradients and optimizer state, ZeRO-3 and FSDP the weights
    too (one layer gathered at a time)."""
    n = gpus if strategy in ("ZeRO-2", "ZeRO-3", "FSDP") else 1
    weights, trainable = mem["weights"], mem["trainable_state"]
    if strategy in ("ZeRO-3", "FSDP") and n > 1:
        gathered = weights / max(1, fp.layers)
        weights = weights / n + gathered
    if n > 1:
        kept = mem["weights_trainable"]  # the adapters' own weights stay whole under ZeRO-2
        trainable = kept + (trainable - kept) / n if strategy == "ZeRO-2" else trainable / n
    if strategy == "DDP" and gpus > 1:
        trainable += mem["trainable_state"] / 16 * 4 if w.use_lora else 0  # gradient buckets
    vllm = w.vllm_fraction * gpu_memory if gpu_memory else 0.0
    live = weights + trainable + mem["activations"] + vllm
    train_peak = live * (1 + FRAGMENTATION) + CUDA_OVERHEAD
    sampling_peak = w.vllm_phase_fraction * gpu_memory if gpu_memory else 0.0
    total = max(train_peak, sampling_peak)
    return {"weights": weights / GIB, "trainable_state": trainable / GIB, "activations": mem["activations"] / GIB,
            "vllm": max(vllm, sampling_peak) / GIB, "overhead": (train_peak - live) / GIB, "total": total / GIB}


def stage_hours(fp: Footprint, w: Workload, gpus: int) -> float | None:
    """FLOPs of the stage's optimizer steps over the assumed throughput, plus decode time; None without
    ``max_steps`` (epochs need the dataset size)."""
    if w.optimizer_steps <= 0:
        return None
    active = fp.total - fp.embedding_params
    per_token = 2 * active * (2 if w.use_lora and w.kind != "vision" else 3)  # forward + backward
    per_token += 2 * active if w.gradient_checkpointing else 0
    if w.kind in ("dpo", "grpo"):
        per_token += 2 * active  # the reference (adapter off) or old-policy forward
    tokens = w.sequences * w.seq_len * w.grad_accum * w.optimizer_steps
    vision = 2 * (fp.parts["vision"] + fp.parts["projector"]) * w.image.patches * w.images * w.grad_accum
    seconds = (tokens * per_token + vision * w.optimizer_steps) / (PEAK_FLOPS * MFU)
    if w.generation and w.generation_rounds:
        seqs, prompt, new = w.generation
        weight_bytes = fp.quantizable() * NF4_BYTES[True] if w.four_bit else fp.total * w.dtype_bytes
        step = max(weight_bytes / BANDWIDTH, 2 * active * seqs / (PEAK_FLOPS * MFU)) + STEP_OVERHEAD[w.sampler]
        prefill = 2 * active * seqs * prompt / (PEAK_FLOPS * MFU)
        seconds += w.generation_rounds * (new * step + prefill)
    return seconds / 3600 / gpus  # data parallel: each GPU a share of the steps' batches (and of DPO's prompts)


# ---------------------------------------------------------------------------------------------- run configs


def _stage_args(stage: StageSpec, seed: int, where: str):
    import tempfile
    from pathlib import Path

    from dermvlm.training.dpo import dpo_config
    from dermvlm.training.grpo import grpo_config
    from dermvlm.training.sft import sft_config
    from dermvlm.training.vision import vision_config

    build = {"sft": sft_config, "align": sft_config, "grpo": grpo_config, "dpo": dpo_config, "vision": vision_config}
    with tempfile.TemporaryDirectory() as tmp:
        return build[stage.kind](stage, Path(tmp), seed, where)


def stage_workload(cfg: RunConfig, stage: StageSpec, args: Any, fp: Footprint, image: ImageGeometry,
                   gpu: bool = True) -> Workload:
    """The workload of one configured stage (``gpu``: bf16 where the GPU has it, as ``dtype: auto`` resolves)."""
    from dermvlm.models.families import get_family

    model = cfg.model
    dtype = model.dtype if model.dtype != "auto" else ("bfloat16" if gpu else "float32")
    b = 4 if dtype == "float32" else 2
    batch = args.per_device_train_batch_size
    prompt = PROMPT_TEXT_TOKENS + image.tokens
    gc = bool(getattr(args, "gradient_checkpointing", False))
    lora = model.lora
    w = Workload(kind=stage.kind, use_lora=stage.use_lora, four_bit=bool(
        stage.use_lora and model.quantization.load_in_4bit and stage.kind != "vision"
        and (gpu or model.quantization.on_cpu == "use")), double_quant=model.quantization.double_quant,
        dtype_bytes=b, sequences=batch, seq_len=prompt + ANSWER_TOKENS, logits_tokens=prompt + ANSWER_TOKENS,
        images=batch, image=image, gradient_checkpointing=gc, lora_targets=lora.targets(get_family(fp.family)),
        lora_r=lora.r, lora_dropout=lora.dropout, optimizer_steps=max(0, args.max_steps or 0),
        grad_accum=args.gradient_accumulation_steps)
    if stage.kind == "vision":
        tower = getattr(stage, "tower", "full")
        w.trainable_parts = {"full": ("vision", "projector"), "frozen": ("projector",),
                             "lora": ("projector",)}[tower]
        w.use_lora, w.seq_len, w.logits_tokens = False, 0, 0
    elif not stage.use_lora:
        frozen = set(stage.freeze) if stage.kind != "align" else {"vision", "language"}
        w.trainable_parts = tuple(p for p in ("vision", "projector", "language") if p not in frozen)
    if stage.kind == "sft" and getattr(args, "max_length", None):
        w.seq_len = w.logits_tokens = min(w.seq_len, args.max_length)
    if stage.kind == "grpo":
        new = args.max_completion_length
        w.seq_len, w.logits_tokens = prompt + new, new
        w.ref_adapter = bool(stage.use_lora and stage.plus is not None and stage.plus.ref_sync)
        per_round = batch * args.steps_per_generation
        w.sampler = "vllm" if args.use_vllm else "transformers"
        w.generation = (per_round, prompt, new)
        w.generation_rounds = math.ceil(w.optimizer_steps / max(1, args.steps_per_generation * args.num_iterations))
        if args.use_vllm and args.vllm_mode == "colocate":
            w.vllm_fraction = args.vllm_gpu_memory_utilization
    if stage.kind == "dpo":
        side = stage.sample_max_new_tokens if stage.pairs_from == "policy" else ANSWER_TOKENS
        w.sequences, w.images = 2 * batch, 2 * batch
        w.seq_len = w.logits_tokens = prompt + side
        if args.max_length:
            w.seq_len = w.logits_tokens = min(w.seq_len, args.max_length)
        if stage.pairs_from == "policy":
            vllm = stage.sampler == "vllm" or (stage.sampler == "auto" and gpu)
            w.sampler = "vllm" if vllm else "transformers"
            w.generation = (stage.policy_samples, prompt, stage.sample_max_new_tokens)
            w.generation_rounds = stage.max_prompts or 1000
            w.vllm_phase_fraction = 0.9 if vllm else 0.0  # vllm.LLM's default gpu_memory_utilization
    return w


def image_size_for(cfg: RunConfig, source: str = "<config>") -> tuple[int, int]:
    """The largest image the run's data stores (its recipe's ``image.max_side``, or ``data.image``), at 4:3."""
    from dermvlm.recipes.run_data import run_recipe

    side = run_recipe(cfg, source)[0].image.max_side
    return side, max(1, round(side * 3 / 4))


def plan_run(cfg: RunConfig, hardware: Hardware = Hardware(), source: str = "<config>",
             image_size: tuple[int, int] | None = None, gpu: bool = True) -> tuple[Footprint, list[StagePlan]]:
    """Plan every stage of ``cfg`` (the model read offline: ``models/footprint.py``); ``gpu=False`` plans the
    CPU run (float32 for ``dtype: auto``, 4-bit only with ``quantization.on_cpu: use``)."""
    from dermvlm.models.footprint import footprint, image_geometry, resolve_model

    try:
        config, processor, label = resolve_model(cfg.model)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    fp = footprint(config, label)
    pixels = getattr(cfg.model, "pixels", None)  # the run's pixel budget, where the config has one
    bounds = (getattr(pixels, "min", None), getattr(pixels, "max", None)) if pixels is not None else (None, None)
    image = image_geometry(config, processor, image_size or image_size_for(cfg, source), bounds)
    measured = measured_gpu_peaks(cfg)
    plans = []
    for i, stage in enumerate(cfg.stages):
        args = _stage_args(stage, cfg.seed, f"{source}: stages[{i}] ({stage.name}).trl")
        w = stage_workload(cfg, stage, args, fp, image, gpu)
        mem = memory_bytes(fp, w)
        other = memory_bytes(fp, _flip_gc(w))
        plan = StagePlan(name=stage.name, kind=stage.kind, params=fp.total, trainable=trainable_params(fp, w),
                         tokens_per_image=image.tokens, image_size=image.size, seq_len=w.seq_len,
                         sequences=w.sequences, gradient_checkpointing=w.gradient_checkpointing,
                         activations_other_gc=other["activations"] / GIB, hours=stage_hours(fp, w, hardware.gpus))
        for strategy in STRATEGIES:
            if strategy != "one GPU" and hardware.gpus == 1:
                continue
            plan.memory[strategy] = shard(mem, fp, w, strategy, hardware.gpus if strategy != "one GPU" else 1,
                                          hardware.gpu_memory)
        plan.notes = stage_notes(cfg, stage, w, hardware)
        plan.measured_gpu_gib = measured.get(stage.name)
        plans.append(plan)
    return fp, plans


def _flip_gc(w: Workload) -> Workload:
    from dataclasses import replace

    return replace(w, gradient_checkpointing=not w.gradient_checkpointing)


def stage_notes(cfg: RunConfig, stage: StageSpec, w: Workload, hardware: Hardware) -> list[str]:
    notes = []
    if w.vllm_phase_fraction:
        notes.append("policy sampling starts vLLM at 0.9 of the GPU before training: it must be shut down first")
    if w.vllm_fraction and not hardware.gpu_memory:
        notes.append(f"vLLM colocate takes {w.vllm_fraction:.0%} of each GPU (give --gpu-memory to count it)")
    if stage.kind == "vision" and cfg.model.quantization.load_in_4bit:
        notes.append("the vision stage loads the model unquantized")
    if w.four_bit:
        notes.append("4-bit weights cannot be sharded by ZeRO-3/FSDP without bnb_4bit_quant_storage")
    return notes


def measured_gpu_peaks(cfg: RunConfig) -> dict[str, float]:
    """GiB per stage that a finished run on a GPU recorded in ``runs/<name>/manifest.json``
    (``gpu_peak_allocated_mb``: torch's allocator peak, without the CUDA context); empty when there is none."""
    import json
    from pathlib import Path

    manifest = Path(cfg.output_dir) / cfg.name / "manifest.json"
    if not manifest.is_file():
        return {}
    stages = json.loads(manifest.read_text()).get("stages", {})
    return {name: info["gpu_peak_allocated_mb"] / 1024 for name, info in stages.items()
            if isinstance(info.get("gpu_peak_allocated_mb"), int | float)}


def parse_memory(text: str) -> int:
    """``80GiB``, ``80 GB``, ``81920MiB`` or a plain number of GiB → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a memory size (e.g. 80GiB, 24GB, 81920MiB)")
    unit = (m.group(2) or "GiB").upper().rstrip("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    return int(float(m.group(1)) * scale[unit])


def check_plan(cfg: RunConfig, gpu_memory: int, gpus: int = 1, source: str = "<config>") -> list[StagePlan]:
    """Refuse (``ConfigError``, one line naming the stage) a run whose plan exceeds ``gpu_memory`` per GPU under
    every strategy open to ``gpus`` GPUs; return the plans otherwise."""
    _, plans = plan_run(cfg, Hardware(gpus=gpus, gpu_memory=gpu_memory), source)
    for i, plan in enumerate(plans):
        fits = [s for s in plan.memory if plan.total(s) * GIB <= gpu_memory]
        if not fits:
            best = min(plan.memory, key=plan.total)
            raise ConfigError(
                f"{source}: stages[{i}] ({plan.name}): needs about {plan.total(best):.1f} GiB per GPU ({best}, "
                f"{gpus} GPU{'s' if gpus > 1 else ''}) but the GPU has {gpu_memory / GIB:.1f} GiB; lower "
                f"per_device_train_batch_size or the pixel budget, set gradient_checkpointing: true, use 4-bit, "
                f"or more GPUs (dermvlm plan shows the parts)")
    return plans
