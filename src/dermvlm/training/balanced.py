"""Class-balanced row order for the supervised stages, with the draw GRPO++ uses (``grpo/sampler.py``: class shares
``q_c ∝ n_c^(1 - balance)``, classes interleaved, each class's rows in seeded shuffled cycles), so that an SFT stage
and a GRPO++ stage see the classes alike and "GRPO++ − SFT" measures what RL adds, not the sampling; and the prompt
choice of a DPO stage whose pairs come from the policy (its ``max_prompts`` drawn the same way, so rare classes get
pairs where the correct rare-class answer is the one the KG scorer prefers)."""

from __future__ import annotations

import math

from dermvlm.config import ConfigError
from dermvlm.training.grpo.sampler import plan_prompts


def rows_needed(args, dataset_len: int) -> int:
    """Training rows the trainer will draw: ``max_steps`` x the global batch, or epochs x the dataset."""
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    if args.max_steps and args.max_steps > 0:
        return args.max_steps * batch
    return dataset_len * max(1, math.ceil(args.num_train_epochs))


def labels_of(dataset, where: str) -> list[str]:
    if "label" not in dataset.column_names:
        raise ConfigError(f"{where}: class_balanced needs a 'label' column in the stage's rows (recipe kinds such "
                          "as open_diagnosis carry one)")
    return list(dataset["label"])


class PlanSampler:
    """A ``torch`` sampler over a fixed list of dataset indices."""

    def __init__(self, plan: list[int]):
        self.plan = plan

    def __iter__(self):
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def balanced_trainer(trainer_cls: type, plan: list[int]) -> type:
    """``trainer_cls`` drawing its training rows in ``plan``'s order (the rows the stage was given, unfiltered)."""

    class Balanced(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if len(dataset) <= max(plan):
                raise ConfigError(f"class_balanced: the trainer holds {len(dataset)} rows, fewer than the plan "
                                  "indexes (rows were filtered); turn class_balanced off for this stage")
            return PlanSampler(plan)

    Balanced.__name__ = Balanced.__qualname__ = f"Balanced{trainer_cls.__name__}"
    return Balanced


def balanced_plan(dataset, args, balance: float, seed: int, where: str) -> list[int]:
    """The row order of a class-balanced supervised stage."""
    return plan_prompts(labels_of(dataset, where), rows_needed(args, len(dataset)), seed, balance)


def balanced_prompts(prompts, n: int, balance: float, seed: int, where: str) -> list[int]:
    """``n`` distinct prompt indices drawn class-balanced (a DPO stage's ``max_prompts``; all when ``n`` covers
    them)."""
    if n >= len(prompts):
        return list(range(len(prompts)))
    chosen = list(dict.fromkeys(plan_prompts(labels_of(prompts, where), 4 * n, seed, balance)))[:n]
    return chosen + [i for i in range(len(prompts)) if i not in set(chosen)][: n - len(chosen)]
