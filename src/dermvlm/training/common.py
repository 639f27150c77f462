"""What the three stages share: TRL config building with clear errors, recipe datasets, model loading and saving,
metrics logging, checkpoint resume and loss/reward curves."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, ModelSpec, StageSpec, check_dataclass_kwargs
from dermvlm.io import atomic_dir, atomic_write_text

COMMON_DEFAULTS: dict[str, Any] = {
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 25,
    "save_total_limit": 2,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "lr_scheduler_type": "constant",
}


@dataclass
class StageResult:
    """What a finished stage leaves: the servable model folder, its adapter (if LoRA) and the training log."""

    model_dir: Path
    adapter_dir: Path | None
    log_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def losses(self) -> list[float]:
        return [h["loss"] for h in self.log_history if "loss" in h]

    def series(self, key: str) -> list[float]:
        return [h[key] for h in self.log_history if key in h]


def trl_config(cls: type, defaults: dict[str, Any], stage: StageSpec, output_dir: Path, seed: int, where: str,
               report_to: list[str] | str = "none"):
    """A TRL config dataclass from dermvlm defaults + the stage's ``trl`` mapping; bad fields and impossible
    values fail here, before any model loads, naming ``where`` (file and stage)."""
    from dermvlm.models.loading import cuda_available, resolve_dtype

    checked = check_dataclass_kwargs(cls, stage.trl, where)
    kwargs = {**COMMON_DEFAULTS, **defaults, "seed": seed, "data_seed": seed,
              "output_dir": str(output_dir / "checkpoints"), "report_to": report_to}
    if report_to not in ("none", []):
        kwargs["run_name"] = output_dir.name  # the stage's folder: its name (TensorBoard's folder: dermvlm.tracking)
    if not cuda_available():
        kwargs.update(use_cpu=True, bf16=False)
    else:  # mixed precision in the GPU's half precision (fp16 where it has no bf16)
        import torch

        kwargs["bf16"] = resolve_dtype("auto") == torch.bfloat16
        kwargs["fp16"] = resolve_dtype("auto") == torch.float16
    kwargs.update(checked)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {cls.__name__} rejects these settings: {err}") from None


def recipe_dataset(data_dir: str | Path, kinds: list[str], split: str = "train", where: str = ""):
    """The recipe output's ``split`` of the given kinds, concatenated (kinds of one stage share a format)."""
    from datasets import concatenate_datasets, load_from_disk

    parts = []
    for kind in kinds:
        path = Path(data_dir) / kind
        if not (path / "dataset_dict.json").exists():
            raise ConfigError(f"{where}: the data recipe did not build kind {kind!r} (enable it under kinds:)")
        dd = load_from_disk(str(path))
        if split in dd:
            parts.append(dd[split].select_columns([c for c in dd[split].column_names]))
    if not parts:
        raise ConfigError(f"{where}: no {split!r} rows in kinds {', '.join(kinds)}")
    common = set.intersection(*(set(p.column_names) for p in parts))
    return concatenate_datasets([p.select_columns(sorted(common)) for p in parts])


def load_for_stage(spec: ModelSpec, path: str | Path, stage: StageSpec):
    """Model and processor for a stage; 4-bit only for LoRA stages (a full fine-tune needs real weights). A
    full-parameter stage freezes the parts its ``freeze`` names; ``align`` trains the projector alone."""
    from dermvlm.models.loading import load_model
    from dermvlm.models.parts import freeze, train_only

    if not stage.use_lora and spec.quantization.load_in_4bit:
        spec = spec.model_copy(update={"quantization": spec.quantization.model_copy(update={"load_in_4bit": False})})
    model, processor = load_model(spec, path)
    if stage.kind == "align":
        train_only(model, ["projector"])
    elif stage.freeze and not stage.use_lora:
        freeze(model, stage.freeze)
    return model, processor


def save_stage_model(trainer, processor, model_spec: ModelSpec, model_path: str | Path, use_lora: bool,
                     output_dir: Path) -> tuple[Path, Path | None]:
    """Save the adapter and merge it into a standalone folder (LoRA), or save the full model. Called on every
    process: the ZeRO-3 / FSDP shards are gathered (a rank-0 ``save_pretrained`` would write empty partitions) and
    the main process alone writes, publishes the folder atomically and merges in the training dtype into the base
    the adapter was trained on (a QLoRA stage's 4-bit base, dequantized: ``models/merge.py``). Under FSDP the
    full weights are gathered whatever ``fsdp_state_dict_type`` the checkpoints use (``trainer.save_model`` writes
    nothing under ``SHARDED_STATE_DICT``)."""
    import os
    import shutil

    from dermvlm.models.base_record import record_base
    from dermvlm.models.loading import resolve_dtype
    from dermvlm.models.merge import merge_adapter

    model_dir = output_dir / "model"
    target = output_dir / "adapter" if use_lora else model_dir
    staging = output_dir / f".{target.name}.saving"  # a fixed name every rank agrees on; only this code writes it
    main = trainer.is_world_process_zero()
    if main and staging.exists():
        shutil.rmtree(staging)  # left by a save that was killed
    trainer.accelerator.wait_for_everyone()
    if getattr(trainer, "is_fsdp_enabled", False):
        state = trainer.accelerator.get_state_dict(trainer.model)  # a collective: the full tensors, on the main one
        if main:
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(staging, state_dict=state)
    else:
        trainer.save_model(str(staging))
    if main:
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of the trainer's settings, not the model
        processor.save_pretrained(staging)
        if use_lora:  # what the adapter was trained on: its merge (this one, `model merge`'s) rebuilds that base
            record_base(staging, trainer.accelerator.unwrap_model(trainer.model))
        with atomic_dir(target) as tmp:
            for item in staging.iterdir():
                os.replace(item, tmp / item.name)
        staging.rmdir()
        if use_lora:
            dtype = str(resolve_dtype(model_spec.dtype)).removeprefix("torch.")
            merge_adapter(target, model_dir, base=model_path, dtype=dtype)
    return model_dir, (target if use_lora else None)


def last_checkpoint(output_dir: Path) -> str | None:
    """The stage's newest complete checkpoint (see ``training/resume.py``)."""
    from dermvlm.training.resume import last_checkpoint as newest_complete

    return newest_complete(output_dir)


def finish(trainer, processor, stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, output_dir: Path,
           started: float, extra: dict | None = None) -> StageResult:
    """Save the model (every process takes part; the main one writes), the log history and curves."""
    history = list(trainer.state.log_history)
    model_dir, adapter_dir = save_stage_model(trainer, processor, model_spec, model_path, stage.use_lora, output_dir)
    if trainer.is_world_process_zero():
        if adapter_dir is not None:  # how the merge was made, for the manifest
            from dermvlm.models.merge import MERGE_RECORD

            extra = {**(extra or {}), "merge": json.loads((model_dir / MERGE_RECORD).read_text())}
        atomic_write_text(output_dir / "log_history.json", json.dumps(history, indent=1) + "\n")
        plot_curves(history, output_dir / "curves.png", title=f"{stage.name} ({stage.kind})")
    trainer.accelerator.wait_for_everyone()
    return StageResult(model_dir=model_dir, adapter_dir=adapter_dir, log_history=history,
                       seconds=time.perf_counter() - started, extra=extra or {})


def plot_curves(history: list[dict], out: Path, title: str = "") -> Path:
    """Loss and reward curves (one panel each, reward components included) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if "loss" in h]
    if not steps:  # fewer steps than logging_steps: the trainer's closing summary is the only point
        steps = [{"step": h.get("step", 0), "loss": h["train_loss"]} for h in history if "train_loss" in h]
    if not steps:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.text(0.5, 0.5, "no step logged (logging_steps > steps)", ha="center", va="center")
        ax.set_title(title or "loss")
        ax.set_axis_off()
        return _save_figure(fig, out)
    reward_keys = sorted({k for h in steps for k in h if k == "reward" or (k.startswith("rewards/")
                                                                          and k.endswith("/mean"))})
    panels = 1 + bool(reward_keys) + any("rewards/chosen" in h for h in steps)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False, layout="constrained")
    marker = "o" if len(steps) <= 30 else None  # a short run's points stay visible
    ax = axes[0][0]
    ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], marker=marker, markersize=3)
    ax.set_title("loss")
    if reward_keys:
        ax = axes[0][1]
        for k in reward_keys:
            xs = [h["step"] for h in steps if k in h]
            ax.plot(xs, [h[k] for h in steps if k in h], label=k.replace("rewards/", "").replace("/mean", ""),
                    marker=marker, markersize=3, linewidth=2.2 if k == "reward" else 1.0)
        ax.set_title("reward (total thick; components thin)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if any("rewards/chosen" in h for h in steps):
        ax = axes[0][-1]
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            xs = [h["step"] for h in steps if k in h]
            ax.plot(xs, [h[k] for h in steps if k in h], label=k.split("/")[1], marker=marker, markersize=3)
        ax.set_title("DPO implicit rewards")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save_figure(fig, out)


def _save_figure(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
