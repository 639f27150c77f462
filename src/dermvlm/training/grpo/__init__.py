"""GRPO / GRPO++ stage: TRL's ``GRPOTrainer`` with graph-graded rewards and the GRPO++ switches (DESIGN.md).

Plain GRPO (``plus: null``) is the DeepSeekMath objective as TRL implements it: ``loss_type: grpo`` (sequence-level
normalisation), KL to the starting policy with ``beta`` 0.04, symmetric clip, one optimisation pass per generation
batch, uniformly shuffled prompts. GRPO++ uses what TRL provides as is: clip-higher (``epsilon_high``) made real by
``iterations`` > 1 passes over each generation batch (with one pass the importance ratio is 1 and no clip acts),
token-level loss (``loss_type: dapo``), the KL term (``beta``), the synced reference for full fine-tuning
(``sync_ref_model``), the entropy bonus. What TRL lacks is added narrowly (``trainer.py``, ``sampler.py``,
``difficulty.py``, ``reference.py``): a planned prompt sampler (interleaved, partly balanced classes; an easy → hard
sweep within each class by the policy's own difficulty), fading hints, zero-variance replacement by same-class
groups, the class-rarity weight on advantages, and a slowly synced reference adapter under LoRA.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from dermvlm.config import GRPOPlusSpec, GRPOStage, ModelSpec
from dermvlm.training.common import StageResult, finish, last_checkpoint, load_for_stage, trl_config
from dermvlm.training.grpo.reference import add_ref_adapter, lora_ref_sync_callback
from dermvlm.training.grpo.sampler import PlannedSampler, class_shares, plan_prompts, rarity_weights
from dermvlm.training.grpo.trainer import make_trainer_class
from dermvlm.training.grpo.vllm_budget import budgeted_colocate
from dermvlm.training.rewards import get_rewards

GRPO_DEFAULTS: dict[str, Any] = {
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 96,
    "learning_rate": 5e-5,
    "temperature": 1.0,
    "log_completions": False,
}
DEFAULT_REWARDS = {"format": 0.2, "partial_credit": 1.0, "reasoning_consistency": 0.3, "overlong": 0.2}
PLAIN_REWARDS = {"format": 0.2, "exact": 1.0}
# DeepSeekMath's GRPO as TRL expresses it (TRL's own defaults are DAPO-style: loss_type dapo, beta 0).
PLAIN_GRPO = {"loss_type": "grpo", "beta": 0.04, "scale_rewards": "group", "epsilon": 0.2, "num_iterations": 1}
log = logging.getLogger(__name__)


def plus_trl_settings(plus: GRPOPlusSpec | None, use_lora: bool) -> dict[str, Any]:
    """GRPOConfig fields implied by the GRPO++ switches (the stage's own ``trl:`` entries override them)."""
    if plus is None:
        return dict(PLAIN_GRPO)
    out: dict[str, Any] = {"loss_type": "dapo" if plus.token_level_loss else "grpo", "num_iterations": plus.iterations}
    if plus.clip_higher is not None:
        out["epsilon_high"] = plus.clip_higher
    if plus.ref_sync:
        out["beta"] = plus.kl_beta
        if not use_lora:
            out.update(sync_ref_model=True, ref_model_sync_steps=plus.ref_sync_steps,
                       ref_model_mixup_alpha=plus.ref_sync_alpha)
    else:
        out["beta"] = 0.0
    if plus.entropy_bonus:
        out["entropy_coef"] = plus.entropy_bonus
    return out


LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")


def grpo_config(stage: GRPOStage, output_dir: Path, seed: int, where: str, report_to: str = "none"):
    """TRL ``GRPOConfig``; values TRL would only reject once training starts are checked here."""
    from trl import GRPOConfig

    from dermvlm.config import ConfigError

    defaults = {**GRPO_DEFAULTS, **plus_trl_settings(stage.plus, stage.use_lora)}
    args = trl_config(GRPOConfig, defaults, stage, output_dir, seed, where, report_to)
    if args.loss_type not in LOSS_TYPES:
        raise ConfigError(f"{where}.loss_type: {args.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if args.scale_rewards not in (*SCALE_REWARDS, True, False):
        raise ConfigError(f"{where}.scale_rewards: {args.scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")
    return args


def prompts_needed(args, dataset_len: int) -> int:
    """Prompts the trainer will draw: one generation batch of prompts per ``steps_per_generation x num_iterations``
    optimizer steps, plus one batch of slack (or epochs x dataset without ``max_steps``)."""
    per_generation = args.generation_batch_size // args.num_generations
    if args.max_steps and args.max_steps > 0:
        generations = math.ceil(args.max_steps / (args.steps_per_generation * args.num_iterations))
        return (generations + 1) * per_generation
    return dataset_len * max(1, math.ceil(args.num_train_epochs))


def plan_for(stage: GRPOStage, args, dataset, seed: int) -> tuple[list[int] | None, dict]:
    """The prompt plan of a GRPO++ stage and what it was built from (class shares), or None for the plan when the
    curriculum orders it by the policy's difficulty once the trainer has placed the model (``curriculum_plan``)."""
    plus = stage.plus
    labels = list(dataset["label"])
    balance = plus.balance if plus.class_balanced else 0.0
    n = prompts_needed(args, len(dataset))
    shares = class_shares(labels, balance)
    info: dict[str, Any] = {"prompts": n, "balance": balance,
                            "class_shares": {c: round(q, 4) for c, q in shares.items()}}
    return (None if plus.curriculum else plan_prompts(labels, n, seed, balance)), info


def curriculum_plan(model, processor, device, stage: GRPOStage, n: int, dataset, seed: int, info: dict) -> list[int]:
    """The curriculum's plan: each class's prompts easy → hard by the policy's own difficulty, scored with the model
    the trainer placed on ``device`` (sharded or not: every process scores the same prompts, in the same order)."""
    from dermvlm.training.grpo.difficulty import policy_difficulty

    plus = stage.plus
    labels = list(dataset["label"])
    balance = plus.balance if plus.class_balanced else 0.0
    candidates = sorted(set(plan_prompts(labels, n, seed, balance)))  # score only what a plan can draw
    rng_extra = sorted(set(plan_prompts(labels, n, seed + 7, balance)) - set(candidates))
    scored = policy_difficulty(model, processor, dataset, candidates + rng_extra, device)
    keep = sorted(scored)
    sub_plan = plan_prompts([labels[i] for i in keep], n, seed, balance, [scored[i] for i in keep],
                            plus.curriculum_noise, class_shares(labels, balance), plus.curriculum_cap)
    info["difficulty_scored"] = len(keep)
    info["difficulty_mean"] = round(sum(scored.values()) / len(scored), 4)
    return [keep[j] for j in sub_plan]


def curriculum_callback(sampler: PlannedSampler, stage: GRPOStage, dataset, seed: int, processor, info: dict,
                        output_dir: Path):
    """Fills the sampler's plan when training begins: after the trainer has placed (or sharded) the model and
    before the first prompt is drawn. The plan is kept in ``plan.json``, so a resumed run draws the same prompts
    (the model it would score then has trained)."""
    import json

    from transformers import TrainerCallback

    from dermvlm.io import atomic_write_text
    from dermvlm.ranks import is_main_process
    from dermvlm.training.placement import trainer_device

    path = output_dir / "plan.json"
    # read now, before any process can reach training: every process must decide alike whether to score (the
    # scoring passes of a sharded model are collectives)
    saved = json.loads(path.read_text()) if path.is_file() else None

    class CurriculumPlan(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if saved is not None:
                sampler.plan = saved["plan"]
                info.update(saved["info"])
                return
            sampler.plan = curriculum_plan(model, processor, trainer_device(args), stage, len(sampler.plan),
                                           dataset, seed, info)
            if is_main_process():
                atomic_write_text(path, json.dumps({"plan": sampler.plan, "info": info}) + "\n")

    return CurriculumPlan()


def run_grpo(stage: GRPOStage, model_spec: ModelSpec, model_path: str | Path, train_dataset, output_dir: str | Path,
             seed: int = 0, where: str = "stages[?]", callbacks: list | None = None, report_to: str = "none"
             ) -> StageResult:
    """Train with GRPO (``plus: null``) or GRPO++ on a ``grpo_prompt`` dataset; save like the other stages."""
    from transformers import set_seed

    from dermvlm.models.loading import lora_config

    output_dir = Path(output_dir)
    args = grpo_config(stage, output_dir, seed, where, report_to)
    rewards = stage.rewards or (DEFAULT_REWARDS if stage.plus is not None else PLAIN_REWARDS)
    classes = sorted(set(train_dataset["label"])) if "label" in train_dataset.column_names else None
    funcs, weights = get_rewards(rewards, args.max_completion_length, stage.overlong_buffer, classes)
    if args.reward_weights is None:
        args.reward_weights = weights
    set_seed(seed)
    started = time.perf_counter()
    model, processor = load_for_stage(model_spec, model_path, stage)
    plus = stage.plus
    sampler, class_weights, plan_info = None, None, {}
    if plus is not None and "label" in train_dataset.column_names:
        plan, plan_info = plan_for(stage, args, train_dataset, seed)
        sampler = PlannedSampler(plan or [None] * plan_info["prompts"], args.num_generations,
                                 args.generation_batch_size // args.num_generations,
                                 args.num_iterations * args.steps_per_generation)
        if plus.rarity_weight:
            class_weights = rarity_weights(class_shares(list(train_dataset["label"]),
                                                        plus.balance if plus.class_balanced else 0.0))
            plan_info["rarity_weights"] = {c: round(w, 4) for c, w in class_weights.items()}
        log.info("GRPO++ %s: %d planned prompts, class shares %s", stage.name, plan_info["prompts"],
                 plan_info["class_shares"])
    with budgeted_colocate(args, processor):  # vLLM generation at the run's pixel budget
        trainer = make_trainer_class()(
            model=model, reward_funcs=funcs, args=args, train_dataset=train_dataset, processing_class=processor,
            peft_config=lora_config(model_spec.lora, model) if stage.use_lora else None,
            callbacks=list(callbacks or []), zero_variance_filter=bool(plus and plus.zero_variance_filter),
            max_resample_rounds=plus.max_resample_rounds if plus else 0,
            replacement_pool=train_dataset, pool_seed=seed + 1, sampler=sampler, class_weights=class_weights,
            hint_fade_until=plus.hint_fade_until if plus and plus.hints else None,
        )
    if sampler is not None and plan is None:  # the curriculum: scored once the trainer has placed the model
        trainer.add_callback(curriculum_callback(sampler, stage, train_dataset, seed, processor, plan_info,
                                                 output_dir))
    if plus is not None and plus.ref_sync and stage.use_lora:
        add_ref_adapter(trainer.model)
        trainer.add_callback(lora_ref_sync_callback(plus.ref_sync_steps, plus.ref_sync_alpha))
    from dermvlm.training.progress import show_progress

    show_progress(trainer, output_dir, f"{stage.name} ({stage.kind})")
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    if stage.use_lora and "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")
    extra = {"rewards": rewards, "plus": plus.model_dump() if plus else None, "plan": plan_info}
    return finish(trainer, processor, stage, model_spec, model_path, output_dir, started, extra)
