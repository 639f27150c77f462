"""Merge LoRA adapters into their base model and save a standalone folder that vLLM serves as is."""

from __future__ import annotations

import json
from pathlib import Path

from dermvlm.io import atomic_dir


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model recorded in an adapter's ``adapter_config.json``."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg["base_model_name_or_path"]


def merge_adapter(
    adapter_dir: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    dtype: str = "float32",
) -> Path:
    """Load ``base`` unquantized in ``dtype``, apply the adapter, merge, save model + processor atomically.

    QLoRA adapters are merged into the full-precision base (the standard recipe): the result serves without
    bitsandbytes, LoRA on the vision tower included.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = str(base or adapter_base(adapter_dir))
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    processor_src = adapter_dir if (Path(adapter_dir) / "processor_config.json").exists() else base
    processor = AutoProcessor.from_pretrained(str(processor_src))
    with atomic_dir(out, command="model merge") as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)
