"""The GRPO++ prompt sampler: which prompt comes when, without reordering the dataset.

Classes are interleaved by a smooth weighted round-robin over the draw's class shares ``q_c ∝ n_c^(1-balance)``
(``balance`` 0: the natural mix, 0.5: the square-root draw, 1: every class alike), so no stretch of training is one
class. Within a class, the curriculum sweeps easy → hard over training by a per-prompt difficulty (the policy's own
probability of the gold answer, ``difficulty.py``); without it, each class's prompts are drawn in seeded shuffled
cycles. The index stream has TRL's ``RepeatSampler`` layout (each prompt ``num_generations`` times, each generation
batch repeated for ``num_iterations``), so ``GRPOTrainer`` consumes it unchanged.
"""

from __future__ import annotations

import random
from collections import defaultdict


def class_shares(labels: list[str], balance: float) -> dict[str, float]:
    """The draw's class shares ``q_c ∝ n_c^(1 - balance)``."""
    counts: dict[str, int] = defaultdict(int)
    for lab in labels:
        counts[lab] += 1
    raw = {c: n ** (1.0 - balance) for c, n in sorted(counts.items())}
    total = sum(raw.values())
    return {c: v / total for c, v in raw.items()}


def rarity_weights(shares: dict[str, float]) -> dict[str, float]:
    """Per-class weights ``(1/K) / q_c``: under the draw ``q`` the weighted mean over prompts weighs every class
    equally, so the expected reward tracks balanced accuracy (their mean under ``q`` is 1)."""
    k = len(shares)
    return {c: (1.0 / k) / q for c, q in shares.items()}


def class_order(shares: dict[str, float], n: int) -> list[str]:
    """``n`` class slots by smooth weighted round-robin: each class appears at its share, evenly spread."""
    current = dict.fromkeys(shares, 0.0)
    out = []
    for _ in range(n):
        for c, q in shares.items():
            current[c] += q
        pick = max(current, key=lambda c: (current[c], c))
        current[pick] -= 1.0
        out.append(pick)
    return out


def plan_prompts(labels: list[str], n: int, seed: int, balance: float = 0.0, difficulty: list[float] | None = None,
                 noise: float = 0.0, shares: dict[str, float] | None = None, cap: float = 1.0) -> list[int]:
    """``n`` dataset indices in training order (see the module docstring); ``shares`` overrides the class shares
    that ``labels`` and ``balance`` imply (for a plan over a subset of the dataset); ``cap`` < 1 ends each class's
    sweep at that quantile of difficulty, so training never ends on its hardest (often mislabelled) tail."""
    rng = random.Random(seed)
    shares = shares or class_shares(labels, balance)
    slots = class_order(shares, n)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_class[lab].append(i)
    draws = {c: slots.count(c) for c in shares}
    queues: dict[str, list[int]] = {}
    for c, idx in by_class.items():
        if difficulty is not None:
            keyed = sorted(idx, key=lambda i: (difficulty[i] + noise * rng.random(), i))
            # the j-th of D draws takes rank j·len·cap/D: one easy → hard sweep over training, repeating when D > len
            top = max(1, round(len(keyed) * cap))
            queues[c] = [keyed[min(top - 1, j * top // max(1, draws[c]))] for j in range(draws[c])]
        else:
            queue: list[int] = []
            while len(queue) < draws[c]:
                cycle = list(idx)
                rng.shuffle(cycle)
                queue += cycle
            queues[c] = queue[:draws[c]]
    taken: dict[str, int] = defaultdict(int)
    out = []
    for c in slots:
        out.append(queues[c][taken[c]])
        taken[c] += 1
    return out


class PlannedSampler:
    """A ``torch`` sampler over a fixed prompt plan, in ``RepeatSampler``'s layout. Its length is fixed at creation;
    the curriculum's plan is filled in when training begins (``plan`` then holds placeholders until that point)."""

    def __init__(self, plan: list[int], mini_repeat_count: int, batch_size: int, repeat_count: int):
        self.plan, self.mini, self.batch_size, self.repeat = plan, mini_repeat_count, batch_size, repeat_count

    def __iter__(self):
        chunks = [self.plan[i:i + self.batch_size] for i in range(0, len(self.plan), self.batch_size)]
        for chunk in chunks:
            if len(chunk) < self.batch_size:
                break
            for _ in range(self.repeat):
                for index in chunk:
                    for _ in range(self.mini):
                        yield index

    def __len__(self) -> int:
        return (len(self.plan) // self.batch_size) * self.batch_size * self.mini * self.repeat
