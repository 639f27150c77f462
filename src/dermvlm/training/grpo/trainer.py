"""``GRPOPlusTrainer``: TRL's ``GRPOTrainer`` with what GRPO++ adds (each part a switch, see ``__init__.py``):

- prompts come from a planned sampler (``sampler.py``: interleaved classes, an easy → hard sweep within each);
- fading hints are added to a group's prompt at generation time, with a probability that falls with training
  progress, so the schedule holds for every group, replacements included;
- zero-variance groups (all completions rewarded alike: zero advantage, no gradient) are replaced by groups
  generated from fresh prompts *of the same class* (DAPO's dynamic sampling, keeping the class balance);
- advantages are multiplied by the class-rarity weight ``(1/K) / q_c`` of the group's class (FairGRPO / DRPO in
  spirit): within a group every completion shares the class, so a reward weight would cancel under the group's
  standardisation; on the advantage it makes the expected update weigh every class equally.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

LEFT_PADDED = {"prompt_ids", "prompt_mask", "mm_token_type_ids", "token_type_ids"}


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


def make_trainer_class():
    import torch
    from trl import GRPOTrainer
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

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

        # ---- zero-variance replacement
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

        def _any(self, flag: bool) -> bool:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            return bool(self.accelerator.gather(t).sum().item() > 0)

        def _generate_and_score_completions(self, inputs):
            inputs = self._hinted(list(inputs), 0)
            out = super()._generate_and_score_completions(inputs)
            g = self.num_generations
            labels = [row.get("label") for row in inputs]
            if self.zero_variance_filter and self.model.training and self.replacement_pool is not None:
                n_groups = len(inputs) // g
                flat = self._flat_groups(out)
                before = len(flat) / n_groups
                rounds = 0
                while rounds < self.max_resample_rounds and self._any(bool(flat)):
                    rounds += 1
                    wanted = [labels[f * g] for f in flat] or [None]
                    # every rank generates n_groups groups (collective ops need equal shapes); spare slots repeat
                    # the flat groups' classes, so each flat group gets more than one chance of a usable one
                    classes = [wanted[k % len(wanted)] for k in range(n_groups)]
                    fresh_inputs = self._hinted(self._draw(classes), rounds)
                    fresh = super()._generate_and_score_completions(fresh_inputs)
                    flat_fresh = set(self._flat_groups(fresh))
                    free = [k for k in range(n_groups) if k not in flat_fresh]
                    pairs, still = [], []
                    for f in flat:
                        match = next((k for k in free if classes[k] == labels[f * g]), None)
                        if match is None:
                            still.append(f)
                        else:
                            free.remove(match)
                            pairs.append((f, match))
                    if pairs:
                        out = self._replace_groups(out, fresh, pairs)
                        for f, k in pairs:
                            labels[f * g:(f + 1) * g] = [fresh_inputs[k * g].get("label")] * g
                    flat = still
                self._metrics["train"]["zero_variance/frac_before"].append(before)
                self._metrics["train"]["zero_variance/frac_after"].append(len(flat) / n_groups)
                self._metrics["train"]["zero_variance/resample_rounds"].append(float(rounds))
            if self.class_weights and self.model.training:
                w = torch.tensor([self.class_weights.get(lab, 1.0) for lab in labels], dtype=out["advantages"].dtype,
                                 device=out["advantages"].device)
                out["advantages"] = out["advantages"] * w.view(-1, *([1] * (out["advantages"].dim() - 1)))
                self._metrics["train"]["rarity/weight_mean"].append(float(w.mean()))
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


