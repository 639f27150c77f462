"""Import the trainers once, at the top of a run, not inside a stage.

Some modules keep an exception from their own import for later (vLLM, which TRL's GRPO trainer imports, keeps
torchcodec's ImportError). Its traceback holds every frame of the stack that imported the module, locals included:
imported inside a stage, it would keep that stage's model, trainer and optimizer alive for the rest of the process.
"""

from __future__ import annotations


def preload_trainers() -> None:
    """Import TRL's SFT, GRPO and DPO trainers (and what they pull in) now."""
    import trl.trainer.dpo_trainer
    import trl.trainer.grpo_trainer
    import trl.trainer.sft_trainer  # noqa: F401
