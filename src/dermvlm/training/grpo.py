"""GRPO / GRPO++ stage: TRL's ``GRPOTrainer`` with graph-graded rewards and the GRPO++ switches (DESIGN.md).

What TRL provides is used as is: clip-higher (``epsilon_high``), token-level loss (``loss_type="dapo"``), the KL
term (``beta``), the synced reference model for full fine-tuning (``sync_ref_model``), the entropy bonus
(``entropy_coef``), per-reward logging. What it lacks is added narrowly:

- zero-variance groups replaced (``GRPOPlusTrainer``): after TRL generates and scores a batch, groups whose
  completions all earned the same reward (zero advantage, no gradient) are swapped for groups generated from fresh
  prompts, up to ``max_resample_rounds`` rounds (DAPO's dynamic sampling);
- a slowly synced reference for LoRA (``LoraRefSync``): TRL refuses ``sync_ref_model`` with PEFT but computes the
  reference with an adapter named ``ref`` when one exists; we add that adapter and move it towards the policy's
  adapter every ``ref_sync_steps`` steps by ``ref_sync_alpha``;
- curriculum, fading hints and class-balanced sampling (``order_prompts``): the prompt order is fixed before
  training (TRL's ``shuffle_dataset=False`` then follows it), easy → hard by the recipe's ``difficulty`` (class
  rarity and graph confusability), with a morphology hint in early prompts that fades out, drawn with inverse
  class-frequency weights.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from dermvlm.config import GRPOPlusSpec, ModelSpec, StageSpec
from dermvlm.training.common import StageResult, finish, last_checkpoint, load_for_stage, trl_config
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
LEFT_PADDED = {"prompt_ids", "prompt_mask", "mm_token_type_ids", "token_type_ids"}


def plus_trl_settings(plus: GRPOPlusSpec | None, use_lora: bool) -> dict[str, Any]:
    """GRPOConfig fields implied by the GRPO++ switches (the stage's own ``trl:`` entries override them)."""
    if plus is None:
        return {}
    out: dict[str, Any] = {"loss_type": "dapo" if plus.token_level_loss else "grpo"}
    if plus.clip_higher is not None:
        out["epsilon_high"] = plus.clip_higher
    if plus.ref_sync:
        out["beta"] = plus.kl_beta
        if not use_lora:
            out.update(sync_ref_model=True, ref_model_sync_steps=plus.ref_sync_steps,
                       ref_model_mixup_alpha=plus.ref_sync_alpha)
    if plus.entropy_bonus:
        out["entropy_coef"] = plus.entropy_bonus
    if plus.curriculum or plus.hints or plus.class_balanced:
        out["shuffle_dataset"] = False  # the order is set by order_prompts
    return out


LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")


def grpo_config(stage: StageSpec, output_dir: Path, seed: int, where: str, report_to: str = "none"):
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
    """Unique prompts the trainer will draw: max_steps x prompts per optimizer step (or epochs x dataset)."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if args.max_steps and args.max_steps > 0:
        return math.ceil(args.max_steps * per_step / args.num_generations) + per_step
    return dataset_len * max(1, math.ceil(args.num_train_epochs))


def with_hint(prompt: list[dict], hint: str) -> list[dict]:
    """The prompt with ``hint`` appended to the last user turn's text."""
    out = [dict(m) for m in prompt]
    last = out[-1]
    parts = [dict(p) for p in last["content"]]
    for p in reversed(parts):
        if p.get("type") == "text":
            p["text"] = f"{p['text']} {hint}".strip()
            break
    last["content"] = parts
    return out


def order_prompts(dataset, plus: GRPOPlusSpec | None, n: int, seed: int):
    """The prompts in training order: class-balanced draws, easy → hard, hints fading out (all seeded).

    Returns the dataset unchanged when no switch asks for an order (TRL then shuffles as usual).
    """
    if plus is None or not (plus.curriculum or plus.hints or plus.class_balanced):
        return dataset
    rng = random.Random(seed)
    size = len(dataset)
    if plus.class_balanced and "class_weight" in dataset.column_names:
        weights = dataset["class_weight"]
        idx = rng.choices(range(size), weights=weights, k=n)
    else:
        idx = []
        while len(idx) < n:
            perm = list(range(size))
            rng.shuffle(perm)
            idx += perm
        idx = idx[:n]
    if plus.curriculum and "difficulty" in dataset.column_names:
        diff = dataset["difficulty"]
        keyed = [(diff[i] + plus.curriculum_noise * rng.random(), k, i) for k, i in enumerate(idx)]
        idx = [i for _, _, i in sorted(keyed)]
    ordered = dataset.select(idx)
    if plus.hints and "hint" in dataset.column_names:
        hints, prompts = ordered["hint"], ordered["prompt"]
        new = []
        for pos, (p, h) in enumerate(zip(prompts, hints, strict=True)):
            progress = pos / max(1, n)
            keep = h and progress < plus.hint_fade_until and rng.random() < 1 - progress / plus.hint_fade_until
            new.append(with_hint(p, h) if keep else p)
        ordered = ordered.remove_columns("prompt").add_column("prompt", new, feature=dataset.features["prompt"])
    return ordered


def _make_trainer_class():
    import torch
    from trl import GRPOTrainer
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    class GRPOPlusTrainer(GRPOTrainer):
        """``GRPOTrainer`` that replaces zero-variance groups (see the module docstring)."""

        def __init__(self, *args, zero_variance_filter: bool = False, max_resample_rounds: int = 2,
                     replacement_pool=None, pool_seed: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.zero_variance_filter = zero_variance_filter
            self.max_resample_rounds = max_resample_rounds
            self.replacement_pool = replacement_pool
            self._pool_rng = random.Random(pool_seed)

        def _flat_groups(self, out: dict) -> list[int]:
            adv = out["advantages"].view(-1, self.num_generations)
            return [i for i, row in enumerate(adv) if bool((row.abs() < 1e-8).all())]

        def _draw(self, n_prompts: int) -> list[dict]:
            pool = self.replacement_pool
            rows = [pool[self._pool_rng.randrange(len(pool))] for _ in range(n_prompts)]
            return [row for row in rows for _ in range(self.num_generations)]

        def _any(self, flag: bool) -> bool:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            return bool(self.accelerator.gather(t).sum().item() > 0)

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if not (self.zero_variance_filter and self.model.training and self.replacement_pool is not None):
                return out
            n_groups = len(inputs) // self.num_generations
            flat = self._flat_groups(out)
            before = len(flat) / n_groups
            rounds = 0
            while rounds < self.max_resample_rounds and self._any(bool(flat)):
                rounds += 1
                fresh = super()._generate_and_score_completions(self._draw(n_groups))
                usable = [g for g in range(n_groups) if g not in set(self._flat_groups(fresh))]
                pairs = list(zip(flat, usable, strict=False))
                if pairs:
                    out = self._replace_groups(out, fresh, pairs)
                flat = flat[len(pairs):]
            self._metrics["train"]["zero_variance/frac_before"].append(before)
            self._metrics["train"]["zero_variance/frac_after"].append(len(flat) / n_groups)
            self._metrics["train"]["zero_variance/resample_rounds"].append(float(rounds))
            return out

        def _replace_groups(self, out: dict, fresh: dict, pairs: list[tuple[int, int]]) -> dict:
            """``out`` with group ``a`` replaced by group ``b`` of ``fresh`` for each (a, b), re-padding as needed."""
            g = self.num_generations
            a, b = split_pixel_values_by_grid(out), split_pixel_values_by_grid(fresh)
            source = [("a", i) for i in range(len(out["advantages"]))]
            for ga, gb in pairs:
                for k in range(g):
                    source[ga * g + k] = ("b", gb * g + k)
            pad_id = self.pad_token_id if getattr(self, "pad_token_id", None) is not None else 0
            width_p = max(a["prompt_ids"].shape[1], b["prompt_ids"].shape[1])
            width_c = max(a["completion_ids"].shape[1], b["completion_ids"].shape[1])
            merged: dict[str, Any] = {}
            for key, va in a.items():
                vb = b.get(key)
                if key in ("mm_token_type_ids", "token_type_ids") and va is not None:
                    # TRL extends these over prompt + completion: re-pad each part on its own side
                    va, vb = (_pad_two_part(t, d["prompt_ids"].shape[1], width_p, width_c)
                              for t, d in ((va, a), (vb, b)))
                if key == "num_items_in_batch" or va is None:
                    merged[key] = va
                elif isinstance(va, list):
                    merged[key] = [vb[j] if s == "b" else va[j] for s, j in source]
                elif isinstance(va, torch.Tensor) and va.ndim >= 1 and va.shape[0] == len(source):
                    if va.ndim >= 2 and va.shape[1] != vb.shape[1]:
                        width = max(va.shape[1], vb.shape[1])
                        value = pad_id if key in ("prompt_ids", "completion_ids") else 0
                        left = key in LEFT_PADDED
                        va, vb = (_pad(t, width, value, left) for t in (va, vb))
                    merged[key] = torch.stack([vb[j] if s == "b" else va[j] for s, j in source])
                else:
                    merged[key] = va
            mask = merged["completion_mask"]
            if "tool_mask" in merged and merged["tool_mask"] is not None:
                mask = mask * merged["tool_mask"]
            merged["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
            return unsplit_pixel_values_by_grid(merged)

    def _pad(t, width: int, value, left: bool):
        missing = width - t.shape[1]
        if missing <= 0:
            return t
        filler = torch.full((t.shape[0], missing, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
        return torch.cat([filler, t] if left else [t, filler], dim=1)

    def _pad_two_part(t, prompt_width: int, width_p: int, width_c: int):
        """A [prompt | completion] tensor re-padded to ``width_p`` (left) + ``width_c`` (right)."""
        return torch.cat([_pad(t[:, :prompt_width], width_p, 0, True), _pad(t[:, prompt_width:], width_c, 0, False)],
                         dim=1)

    return GRPOPlusTrainer


def lora_ref_sync_callback(steps: int, alpha: float):
    """Keep an adapter named ``ref`` (TRL's reference under PEFT) an exponential moving average of the policy's."""
    import torch
    from transformers import TrainerCallback

    class LoraRefSync(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is None or state.global_step % steps:
                return
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    if ".default." in name:
                        ref = params.get(name.replace(".default.", ".ref."))
                        if ref is not None:
                            ref.mul_(1 - alpha).add_(p.detach(), alpha=alpha)

    return LoraRefSync()


def add_ref_adapter(peft_model) -> None:
    """A frozen copy of the trainable adapter under the name ``ref`` (the reference starts equal to the policy)."""
    import torch

    config = peft_model.peft_config["default"]
    peft_model.add_adapter("ref", config)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if ".ref." in name:
                p.copy_(params[name.replace(".ref.", ".default.")])
                p.requires_grad_(False)
    peft_model.set_adapter("default")
    for name, p in peft_model.named_parameters():
        if ".ref." in name:
            p.requires_grad_(False)


def run_grpo(stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, train_dataset, output_dir: str | Path,
             seed: int = 0, where: str = "stages[?]", callbacks: list | None = None, report_to: str = "none"
             ) -> StageResult:
    """Train with GRPO (``plus: null``) or GRPO++ on a ``grpo_prompt`` dataset; save like the other stages."""
    from transformers import set_seed

    from dermvlm.models.loading import lora_config

    output_dir = Path(output_dir)
    args = grpo_config(stage, output_dir, seed, where, report_to)
    rewards = stage.rewards or (DEFAULT_REWARDS if stage.plus is not None else PLAIN_REWARDS)
    funcs, weights = get_rewards(rewards, args.max_completion_length, stage.overlong_buffer)
    if args.reward_weights is None:
        args.reward_weights = weights
    set_seed(seed)
    started = time.perf_counter()
    ordered = order_prompts(train_dataset, stage.plus, prompts_needed(args, len(train_dataset)), seed)
    model, processor = load_for_stage(model_spec, model_path, stage.use_lora)
    plus = stage.plus
    trainer_cls = _make_trainer_class()
    cbs = list(callbacks or [])
    trainer = trainer_cls(
        model=model, reward_funcs=funcs, args=args, train_dataset=ordered, processing_class=processor,
        peft_config=lora_config(model_spec.lora) if stage.use_lora else None, callbacks=cbs,
        zero_variance_filter=bool(plus and plus.zero_variance_filter),
        max_resample_rounds=plus.max_resample_rounds if plus else 0,
        replacement_pool=train_dataset, pool_seed=seed + 1,
    )
    if plus is not None and plus.ref_sync and stage.use_lora:
        add_ref_adapter(trainer.model)
        trainer.add_callback(lora_ref_sync_callback(plus.ref_sync_steps, plus.ref_sync_alpha))
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    if stage.use_lora and "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")
    extra = {"rewards": rewards, "plus": plus.model_dump() if plus else None}
    return finish(trainer, processor, stage, model_spec, model_path, output_dir, started, extra)
