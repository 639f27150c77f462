"""SFT stage: TRL's ``SFTTrainer`` on ``images`` + ``messages`` (recipe kinds such as reasoning traces and
conversations), with LoRA or as a full fine-tune (the ``pretrain`` stage of a randomly initialised model).

The stage's ``trl:`` mapping becomes TRL's ``SFTConfig`` over the defaults below; an unknown field fails before
the model loads. Loss only on assistant turns (the chat template marks them with ``{% generation %}``).
"""

from __future__ import annotations

import time
from pathlib import Path

from dermvlm.config import ModelSpec, StageSpec
from dermvlm.training.common import StageResult, finish, last_checkpoint, load_for_stage, trl_config

SFT_DEFAULTS = {
    "max_length": None,  # never truncate: a cut would drop image tokens
    "assistant_only_loss": True,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
}
SFTResult = StageResult  # kept for callers of the foundation API


def sft_config(stage: StageSpec, output_dir: Path, seed: int, where: str = "stages[?].trl", report_to: str = "none"):
    from trl import SFTConfig

    return trl_config(SFTConfig, SFT_DEFAULTS, stage, output_dir, seed, where, report_to)


def check_training_template(processor, model_path: str | Path, where: str) -> None:
    """Refuse, in one line, a model whose chat template cannot mark the assistant's turns for assistant-only loss:
    no template at all, or one without ``{% generation %}`` markers that TRL has no training version of."""
    from trl.chat_template_utils import get_training_chat_template

    from dermvlm.config import ConfigError

    if not getattr(processor, "chat_template", None):
        raise ConfigError(f"{model_path}: the processor has no chat template (chat_template.jinja); save the "
                          "family's template with the model (TRL ships them in trl/chat_templates/)")
    try:
        get_training_chat_template(processor)
    except ValueError:
        raise ConfigError(f"{model_path}: its chat template has no {{% generation %}} markers and TRL has no training "
                          "version of it, so assistant-only loss cannot find the answers; add the markers around "
                          "assistant turns (as in trl/chat_templates/*_training.jinja) or set "
                          f"{where}: {{assistant_only_loss: false}}") from None


def run_sft(stage: StageSpec, model_spec: ModelSpec, model_path: str | Path, train_dataset, output_dir: str | Path,
            seed: int = 0, where: str = "stages[?].trl", callbacks: list | None = None, report_to: str = "none",
            ) -> StageResult:
    """Train ``model_path`` on ``train_dataset``; save ``adapter/`` (LoRA) and ``model/`` under ``output_dir``.
    Resumes from the stage's last checkpoint when one exists."""
    from transformers import set_seed
    from trl import SFTTrainer

    from dermvlm.models.loading import lora_config
    from dermvlm.training.progress import show_progress
    from dermvlm.training.resume import strict_resume

    output_dir = Path(output_dir)
    args = sft_config(stage, output_dir, seed, where, report_to)
    set_seed(seed)
    started = time.perf_counter()
    model, processor = load_for_stage(model_spec, model_path, stage)
    if args.assistant_only_loss:
        check_training_template(processor, model_path, where)
    trainer_cls = strict_resume(SFTTrainer)
    if getattr(stage, "class_balanced", False):
        from dermvlm.training.balanced import balanced_plan, balanced_trainer

        trainer_cls = balanced_trainer(trainer_cls, balanced_plan(train_dataset, args, stage.balance, seed, where))
    if getattr(stage, "lr_scale", None):
        from dermvlm.training.part_lr import part_lr_trainer

        trainer_cls = part_lr_trainer(trainer_cls, stage.lr_scale)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_dataset, processing_class=processor,
        peft_config=lora_config(model_spec.lora, model) if stage.use_lora else None, callbacks=callbacks)
    show_progress(trainer, output_dir, f"{stage.name} ({stage.kind})")
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    return finish(trainer, processor, stage, model_spec, model_path, output_dir, started)
