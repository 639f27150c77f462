"""The slowly synced reference of GRPO++ under LoRA: TRL refuses ``sync_ref_model`` with PEFT but computes the
reference with an adapter named ``ref`` when one exists; we add that adapter and move it towards the policy's
adapter every few steps (an exponential moving average)."""

from __future__ import annotations


def lora_ref_sync_callback(steps: int, alpha: float):
    """Keep an adapter named ``ref`` (TRL's reference under PEFT) an exponential moving average of the policy's."""
    import torch
    from transformers import TrainerCallback

    class LoraRefSync(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is None or state.global_step % steps:
                return
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    if ".default." in name:
                        ref = params.get(name.replace(".default.", ".ref."))
                        if ref is not None:
                            local(ref).mul_(1 - alpha).add_(local(p).detach(), alpha=alpha)

    return LoraRefSync()


def local(param):
    """The part of ``param`` this process holds: its ZeRO-3 partition (``ds_tensor``; the parameter itself is an
    empty placeholder outside a forward pass, so an update to it would be lost), else the parameter (a plain tensor,
    or an FSDP2 DTensor whose in-place arithmetic acts on the local shard)."""
    return getattr(param, "ds_tensor", param)


def add_ref_adapter(peft_model) -> None:
    """A frozen copy of the trainable adapter under the name ``ref`` (the reference starts equal to the policy)."""
    import torch

    config = peft_model.peft_config["default"]
    peft_model.add_adapter("ref", config)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if ".ref." in name:
                p.copy_(params[name.replace(".ref.", ".default.")])
                p.requires_grad_(False)
    peft_model.set_adapter("default")
    for name, p in peft_model.named_parameters():
        if ".ref." in name:
            p.requires_grad_(False)
