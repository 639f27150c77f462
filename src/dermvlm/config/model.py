"""Which model a run starts from and how it is loaded: checkpoint or nano build, dtype, 4-bit, LoRA."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dermvlm.config.base import Seed, Strict

# The model families of ``dermvlm.models.families`` (one file each; a test keeps the two lists equal).
FamilyName = Literal["qwen2_5_vl", "qwen3_vl", "gemma3", "smolvlm", "llava_next"]
# The published checkpoints ``dermvlm.models.real_shapes`` copies the shapes of (a test keeps the lists equal).
RealShapeName = Literal["qwen2.5-vl-7b", "qwen2.5-vl-3b", "qwen3-vl-8b", "qwen3-vl-4b", "medgemma-4b", "smolvlm"]
LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LM_AND_VISION_LORA_TARGETS = (
    r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    r"|visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj))"
)


class NanoSpec(Strict):
    """Build the nano/micro model from scratch instead of loading a checkpoint (``family``: which architecture;
    unset is Qwen2.5-VL, the only one with a ``micro`` preset). ``like``: a real-shape build instead, a published
    checkpoint's widths, heads and processor with ``layers`` text layers and vision blocks (random weights)."""

    family: FamilyName | None = None
    preset: Literal["nano", "micro"] = "nano"
    seed: Seed = 0
    min_pixels: int | None = Field(default=None, gt=0)
    max_pixels: int | None = Field(default=None, gt=0)
    patch_size: int | None = Field(default=None, ge=2, le=32)  # ViT patch (resize factor = patch x 2)
    like: RealShapeName | None = None
    layers: int | None = Field(default=None, ge=1, le=64)  # with ``like`` (default 1)

    @model_validator(mode="after")
    def _like_alone(self) -> NanoSpec:
        if self.like is None:
            if self.layers is not None:
                raise ValueError("nano.layers: only with nano.like (the depth of a real-shape build)")
            return self
        given = [k for k in ("family", "patch_size") if getattr(self, k) is not None]
        if self.preset != "nano":
            given.append("preset")
        if given:
            raise ValueError(f"nano.{given[0]}: leave it out with nano.like (the real shape sets the family, "
                             "sizes and patch)")
        return self


class PixelsSpec(Strict):
    """The run's pixel budget: how many pixels of an image the model sees (``dermvlm.models.pixels``). Qwen2.5-VL and
    Qwen3-VL resize every image to between ``min`` and ``max`` pixels (about pixels / 28² visual tokens for
    Qwen2.5-VL, / 32² for Qwen3-VL); SmolVLM resizes the longer side to √``max`` and cuts tiles; Gemma 3 / MedGemma
    and LLaVA-NeXT have a fixed input and take no budget. Unset: the checkpoint's own processor settings."""

    min: int | None = Field(default=None, gt=0)
    max: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PixelsSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class QuantizationSpec(Strict):
    """bitsandbytes 4-bit loading (QLoRA). Used when CUDA is available; on CPU only if ``on_cpu: use``."""

    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    on_cpu: Literal["skip", "use"] = "skip"


class LoraSpec(Strict):
    """peft LoRA. ``target_modules`` is a regex or a list of module names; the default is the language model."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] | None = None
    include_vision: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"

    def targets(self, family: Any = None) -> str | list[str]:
        """``target_modules`` if set, else the model family's language (and vision) layers; without a family
        (``dermvlm.models.families.Family``), Qwen2.5-VL's names."""
        if self.target_modules is not None:
            return self.target_modules
        if family is not None:
            lm, vision = family.lm_lora_targets, family.vision_lora_targets
            return f"(?:{lm}|{vision})" if self.include_vision else lm
        return LM_AND_VISION_LORA_TARGETS if self.include_vision else LM_LORA_TARGETS


class ModelSpec(Strict):
    """Which model to start from and how to load it. Exactly one of ``name_or_path`` and ``nano``. ``family``:
    the checkpoint's model family, checked against its ``config.json`` (unset: read from it)."""

    name_or_path: str | None = None
    nano: NanoSpec | None = None
    family: FamilyName | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: QuantizationSpec = QuantizationSpec()
    lora: LoraSpec = LoraSpec()
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    trust_remote_code: bool = False
    pixels: PixelsSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.nano is None):
            raise ValueError("give exactly one of 'name_or_path' (a checkpoint) and 'nano' (build one)")
        if self.nano is not None and self.nano.family not in (None, "qwen2_5_vl") and self.nano.preset != "nano":
            raise ValueError(f"nano.preset: {self.nano.family} has only the 'nano' preset")
        if self.nano is not None and self.nano.like is None and self.family is not None \
                and self.family != (self.nano.family or "qwen2_5_vl"):
            raise ValueError(f"family: {self.family} differs from nano.family {self.nano.family or 'qwen2_5_vl'}")
        return self

    def key_dump(self) -> dict[str, Any]:
        """The fields that identify the model for stage keys; unset ``family`` and ``pixels`` fields are left out, so
        a run started before they existed keeps its keys."""
        dump = self.model_dump()
        for name in ("family", "pixels"):
            if dump.get(name) is None:
                dump.pop(name, None)
        for key in ("family", "like", "layers"):
            if dump.get("nano") and dump["nano"].get(key) is None:
                dump["nano"].pop(key, None)
        return dump
