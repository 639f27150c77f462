"""Load a Hugging Face VLM (name or path) with a dtype, optional 4-bit NF4, and LoRA from config.

The same code loads the nano model on CPU and Qwen2.5-VL-3B/7B in 4-bit on a GPU: every choice comes from
``ModelSpec`` (config), nothing is hard-coded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dermvlm.config import LoraSpec, ModelSpec, QuantizationSpec

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(name: str):
    """``auto`` is the GPU's half precision (bfloat16 where supported, float16 on older GPUs), float32 on CPU."""
    import torch

    from dermvlm.devices import gpu_dtype, gpu_supports_bf16

    if name == "auto":
        return getattr(torch, gpu_dtype(gpu_supports_bf16())) if cuda_available() else torch.float32
    return getattr(torch, name)


def compute_dtype(q: QuantizationSpec):
    """The 4-bit layers' compute dtype: as configured, except bfloat16 on a GPU without it (float16 then)."""
    import torch

    from dermvlm.devices import gpu_supports_bf16

    if q.compute_dtype == "bfloat16" and cuda_available() and not gpu_supports_bf16():
        log.warning("quantization.compute_dtype bfloat16: this GPU has no bfloat16; computing in float16")
        return torch.float16
    return getattr(torch, q.compute_dtype)


def use_4bit(q: QuantizationSpec) -> bool:
    """Whether to load in 4-bit: asked for, and CUDA present or CPU use asked for explicitly."""
    if not q.load_in_4bit:
        return False
    if cuda_available():
        return True
    if q.on_cpu == "use":
        log.info("4-bit requested on CPU (quantization.on_cpu: use): loading with bitsandbytes' CPU backend")
        return True
    log.warning(
        "CUDA is not available: loading without 4-bit quantization and training plain LoRA "
        "(set quantization.on_cpu: use to force bitsandbytes 4-bit on CPU)"
    )
    return False


def bnb_config(q: QuantizationSpec, quant_storage=None):
    """bitsandbytes' 4-bit settings; ``quant_storage``: the dtype the packed weights are stored in (the model's
    dtype when ZeRO-3 or FSDP shard them: they shard only tensors of the model's one floating dtype)."""
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(q),
        **extra,
    )


def quantized_device_map() -> dict[str, int] | None:
    """Where a 4-bit model goes: this process's own GPU (``LOCAL_RANK`` under ``accelerate launch``/torchrun, so
    every rank trains its own copy), none under DeepSpeed ZeRO-3 (which places the weights itself and refuses a
    ``device_map``), none without CUDA."""
    import os

    if not cuda_available():
        return None
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def loads_placeholder_weights() -> bool:
    """Whether ``from_pretrained`` leaves zeros in some processes of this run: under FSDP with
    ``cpu_ram_efficient_loading`` only each machine's first process reads the checkpoint, and the trainer broadcasts
    its weights when it shards the model. A model the other processes load for themselves, outside a trainer, stays
    all zeros (the same answer on every process)."""
    from transformers.integrations import is_fsdp_enabled

    return is_fsdp_enabled()


def model_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` derived from the spec (dtype, quantization, attention)."""
    kw: dict[str, Any] = {"dtype": resolve_dtype(spec.dtype), "trust_remote_code": spec.trust_remote_code}
    if use_4bit(spec.quantization):
        from dermvlm.launch import sharding_from_env

        kw["quantization_config"] = bnb_config(spec.quantization, kw["dtype"] if sharding_from_env() else None)
        device_map = quantized_device_map()
        if device_map is not None:
            kw["device_map"] = device_map
    if spec.attn_implementation:
        kw["attn_implementation"] = spec.attn_implementation
    return kw


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_processor(path: str | Path, trust_remote_code: bool = False, pixels: Any = None, family: str | None = None):
    """The model folder's processor with the run's pixel budget ``pixels`` (``model.pixels``; None: the folder's
    own); a local folder without one is refused in one line naming it."""
    from transformers import AutoProcessor

    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise ValueError(f"{folder}: no processor (no {' or '.join(PROCESSOR_FILES)}); save it beside the weights "
                         "(processor.save_pretrained(DIR)) or copy it from the base checkpoint")

    from dermvlm.models.pixels import apply_pixels

    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return apply_pixels(processor, family, pixels)


def load_model(spec: ModelSpec, path: str | Path | None = None):
    """Load model and processor from ``path`` (a built or merged folder) or ``spec.name_or_path``."""
    from transformers import AutoModelForImageTextToText

    source = str(path or spec.name_or_path)
    if source == "None":
        raise ValueError("no model path: build the nano model first or set model.name_or_path")
    if spec.family is not None and (Path(source) / "config.json").is_file():
        check_family(spec.family, source)  # before the weights load
    model = AutoModelForImageTextToText.from_pretrained(source, **model_kwargs(spec))
    if getattr(model, "is_loaded_in_4bit", False) and not cuda_available():
        keep_cpu_4bit_layout(model)
    if spec.family is not None:
        check_family(spec.family, model)
    return model, load_processor(source, spec.trust_remote_code, spec.pixels, spec.family)


def keep_cpu_4bit_layout(model) -> None:
    """bitsandbytes on AVX512-BF16 CPUs repacks a 4-bit weight at its first no-grad eval forward (GRPO's
    curriculum scoring, DPO's policy sampling): the repack refuses widths not divisible by 32 (Qwen2.5-VL's vision
    MLP, 3420) and a repacked weight breaks a later training step. Keep the training layout instead."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def check_family(family: str, model_or_path: Any) -> None:
    """Refuse a checkpoint whose architecture is not the config's ``model.family``."""
    from dermvlm.models.families import UnknownFamilyError, family_for

    try:
        found = family_for(model_or_path).name
    except UnknownFamilyError as err:
        raise ValueError(f"model.family is {family}, but {err}") from None
    if found != family:
        raise ValueError(f"model.family is {family}, but {model_or_path} is a {found} checkpoint; fix model.family "
                         "or leave it out to read it from the checkpoint")


def lora_config(spec: LoraSpec, model: Any = None):
    """A peft ``LoraConfig`` for causal-LM training of the language model (and the vision tower if asked); the
    default target layers are those of ``model``'s family."""
    from peft import LoraConfig

    from dermvlm.models.families import UnknownFamilyError, family_for

    try:
        family = family_for(model) if model is not None else None
    except UnknownFamilyError:
        family = None  # an architecture without a family file: the Qwen-style names

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.targets(family),
        bias=spec.bias,
        task_type="CAUSAL_LM",
    )


def apply_lora(model, spec: LoraSpec):
    """Wrap ``model`` with fresh LoRA adapters (prepared for k-bit training when it is quantized)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, lora_config(spec, model))
