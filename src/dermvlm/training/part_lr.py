"""A learning rate per model part: a full-parameter stage that trains the vision tower at a fraction of the language
model's rate (``lr_scale: {vision: 0.1}``) instead of freezing it. The trainer builds its optimizer as usual
(weight-decay groups), then each group is split by part and a part's group gets ``lr × scale``; the scheduler,
created afterwards, scales every group's own initial rate. The unscaled groups come first: the trainer logs the
first group's rate as the stage's learning rate."""

from __future__ import annotations


def part_lr_trainer(trainer_cls: type, scales: dict[str, float]) -> type:
    """``trainer_cls`` whose optimizer runs each part named in ``scales`` at ``learning_rate × scale``."""

    class PartLR(trainer_cls):
        def create_optimizer(self, *args, **kwargs):
            from dermvlm.models.families import family_for

            optimizer = super().create_optimizer(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
            family = family_for(model)
            part = {id(p): family.part_of(name) for name, p in model.named_parameters()}
            unscaled, scaled = [], []
            for group in optimizer.param_groups:
                by_part: dict[str | None, list] = {}
                for p in group["params"]:
                    key = part.get(id(p)) if part.get(id(p)) in scales else None
                    by_part.setdefault(key, []).append(p)
                for key, params in by_part.items():
                    if key is None:
                        unscaled.append({**group, "params": params})
                    else:
                        scaled.append({**group, "params": params, "lr": group["lr"] * scales[key]})
            optimizer.param_groups.clear()
            for group in unscaled + scaled:
                optimizer.add_param_group(group)
            return optimizer

    PartLR.__name__ = PartLR.__qualname__ = f"PartLR{trainer_cls.__name__}"
    return PartLR
