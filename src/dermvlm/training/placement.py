"""Where the project's own forward passes run: on the trainer's device, the one rule.

The trainers place the model (``TrainingArguments.device``, the accelerator's device: this process's GPU under
``accelerate launch``, else the CPU); 4-bit models sit on that GPU from loading. Every forward pass dermvlm runs
itself (vision probe and class descriptions, GRPO++ difficulty, DPO sampling with transformers) takes its device
from here and brings its inputs to it, and every tensor read back on the host goes through ``to_host``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


def trainer_device(args_or_trainer) -> Any:
    """The device a trainer puts the model on: ``trainer.accelerator.device`` or ``TrainingArguments.device``."""
    accelerator = getattr(args_or_trainer, "accelerator", None)
    return accelerator.device if accelerator is not None else args_or_trainer.device


def to_device(inputs: Mapping[str, Any], device) -> dict[str, Any]:
    """``inputs`` with every tensor moved to ``device`` (other values as they are)."""
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def to_host(tensor):
    """A tensor as float32 on the CPU, for numpy and scikit-learn (CUDA and bfloat16 tensors have no ``.numpy()``)."""
    return tensor.detach().float().cpu()


def is_placeable(module) -> bool:
    """Whether ``module`` may be moved as a whole: not 4-bit/8-bit (bitsandbytes places those at loading) and not
    sharded (ZeRO-3 partitions or FSDP DTensors, which only their wrapper may move)."""
    if getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False):
        return False
    for p in module.parameters():
        if hasattr(p, "ds_id") or type(p.data).__name__ == "DTensor" or p.__class__.__name__ == "Params4bit":
            return False
    return True


@contextlib.contextmanager
def placed(module, device) -> Iterator[Any]:
    """``module`` on ``device`` for the block, then back where it was (a frozen part the trainer does not place,
    such as the language model during the vision stage, visits the GPU only while it is used)."""
    import torch

    params = list(module.parameters())
    home = params[0].device if params else torch.device("cpu")
    move = is_placeable(module) and home != torch.device(device)
    if move:
        module.to(device)
    try:
        yield module
    finally:
        if move:
            module.to(home)
