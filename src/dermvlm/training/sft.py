"""SFT stage: TRL's ``SFTTrainer`` on an ``images`` + ``messages`` dataset, with LoRA or full fine-tuning.

The stage's ``trl:`` mapping becomes TRL's ``SFTConfig`` on top of the defaults below; an unknown field fails
before the model loads. With LoRA the adapter is saved and merged into a standalone folder; without, the full
model is saved. Either way ``SFTResult.model_dir`` is a folder that transformers and vLLM load as is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.config import ModelSpec, StageSpec, check_dataclass_kwargs
from dermvlm.io import atomic_dir, atomic_write_text

SFT_DEFAULTS: dict[str, Any] = {
    "max_length": None,  # never truncate: a cut would drop image tokens
    "assistant_only_loss": True,  # the chat template marks assistant turns with {% generation %}
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "dataloader_num_workers": 0,
}


@dataclass
class SFTResult:
    """What a finished SFT stage leaves: the servable model folder and its adapter (if LoRA)."""

    model_dir: Path
    adapter_dir: Path | None
    log_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def losses(self) -> list[float]:
        return [h["loss"] for h in self.log_history if "loss" in h]


def sft_config(stage: StageSpec, output_dir: Path, seed: int, where: str = "stages[?].trl"):
    """TRL ``SFTConfig`` from our defaults plus the stage's ``trl`` mapping (validated first)."""
    from trl import SFTConfig

    from dermvlm.models.loading import cuda_available, resolve_dtype

    check_dataclass_kwargs(SFTConfig, stage.trl, where)
    kwargs = {**SFT_DEFAULTS, "seed": seed, "data_seed": seed, "output_dir": str(output_dir / "checkpoints")}
    if not cuda_available():
        kwargs.update(use_cpu=True, bf16=False)
    else:
        import torch

        kwargs["bf16"] = resolve_dtype("auto") == torch.bfloat16
    kwargs.update(stage.trl)
    return SFTConfig(**kwargs)


def run_sft(
    stage: StageSpec,
    model_spec: ModelSpec,
    model_path: str | Path,
    train_dataset,
    output_dir: str | Path,
    seed: int = 0,
    where: str = "stages[?].trl",
    callbacks: list | None = None,
) -> SFTResult:
    """Train ``model_path`` on ``train_dataset`` and save to ``output_dir`` (``adapter/`` + ``model/``)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from dermvlm.models.loading import load_model, lora_config
    from dermvlm.models.merge import merge_adapter

    output_dir = Path(output_dir)
    args = sft_config(stage, output_dir, seed, where)
    set_seed(seed)
    started = time.perf_counter()
    model, processor = load_model(model_spec, model_path)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=lora_config(model_spec.lora) if stage.use_lora else None,
        callbacks=callbacks,
    )
    trainer.train()
    history = list(trainer.state.log_history)
    adapter_dir = None
    model_dir = output_dir / "model"
    if stage.use_lora:
        adapter_dir = output_dir / "adapter"
        with atomic_dir(adapter_dir) as tmp:
            trainer.model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        dtype = "float32" if model_spec.dtype in ("auto", "float32") else model_spec.dtype
        merge_adapter(adapter_dir, model_dir, base=model_path, dtype=dtype)
    else:
        with atomic_dir(model_dir) as tmp:
            trainer.model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
    seconds = time.perf_counter() - started
    atomic_write_text(output_dir / "log_history.json", json.dumps(history, indent=1) + "\n")
    return SFTResult(model_dir=model_dir, adapter_dir=adapter_dir, log_history=history, seconds=seconds)
