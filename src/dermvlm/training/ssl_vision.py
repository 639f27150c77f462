"""Self-supervised vision stage: SimCLR on the VLM's own pooled visual tokens, from images without labels.

For a lab with few labels and more images: the vision tower and projector learn from every image they can see (the
stage's pool: the run's train images and, with ``self_supervised.recipe``, another recipe's train images, labels
dropped) before the supervised vision stage uses the labelled few. Each image gives two strongly augmented views
(seeded per sample); a small projection head maps their pooled features to a sphere and the NT-Xent loss pulls the
two views of one image together against the other images of the batch (Chen et al. 2020). The output is the same
standard HF folder (``model/``) the next stage starts from; the projection head is not kept.

Training is transformers' ``Trainer`` over a module that holds only the trained parts (as the supervised vision
stage's), so checkpoints resume strictly after a kill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from dermvlm.config import ModelSpec, VisionStage
from dermvlm.io import atomic_dir, atomic_write_text
from dermvlm.training.common import StageResult, last_checkpoint, plot_curves

log = logging.getLogger(__name__)


def nt_xent(z1, z2, temperature: float):
    """SimCLR's NT-Xent loss for two batches of views (rows: images), on L2-normalised projections."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class TwoViews:
    """``total`` samples, epoch by epoch through seeded permutations of the pool; each sample is two augmentations
    of one image, each by a generator seeded with (seed, sample number, view). Deterministic, so resume skips
    exactly."""

    def __init__(self, images: list, total: int, seed: int, spec):
        self.images, self.total, self.seed, self.spec = images, total, seed, spec
        self.n = len(images)
        self._perm: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        from dermvlm.training.augment import augment

        epoch = k // self.n
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
        img = self.images[self._perm[1][k % self.n]]
        views = []
        for v in (1, 2):
            g = torch.Generator().manual_seed(int(hashlib.sha256(f"{self.seed}:{k}:{v}".encode()).hexdigest()[:12],
                                                  16))
            views.append(augment(img, self.spec, g))
        return {"view1": views[0], "view2": views[1]}


def pool_images(splits: dict[str, Any]) -> list:
    """The stage's images as CHW uint8 tensors: the run's train split and the ``unlabelled`` split, if any."""
    from dermvlm.training.vision import _decode

    return [_decode(row) for name in ("train", "unlabelled") if name in splits for row in splits[name]]


def run_ssl_vision(stage: VisionStage, model_spec: ModelSpec, model_path: str | Path, splits: dict[str, Any],
                   output_dir: str | Path, seed: int = 0, where: str = "stages[?]", report_to: str = "none",
                   callbacks: list | None = None) -> StageResult:
    """Train the vision tower + projector with SimCLR on the stage's image pool; save the model folder."""
    from torch import nn
    from transformers import set_seed

    from dermvlm.models.families import family_for
    from dermvlm.models.parts import train_only
    from dermvlm.training.common import load_for_stage
    from dermvlm.training.vision import (
        _load_checkpoint_strict,
        _trainer_class,
        image_inputs,
        pooled_features,
        vision_config,
    )

    output_dir, ssl = Path(output_dir), stage.self_supervised
    args = vision_config(stage, output_dir, seed, f"{where}.trl", report_to)
    images = pool_images(splits)
    pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if not args.max_steps or args.max_steps <= 0:  # epochs over the pool
        args.max_steps = max(1, math.ceil(args.num_train_epochs * len(images) / pairs_per_step))
    steps = args.max_steps
    set_seed(seed)
    started = time.perf_counter()
    vlm, processor = load_for_stage(model_spec, model_path, stage)  # a vision stage is full precision, never LoRA
    family = family_for(vlm)
    train_only(vlm, ["vision", "projector"], family)
    dim = vlm.config.get_text_config().hidden_size

    class SimCLR(nn.Module):
        """The trained parts (vision tower, projector) and the projection head; the rest of the VLM is reachable but
        not registered, so it is neither saved nor trained."""

        def __init__(self):
            super().__init__()
            object.__setattr__(self, "vlm", vlm)
            self.parts = nn.ModuleDict({p.replace(".", "__"): vlm.get_submodule(p) for p in family.vision_modules})
            self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, ssl.projection_dim))

        def forward(self, n_pairs: int = 0, **inputs):
            z = self.projection(pooled_features(vlm, inputs))
            return {"loss": nt_xent(z[:n_pairs], z[n_pairs:], ssl.temperature)}

    objective = SimCLR()
    stream = TwoViews(images, steps * pairs_per_step, seed, ssl.augment)

    def collate(samples: list[dict]) -> dict[str, Any]:
        views = [s["view1"] for s in samples] + [s["view2"] for s in samples]
        return {**image_inputs(processor, views), "n_pairs": len(samples)}

    log.info("self-supervised vision stage %s: %d images, %d steps x %d pairs", stage.name, len(images), steps,
             pairs_per_step)
    trainer = _trainer_class()(model=objective, args=args, train_dataset=stream, data_collator=collate,
                               callbacks=callbacks)
    checkpoint = last_checkpoint(output_dir)
    if checkpoint:
        _load_checkpoint_strict(objective, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    history = list(trainer.state.log_history)
    if trainer.is_world_process_zero():
        with atomic_dir(output_dir / "model") as tmp:
            vlm.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        atomic_write_text(output_dir / "log_history.json", json.dumps(history, indent=1) + "\n")
        plot_curves(history, output_dir / "curves.png", title=f"{stage.name} (self-supervised vision)")
    trainer.accelerator.wait_for_everyone()
    return StageResult(model_dir=output_dir / "model", adapter_dir=None, log_history=history,
                       seconds=time.perf_counter() - started, extra={"pool_images": len(images)})
