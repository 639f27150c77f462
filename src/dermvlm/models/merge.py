"""Merge LoRA adapters into their base model and save a standalone folder that vLLM serves as is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dermvlm.io import atomic_dir
from dermvlm.models.base_record import RECORD, BaseRecord, read_base

BaseWeights = Literal["as-trained", "full"]
MERGE_RECORD = "dermvlm_merge.json"


@dataclass(frozen=True)
class Merged:
    """The merged folder, the ``base_weights`` choice, what the adapter went into, and a note (or None)."""

    path: Path
    base_weights: BaseWeights
    merged_into: str
    note: str | None = None


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model recorded in an adapter's ``adapter_config.json``."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg["base_model_name_or_path"]


def load_as_trained(base: str, record: BaseRecord, dtype):
    """The base as the adapter saw it: loaded with the recorded bitsandbytes settings and load dtype, then
    dequantized (transformers' ``dequantize``, which also drops ``quantization_config``) and cast to ``dtype``.
    Modules bitsandbytes left unquantized (the output head, skip modules) keep their full-precision weights."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from dermvlm.models.loading import quantized_device_map

    device_map = quantized_device_map()  # where the stage's quantization ran: the same packed weights
    model = AutoModelForImageTextToText.from_pretrained(
        base, dtype=getattr(torch, record.dtype), quantization_config=BitsAndBytesConfig.from_dict(record.quantization),
        **({"device_map": device_map} if device_map else {}))
    model = model.dequantize(dtype=dtype).to(dtype)
    configs = [model.config, *(getattr(model.config, key) for key in model.config.sub_configs)]
    for config in filter(None, configs):
        config.dtype = dtype  # what from_pretrained(dtype=...) records, sub-configs included
    return model


def merge_adapter(
    adapter_dir: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    dtype: str = "float32",
    base_weights: BaseWeights = "as-trained",
) -> Merged:
    """Apply the adapter to its base in ``dtype``, merge, save model + processor atomically.

    ``as-trained`` (default): the base the adapter was trained on, from the record the stage saved beside it
    (``dermvlm_base.json``): a QLoRA adapter goes into its 4-bit base, dequantized, so the merged model computes
    what was trained (docs/BENCHMARKS.md, Merge precision). ``full``: the unquantized base weights. Either way the
    result is unquantized and serves without bitsandbytes, LoRA on the vision tower included.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = str(base or adapter_base(adapter_dir))
    torch_dtype = getattr(torch, dtype)
    record = read_base(adapter_dir)
    note = None
    if base_weights == "as-trained" and record is None:
        note = (f"{adapter_dir}: no {RECORD} (saved before dermvlm recorded the base's "
                "quantization): merged into the full-precision base")
    if base_weights == "as-trained" and record is not None and record.quantization is not None:
        model = load_as_trained(base, record, torch_dtype)
        described = f"the {record.describe()} it was trained on, dequantized"
    else:
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch_dtype)
        trained_full = record is not None and base_weights == "as-trained"
        described = "the full-precision base" + (" it was trained on" if trained_full else "")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    processor_src = adapter_dir if (Path(adapter_dir) / "processor_config.json").exists() else base
    processor = AutoProcessor.from_pretrained(str(processor_src))
    info = {"base_weights": base_weights, "base": base, "merged_into": described, "dtype": dtype,
            "trained_on": record.describe() if record else None}
    with atomic_dir(out, command="model merge") as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MERGE_RECORD).write_text(json.dumps(info, indent=1) + "\n")
    return Merged(Path(out), base_weights, described, note)
