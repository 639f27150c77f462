"""KG-preference DPO stage: TRL's ``DPOTrainer`` on pairs ranked by the knowledge graph.

``pairs_from: recipe`` trains on the recipe's ``preference_pair`` kind (graph-consistent answer vs a tagged
perturbation). ``pairs_from: policy`` samples ``policy_samples`` answers per prompt from the current model (vLLM's
offline engine in a child process on a GPU, ``vllm_sampling.py``; transformers ``generate`` otherwise), scores
each with the KG scorer, and keeps best vs worst when their score margin is at least ``min_margin``: the graph
stands in for a dermatologist's preference. The pairs and their statistics are saved beside the stage (``pairs/``,
``pairs_stats.json``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dermvlm.config import ModelSpec, StageSpec
from dermvlm.io import atomic_dir, atomic_write_text
from dermvlm.knowledge import KGScorer
from dermvlm.ranks import is_main_process
from dermvlm.training.common import StageResult, finish, last_checkpoint, load_for_stage, trl_config
from dermvlm.training.placement import trainer_device
from dermvlm.training.resume import strict_resume

DPO_DEFAULTS: dict[str, Any] = {
    "beta": 0.1,
    "max_length": None,  # never truncate image tokens
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-5,
}


def dpo_loss_types() -> list[str]:
    """The loss types the installed TRL's ``DPOConfig`` documents (read from its field help, so it follows TRL)."""
    import dataclasses
    import re

    from trl import DPOConfig

    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata.get("help", "")
    return re.findall(r"`'([a-z0-9_]+)'`", help_text)


def dpo_config(stage: StageSpec, output_dir: Path, seed: int, where: str, report_to: str = "none"):
    """TRL ``DPOConfig``; a loss type TRL would only reject at the first step is refused here."""
    from trl import DPOConfig

    from dermvlm.config import ConfigError, did_you_mean

    args = trl_config(DPOConfig, DPO_DEFAULTS, stage, output_dir, seed, where, report_to)
    allowed = dpo_loss_types()
    for loss in args.loss_type:
        if allowed and loss not in allowed:
            raise ConfigError(f"{where}.loss_type: {loss!r} is not a DPO loss type{did_you_mean(loss, allowed)}; "
                              f"allowed: {', '.join(allowed)}")
    return args


def _text(messages: list[dict]) -> str:
    return "".join(p.get("text") or "" for p in messages[-1]["content"] if p.get("type") == "text")


def sample_transformers(model, processor, rows, k: int, max_new_tokens: int, seed: int, device
                        ) -> list[list[str]]:
    """``k`` sampled answers per prompt row with transformers ``generate``, on ``device`` (the trainer's)."""
    import torch

    from dermvlm.training.placement import to_device

    torch.manual_seed(seed)
    out = []
    model.eval()
    for row in rows:
        text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        inputs = to_device(processor(text=[text], images=row["images"], return_tensors="pt"), device)
        with torch.no_grad():
            gen = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=k,
                                 max_new_tokens=max_new_tokens)
        n = inputs["input_ids"].shape[1]
        out.append(processor.tokenizer.batch_decode(gen[:, n:].cpu(), skip_special_tokens=True))
    return out


def uses_vllm(stage: StageSpec) -> bool:
    """Whether policy pairs are sampled with vLLM (in a child process that loads the model itself)."""
    from dermvlm.models.loading import cuda_available

    return stage.sampler == "vllm" or (stage.sampler == "auto" and cuda_available())


def policy_pairs(stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, prompts, seed: int,
                 output_dir: Path, device, shard: tuple[int, int] = (0, 1)):
    """Pairs ranked by the KG scorer from the current policy's own samples, with statistics. ``device``: where
    transformers samples (the trainer's). ``shard`` (index, count): sample only every count-th prompt from index
    (one share per process)."""
    from datasets import Dataset

    from dermvlm.devices import release_memory
    from dermvlm.models.loading import load_model
    from dermvlm.training.placement import placed
    from dermvlm.training.vllm_sampling import sample_in_child

    n = min(len(prompts), stage.max_prompts or len(prompts))
    if getattr(stage, "class_balanced", False):
        from dermvlm.training.balanced import balanced_prompts

        rows = prompts.select(balanced_prompts(prompts, n, stage.balance, seed, "dpo"))
    else:
        rows = prompts.select(range(n))
    if shard[1] > 1:
        rows = rows.shard(num_shards=shard[1], index=shard[0], contiguous=False)
    use_vllm = uses_vllm(stage)
    started = time.perf_counter()
    if use_vllm:
        work = output_dir / f".vllm-sampling-{shard[0]}"
        samples = sample_in_child(str(model_path), rows, stage.policy_samples, stage.sample_max_new_tokens, seed,
                                  work, model_spec.pixels)  # at the run's pixel budget
        shutil.rmtree(work, ignore_errors=True)
    else:
        model, processor = load_model(model_spec, model_path)
        with placed(model, device):
            samples = sample_transformers(model, processor, rows, stage.policy_samples,
                                          stage.sample_max_new_tokens, seed, device)
        del model
        release_memory()
    scorer = KGScorer()
    pairs: dict[str, list] = {"images": [], "prompt": [], "chosen": [], "rejected": [], "label": [],
                              "chosen_score": [], "rejected_score": []}
    margins, best_scores, worst_scores = [], [], []
    for row, answers in zip(rows, samples, strict=True):
        scored = sorted(((scorer(a, row["label"], site=row.get("site") or None,
                                 fitzpatrick=row.get("fitzpatrick") or None, facts=row.get("record_facts")), i, a)
                         for i, a in enumerate(answers)), key=lambda t: (-t[0], t[1]))
        (best, _, chosen), (worst, _, rejected) = scored[0], scored[-1]
        best_scores.append(best)
        worst_scores.append(worst)
        if best - worst >= stage.min_margin and chosen != rejected:
            margins.append(best - worst)
            pairs["images"].append(row["images"])
            pairs["prompt"].append(row["prompt"])
            pairs["chosen"].append([{"role": "assistant", "content": [{"type": "text", "text": chosen}]}])
            pairs["rejected"].append([{"role": "assistant", "content": [{"type": "text", "text": rejected}]}])
            pairs["label"].append(row["label"])
            pairs["chosen_score"].append(best)
            pairs["rejected_score"].append(worst)
    stats = {
        "pairs_from": "policy", "sampler": "vllm" if use_vllm else "transformers", "prompts": len(rows),
        "samples_per_prompt": stage.policy_samples, "pairs": len(margins),
        "kept_fraction": round(len(margins) / max(1, len(rows)), 4), "min_margin": stage.min_margin,
        "mean_margin": round(sum(margins) / len(margins), 4) if margins else None,
        "mean_best_score": round(sum(best_scores) / len(best_scores), 4) if best_scores else None,
        "mean_worst_score": round(sum(worst_scores) / len(worst_scores), 4) if worst_scores else None,
        "sampling_seconds": round(time.perf_counter() - started, 2),
    }
    features = prompts.features.copy()
    for key in ("chosen", "rejected"):
        features[key] = features["prompt"]
    from datasets import Features, Value

    keep = {k: features[k] for k in ("images", "prompt", "chosen", "rejected", "label")}
    dataset = Dataset.from_dict(pairs, features=Features({**keep, "chosen_score": Value("float64"),
                                                          "rejected_score": Value("float64")}))
    return dataset, stats


def merged_pair_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of several processes' shares as if one process had sampled every prompt."""
    def weighted(key: str, weight: str) -> float | None:
        got = [(p[key], p[weight]) for p in parts if p.get(key) is not None and p[weight]]
        total = sum(w for _, w in got)
        return round(sum(v * w for v, w in got) / total, 4) if total else None

    out = dict(parts[0])
    out["prompts"] = sum(p["prompts"] for p in parts)
    out["pairs"] = sum(p["pairs"] for p in parts)
    out["kept_fraction"] = round(out["pairs"] / max(1, out["prompts"]), 4)
    out["mean_margin"] = weighted("mean_margin", "pairs")
    out["mean_best_score"] = weighted("mean_best_score", "prompts")
    out["mean_worst_score"] = weighted("mean_worst_score", "prompts")
    out["sampling_seconds"] = max(p["sampling_seconds"] for p in parts)
    out["processes"] = len(parts)
    return out


def sampled_pairs(stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, prompts, seed: int,
                  output_dir: Path, device):
    """Policy pairs sampled once for the stage: under ``accelerate launch`` every process samples its share of the
    prompts into ``.pairs-part-R``, the main process alone joins them into ``pairs/`` (the others wait for it).
    Under FSDP's low-RAM loading the other processes would sample from zeros with transformers: the main process
    then samples every prompt."""
    from datasets import concatenate_datasets, load_from_disk

    from dermvlm.distributed import barrier
    from dermvlm.models.loading import loads_placeholder_weights
    from dermvlm.ranks import rank, world_size

    pairs_dir, stats_file = output_dir / "pairs", output_dir / "pairs_stats.json"
    if (pairs_dir / "dataset_info.json").exists():  # sampled before an interruption: reuse
        return load_from_disk(str(pairs_dir)), json.loads(stats_file.read_text())
    me, world = rank(), world_size()
    if world == 1:
        pairs, stats = policy_pairs(stage, model_spec, model_path, prompts, seed, output_dir, device)
        pairs.save_to_disk(str(pairs_dir))
        return pairs, stats
    samplers = world if uses_vllm(stage) or not loads_placeholder_weights() else 1
    part = output_dir / f".pairs-part-{me}-of-{samplers}"
    if me < samplers and not (part / "stats.json").exists():
        pairs, stats = policy_pairs(stage, model_spec, model_path, prompts, seed + me, output_dir, device,
                                    (me, samplers))
        with atomic_dir(part) as tmp:
            pairs.save_to_disk(str(tmp / "pairs"))
            (tmp / "stats.json").write_text(json.dumps(stats) + "\n")
    barrier("every process's share of the policy pairs")
    if me == 0:
        parts = [output_dir / f".pairs-part-{r}-of-{samplers}" for r in range(samplers)]
        pairs = concatenate_datasets([load_from_disk(str(p / "pairs")) for p in parts])
        stats = merged_pair_stats([json.loads((p / "stats.json").read_text()) for p in parts])
        atomic_write_text(stats_file, json.dumps(stats, indent=2) + "\n")
        with atomic_dir(pairs_dir) as tmp:
            pairs.save_to_disk(str(tmp))
        for p in parts:  # the shares this stage wrote, now joined
            shutil.rmtree(p, ignore_errors=True)
    barrier("the joined policy pairs")
    return load_from_disk(str(pairs_dir)), json.loads(stats_file.read_text())


def recipe_pair_stats(pairs) -> dict[str, Any]:
    margins = [c - r for c, r in zip(pairs["chosen_score"], pairs["rejected_score"], strict=True)]
    by: dict[str, int] = {}
    for p in pairs["perturbation"]:
        by[p] = by.get(p, 0) + 1
    return {"pairs_from": "recipe", "pairs": len(pairs), "by_perturbation": dict(sorted(by.items())),
            "mean_margin": round(sum(margins) / max(1, len(margins)), 4)}


def run_dpo(stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, pairs_or_prompts, output_dir: str | Path,
            seed: int = 0, where: str = "stages[?]", callbacks: list | None = None, report_to: str = "none"
            ) -> StageResult:
    """DPO on recipe pairs, or on KG-ranked pairs sampled from the policy (``pairs_from: policy``)."""
    from transformers import set_seed
    from trl import DPOTrainer

    from dermvlm.config import ConfigError
    from dermvlm.models.loading import lora_config

    output_dir = Path(output_dir)
    args = dpo_config(stage, output_dir, seed, where, report_to)
    set_seed(seed)
    started = time.perf_counter()
    if stage.pairs_from == "policy":
        pairs, stats = sampled_pairs(stage, model_spec, model_path, pairs_or_prompts, seed, output_dir,
                                     trainer_device(args))
    else:
        pairs = pairs_or_prompts
        stats = recipe_pair_stats(pairs)
    if is_main_process():
        atomic_write_text(output_dir / "pairs_stats.json", json.dumps(stats, indent=2) + "\n")
    if len(pairs) == 0:
        raise ConfigError(f"{where}: no preference pair reached min_margin {stage.min_margin} "
                          f"(best/worst mean {stats.get('mean_best_score')}/{stats.get('mean_worst_score')}); "
                          "lower min_margin or sample more answers")
    train = pairs.select_columns(["images", "prompt", "chosen", "rejected"])
    model, processor = load_for_stage(model_spec, model_path, stage)
    trainer = strict_resume(DPOTrainer)(
        model=model, args=args, train_dataset=train, processing_class=processor,
        peft_config=lora_config(model_spec.lora, model) if stage.use_lora else None, callbacks=callbacks)
    from dermvlm.training.progress import show_progress

    show_progress(trainer, output_dir, f"{stage.name} ({stage.kind})")
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    return finish(trainer, processor, stage, model_spec, model_path, output_dir, started, {"pairs": stats})
