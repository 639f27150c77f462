"""``GRPOPlusTrainer``: TRL's ``GRPOTrainer`` with what GRPO++ adds (each part a switch, see ``__init__.py``):

- prompts come from a planned sampler (``sampler.py``: interleaved classes, an easy → hard sweep within each);
- fading hints are added to a group's prompt at generation time, with a probability that falls with training
  progress, so the schedule holds for every group, alternates included;
- dynamic sampling (DAPO): each planned prompt comes with ``max_resample_rounds`` alternates *of the same class*
  drawn from the dataset, all generated and scored in one call; per planned group the first one whose completions
  were not all rewarded alike is kept (the planned one when it has signal), the rest are dropped before the loss.
  Dropping is a row selection with the layout TRL itself relies on when it shuffles and splits a generation batch
  (``split_pixel_values_by_grid``, then every sequence value per row along its first axis, 0-d tensors per batch;
  ``select_rows``), so nothing is re-padded or merged by key name; the class balance of the plan is kept;
- advantages are multiplied by the class-rarity weight ``(1/K) / q_c`` of the group's class (FairGRPO / DRPO in
  spirit): within a group every completion shares the class, so a reward weight would cancel under the group's
  standardisation; on the advantage it makes the expected update weigh every class equally.

The one TRL method wrapped is ``_generate_and_score_completions`` (rows in, one output dict out); its contract is
pinned to the installed TRL by ``tests/test_training.py::test_trl_generation_output_contract``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any


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


def hint_probability(progress: float, fade_until: float) -> float:
    """Chance that a group's prompt carries its hint: 1 at the start, falling linearly to 0 at ``fade_until``."""
    return max(0.0, 1.0 - progress / fade_until)


def select_rows(batch: dict, rows: list[int], count_items) -> dict:
    """The rows ``rows`` of a generation output, in that order: every tensor with a first axis of the batch's row
    count and every list of that length is indexed, 0-d tensors (per-batch values) are kept, and
    ``num_items_in_batch`` is recounted by ``count_items(completion mask)`` (summed over processes)."""
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    split = split_pixel_values_by_grid(batch)
    n = len(split["advantages"])
    out: dict[str, Any] = {}
    for key, value in split.items():
        if value is None or (hasattr(value, "ndim") and value.ndim == 0):
            out[key] = value
        elif hasattr(value, "ndim") and value.shape[0] == n:
            out[key] = value[rows]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in rows]
        else:
            raise ValueError(f"generation output {key!r} is not per row ({n} rows): TRL's layout changed; see "
                             "tests/test_training.py::test_trl_generation_output_contract")
    mask = out["completion_mask"]
    if out.get("tool_mask") is not None:
        mask = mask * out["tool_mask"]
    out["num_items_in_batch"] = count_items(mask)
    return unsplit_pixel_values_by_grid(out)


def keep_with_signal(planned: int, alternates: int, flat: set[int]) -> list[int]:
    """Per planned group ``i`` the group to train on: ``i`` when it has signal, else its first alternate that has
    (alternate ``r`` of group ``i`` sits at ``i + r * planned``), else ``i``."""
    keep = []
    for i in range(planned):
        options = [i + r * planned for r in range(alternates + 1)]
        keep.append(next((k for k in options if k not in flat), i))
    return keep


def make_trainer_class():
    import torch
    from trl import GRPOTrainer

    from dermvlm.training.resume import strict_resume

    class GRPOPlusTrainer(strict_resume(GRPOTrainer)):
        """See the module docstring. With every option at its default it behaves as ``GRPOTrainer``."""

        def __init__(self, *args, zero_variance_filter: bool = False, max_resample_rounds: int = 2,
                     replacement_pool=None, pool_seed: int = 0, sampler=None, class_weights=None,
                     hint_fade_until: float | None = None, **kwargs):
            self._planned_sampler = sampler
            super().__init__(*args, **kwargs)
            self.zero_variance_filter = zero_variance_filter
            self.max_resample_rounds = max_resample_rounds
            self.replacement_pool = replacement_pool
            self.class_weights = class_weights
            self.hint_fade_until = hint_fade_until
            self._pool_seed = pool_seed
            self._pool_rng = random.Random(pool_seed)
            self._pool_by_class: dict[str, list[int]] = defaultdict(list)
            if replacement_pool is not None and "label" in replacement_pool.column_names:
                for i, lab in enumerate(replacement_pool["label"]):
                    self._pool_by_class[lab].append(i)

        def _get_train_sampler(self, dataset=None):
            return self._planned_sampler if self._planned_sampler is not None else super()._get_train_sampler(dataset)

        # ---- hints
        def _progress(self) -> float:
            return self.state.global_step / max(1, self.state.max_steps or 1)

        def _hinted(self, inputs: list[dict], salt: int) -> list[dict]:
            if not self.hint_fade_until or not self.model.training:
                return inputs
            g = self.num_generations
            chance = hint_probability(self._progress(), self.hint_fade_until)
            rng = random.Random(f"{self._pool_seed}:{self.state.global_step}:{salt}")
            out = []
            for start in range(0, len(inputs), g):
                group = inputs[start:start + g]
                hint = group[0].get("hint")
                if hint and rng.random() < chance:
                    prompt = with_hint(group[0]["prompt"], hint)
                    group = [{**row, "prompt": prompt} for row in group]
                out += group
            return out

        # ---- dynamic sampling
        def _flat_groups(self, out: dict) -> list[int]:
            """Groups whose completions were all rewarded alike. Their advantages are equal but not always 0:
            ``reward - mean`` keeps the mean's rounding error (0.9 x 8 / 8 != 0.9 in float32), which TRL's std
            scaling then magnifies, so compare the advantages with each other, not with 0."""
            adv = out["advantages"].view(-1, self.num_generations)
            return [i for i, row in enumerate(adv) if float(row.max() - row.min()) < 1e-6]

        def _draw(self, classes: list[str | None]) -> list[dict]:
            """One fresh prompt per entry of ``classes`` (that class's pool; any prompt for None), each repeated
            ``num_generations`` times."""
            pool = self.replacement_pool
            rows = []
            for c in classes:
                idx = self._pool_by_class.get(c) if c is not None else None
                i = self._pool_rng.choice(idx) if idx else self._pool_rng.randrange(len(pool))
                rows.append(pool[i])
            return [row for row in rows for _ in range(self.num_generations)]

        def _count_items(self, mask) -> Any:
            return self.accelerator.gather(mask.sum()).sum()

        def _generate_and_score_completions(self, inputs):
            inputs = list(inputs)
            g = self.num_generations
            planned = len(inputs) // g
            alternates = self.max_resample_rounds if (self.zero_variance_filter and self.model.training
                                                      and self.replacement_pool is not None) else 0
            if alternates:  # every process draws the same number, so collective shapes agree
                classes = [inputs[i * g].get("label") for i in range(planned)]
                inputs += self._draw([c for _ in range(alternates) for c in classes])
            inputs = self._hinted(inputs, 0)
            out = super()._generate_and_score_completions(inputs)
            labels = [row.get("label") for row in inputs]
            if alternates:
                flat = set(self._flat_groups(out))
                keep = keep_with_signal(planned, alternates, flat)
                rows = [k * g + j for k in keep for j in range(g)]
                out = select_rows(out, rows, self._count_items)
                labels = [labels[r] for r in rows]
                self._metrics["train"]["zero_variance/frac_before"].append(
                    sum(i in flat for i in range(planned)) / planned)
                self._metrics["train"]["zero_variance/frac_after"].append(sum(k in flat for k in keep) / planned)
                self._metrics["train"]["zero_variance/alternates_used"].append(
                    sum(k >= planned for k in keep) / planned)
            if self.class_weights and self.model.training:
                w = torch.tensor([self.class_weights.get(lab, 1.0) for lab in labels], dtype=out["advantages"].dtype,
                                 device=out["advantages"].device)
                out["advantages"] = out["advantages"] * w.view(-1, *([1] * (out["advantages"].dim() - 1)))
                self._metrics["train"]["rarity/weight_mean"].append(float(w.mean()))
            return out

    return GRPOPlusTrainer
