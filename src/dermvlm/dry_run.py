"""``dermvlm pipeline CONFIG --dry-run``: everything a run does up to its first training step, and nothing after.

It runs the config checks, builds the data (``runs/<name>/data``, which the real run then reuses), the checks
before training (held-out split, suites), builds or finds the start model, and for every stage loads the model as
the stage will (dtype, 4-bit, frozen parts, LoRA), collates one batch of the stage's own rows with TRL's
vision-language collator and runs it forward without a gradient. It prints, per stage, what it will read and what
it will train; no stage folder is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


@dataclass
class StagePreview:
    name: str
    kind: str
    reads: list[str]
    rows: int
    batch: int
    tokens: int  # in the batch, padding included
    image_tokens: int  # per image
    loss: float | None
    trainable: int
    parameters: int
    how: str

    def line(self) -> str:
        loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
        return (f"stage {self.name} ({self.kind}, {self.how}): reads {', '.join(self.reads)}: {self.rows} train rows; "
                f"one batch of {self.batch}: {self.tokens} tokens, {self.image_tokens} per image{loss}; trains "
                f"{self.trainable:,} of {self.parameters:,} parameters")


def batch_examples(stage, rows) -> list[dict[str, Any]]:
    """The stage's first rows as the collator's ``images`` + ``messages`` (the prompt, with the chosen answer for
    DPO; the image and its class for the vision stage)."""
    out = []
    for row in rows:
        if stage.kind == "vision":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["label_name"]}]}]
        elif "messages" in row:
            messages = row["messages"]
        else:
            messages = list(row["prompt"]) + list(row.get("chosen") or [])
        out.append({"images": row["images"], "messages": messages})
    return out


VISION_PARTS = {"full": ["vision", "projector"], "frozen": ["projector"], "lora": ["projector"]}


def how_trained(stage) -> str:
    if stage.kind == "vision":
        return f"tower {stage.tower}, with a temporary class head"
    if stage.kind == "align":
        return "projector only"
    if stage.use_lora:
        return "LoRA"
    return "full" + (f", {', '.join(stage.freeze)} frozen" if getattr(stage, "freeze", None) else "")


def preview_stage(cfg: RunConfig, stage, index: int, start: Path, data_dir: Path, source: str) -> StagePreview:
    """Load the model as ``stage`` will, collate one batch of its rows and run it forward (no gradient)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from dermvlm.models.loading import apply_lora
    from dermvlm.pipeline import stage_dataset
    from dermvlm.run_check import stage_kinds
    from dermvlm.training.common import load_for_stage

    where = f"{source}: stages[{index}] ({stage.name})"
    data = stage_dataset(stage, data_dir, where)
    train = data["train"] if isinstance(data, dict) else data
    size = batch_size(cfg, stage, index, source)
    model, processor = load_for_stage(cfg.model, start, stage)
    if stage.kind == "vision":
        from dermvlm.models.parts import train_only

        train_only(model, VISION_PARTS[stage.tower])  # as training/vision.py trains it (LoRA on the tower aside)
    elif stage.use_lora:
        model = apply_lora(model, cfg.model.lora)
    examples = batch_examples(stage, train.select(range(min(size, len(train)))))
    batch = DataCollatorForVisionLanguageModeling(processor)(examples)
    image_id = getattr(processor, "image_token_id", None)
    n_images = sum(len(e["images"]) for e in examples) or 1
    image_tokens = round(int((batch["input_ids"] == image_id).sum()) / n_images) if image_id is not None else 0
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        out = model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()})
    loss = float(out.loss) if stage.kind in ("sft", "align") and getattr(out, "loss", None) is not None else None
    preview = StagePreview(
        name=stage.name, kind=stage.kind, reads=stage_kinds(stage), rows=len(train), batch=len(examples),
        tokens=int(batch["input_ids"].numel()), image_tokens=image_tokens, loss=loss,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        parameters=sum(p.numel() for p in model.parameters()), how=how_trained(stage))
    del model, out, batch
    return preview


def batch_size(cfg: RunConfig, stage, index: int, source: str) -> int:
    """The stage's per-device batch size, as its trainer config will read it."""
    import tempfile

    from dermvlm.training.dpo import dpo_config
    from dermvlm.training.grpo import grpo_config
    from dermvlm.training.sft import sft_config
    from dermvlm.training.vision import vision_config

    build = {"sft": sft_config, "align": sft_config, "grpo": grpo_config, "dpo": dpo_config, "vision": vision_config}
    with tempfile.TemporaryDirectory() as tmp:
        args = build[stage.kind](stage, Path(tmp), cfg.seed, f"{source}: stages[{index}] ({stage.name}).trl")
    return int(args.per_device_train_batch_size)


def dry_run(cfg: RunConfig, source: str = "<config>") -> list[str]:
    """Check, build the data, find the start model and preview every stage; return the lines to print."""
    import datasets
    from transformers.utils import logging as hf_logging

    from dermvlm.held_out import check_before_training
    from dermvlm.pipeline import base_model, build_data, claim_run_dir, run_dir
    from dermvlm.run_check import check_run

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    lines = check_run(cfg, source)
    claim_run_dir(run_dir(cfg))
    data_dir, _ = build_data(cfg, source)
    targets = check_before_training(cfg, source, data_dir)
    lines.append(f"data built in {data_dir} (splits.csv: the split every later step reads)")
    start = base_model(cfg)
    lines.append(f"start model: {start}")
    for i, stage in enumerate(cfg.stages):
        try:
            lines.append(preview_stage(cfg, stage, i, start, data_dir, source).line())
        except ConfigError:
            raise
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"{source}: stages[{i}] ({stage.name}): one batch fails before training: "
                              f"{str(err).splitlines()[0]}") from None
    lines.append("then: " + (f"serve the final model and evaluate {', '.join(targets)}" if targets
                             else "no evaluation (evaluate: [])"))
    return lines
