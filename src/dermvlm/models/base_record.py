"""What an adapter was trained on: the base's quantization (bitsandbytes settings, or none) and load dtype,
recorded beside the adapter when a stage saves it, so a later merge can rebuild the exact base the adapter saw."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD = "dermvlm_base.json"


@dataclass(frozen=True)
class BaseRecord:
    """``quantization``: the base's ``BitsAndBytesConfig`` as a dict (None: trained on unquantized weights);
    ``dtype``: the dtype the base was loaded (and quantized) in."""

    quantization: dict[str, Any] | None
    dtype: str

    def describe(self) -> str:
        q = self.quantization
        if q is None:
            return f"unquantized {self.dtype} base"
        if q.get("load_in_8bit"):
            return "8-bit (LLM.int8) base"
        double = " (double quantization)" if q.get("bnb_4bit_use_double_quant") else ""
        return f"4-bit {q.get('bnb_4bit_quant_type', 'nf4').upper()} base{double}"


def record_base(adapter_dir: str | Path, model: Any) -> Path:
    """Write ``RECORD`` into ``adapter_dir`` from the model the adapter was trained on (a peft model or its base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quant = getattr(base.config, "quantization_config", None)
    if quant is not None and not isinstance(quant, dict):
        quant = json.loads(quant.to_json_string(use_diff=False))
    dtype = str(getattr(base.config, "dtype", None) or next(base.parameters()).dtype).removeprefix("torch.")
    path = Path(adapter_dir) / RECORD
    path.write_text(json.dumps({"quantization_config": quant, "dtype": dtype}, indent=1) + "\n")
    return path


def read_base(adapter_dir: str | Path) -> BaseRecord | None:
    """The adapter's record, or None for an adapter saved before dermvlm wrote one."""
    path = Path(adapter_dir) / RECORD
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return BaseRecord(quantization=data.get("quantization_config"), dtype=data["dtype"])
