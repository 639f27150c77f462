"""Resume that loads what was saved: checkpoint selection and strict weight loading for every stage's trainer.

transformers 5 saves full-model checkpoints in the hub layout (``visual.*``, ``model.layers.*``) but its resume path
loads them into the in-memory layout (``model.visual.*``, ``model.language_model.*``) without converting the names
(upstream transformers#43701): a resumed full-parameter stage silently continues from its *initial* weights. The
mixin below loads a full-model checkpoint through ``from_pretrained`` (which applies the model's own key
conversions) and copies it in strictly, refusing when any tensor is missing; adapters, DeepSpeed and FSDP
checkpoints (accelerate's ``pytorch_model_fsdp*`` and ``optimizer.bin`` / ``optimizer_0``) keep the trainer's own
path. ``last_checkpoint`` skips checkpoints that a kill left incomplete.

A stage killed after its last checkpoint (while the final model was being saved) resumes from a checkpoint that
already holds every step; transformers' loop would still run one step before it checks ``max_steps`` (31 of 30).
The mixin skips the loop in that case, so the resumed stage ends with the checkpoint's weights, as the
uninterrupted run did.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dermvlm.config import ConfigError
from dermvlm.disk import write_failure

log = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# what accelerate writes for an FSDP checkpoint (full or sharded state dict): the weights and the optimizer state
FSDP_WEIGHTS = ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_0")
FSDP_OPTIMIZER = ("optimizer.bin", "optimizer_0")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it looks complete)."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return "trainer_state.json is unreadable"
    weights = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights and not any((path / f).exists() for f in FSDP_WEIGHTS):
        return "no weights"
    for w in weights:
        if w.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(w), "pt") as f:
                    f.keys()
            except Exception as err:  # a torn file: any reader error means the same
                return f"{w.name} is unreadable ({type(err).__name__})"
    if not (path / "optimizer.pt").is_file() and not any(path.glob("global_step*")) and \
            not any((path / f).exists() for f in FSDP_OPTIMIZER):
        return "no optimizer state"
    return None


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoints/checkpoint-N`` of a stage folder; incomplete ones are skipped, said."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        log.warning("skipping incomplete checkpoint %s (%s); resuming from the previous one", path, problem)
    return None


def strict_resume(trainer_cls: type) -> type:
    """A subclass of a transformers/TRL trainer whose resume loads full-model checkpoints strictly."""

    class StrictResume(trainer_cls):
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            model = model if model is not None else self.model
            target = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
            ckpt = Path(resume_from_checkpoint)
            full = (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file()
            special = getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
            if not full or special or not hasattr(target, "config") or hasattr(target, "peft_config"):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_full_checkpoint(target, ckpt)

        def _save_checkpoint(self, model, trial) -> None:
            try:
                super()._save_checkpoint(model, trial)
            except (RuntimeError, OSError) as err:  # a full disk: one line naming the folder, not torch's assert
                failure = write_failure(err, self.args.output_dir)
                if failure is err:
                    raise
                raise failure from err

        def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs,
                                 resume_from_checkpoint, trial):
            epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                         resume_from_checkpoint, trial)
            if resume_from_checkpoint is not None and 0 < max_steps <= self.state.global_step:
                log.info("%s holds all %d steps: nothing left to train", resume_from_checkpoint, max_steps)
                return num_train_epochs, 0  # no epoch left: the loop is skipped, the checkpoint is the result
            return epochs, steps

    StrictResume.__name__ = StrictResume.__qualname__ = f"StrictResume{trainer_cls.__name__}"
    return StrictResume


def load_full_checkpoint(model, checkpoint: Path) -> None:
    """Copy a full-model checkpoint into ``model`` with the names converted as ``from_pretrained`` converts them;
    refuse (``ConfigError``) when the checkpoint lacks any of the model's tensors or has others."""
    import torch

    dtype = next(model.parameters()).dtype
    loaded, info = type(model).from_pretrained(str(checkpoint), dtype=dtype, output_loading_info=True)
    state = loaded.state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(state) | set(info.get("missing_keys") or ()) | set(info.get("mismatched_keys")
                                                                                       or ()))
    unexpected = sorted(set(state) - set(own) | set(info.get("unexpected_keys") or ()))
    if missing or unexpected:
        raise ConfigError(f"{checkpoint}: the checkpoint does not match the model being trained ({len(missing)} "
                          f"tensors missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); "
                          f"delete the checkpoint or rerun the stage with --fresh")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(tensor.device, tensor.dtype))
    log.info("resumed %d tensors from %s", len(own), checkpoint)
    del loaded
