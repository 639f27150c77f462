"""VLM families: what differs between Qwen2.5-VL, Gemma 3, SmolVLM, ... held in one small description per family.

``FAMILIES`` maps a family name to its :class:`Family`; ``family_for`` finds the family of a loaded model or of a
checkpoint's ``config.json`` (its ``model_type``). Parameter-name prefixes cover both the names of the model as
``AutoModelForImageTextToText`` loads it and the names its checkpoint stores (a peft wrapper's prefix is stripped
before matching).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UnknownFamilyError(ValueError):
    """A family name or checkpoint type this registry does not describe."""


@dataclass(frozen=True)
class Family:
    """One VLM family."""

    name: str
    description: str
    model_types: tuple[str, ...]  # config.json ``model_type`` values of its checkpoints
    vision_tower: tuple[str, ...]  # parameter-name prefixes of the vision encoder (projector excluded)
    projector: tuple[str, ...]  # prefixes of the vision → language projector
    language: tuple[str, ...]  # prefixes of the language model and its head
    lm_lora_targets: str  # regex of the language model's linear layers (peft target_modules)
    vision_lora_targets: str  # regex of the vision tower's linear layers
    vision_modules: tuple[str, ...]  # module paths holding the vision tower and projector (the vision stage's parts)
    language_module: str  # module path of the language model (without its head)

    def part_of(self, name: str) -> str | None:
        """``vision``, ``projector``, ``language`` or None for a parameter name."""
        name = strip_peft_prefix(name)
        if any(name.startswith(p) for p in self.projector):
            return "projector"
        if any(name.startswith(p) for p in self.vision_tower):
            return "vision"
        if any(name.startswith(p) for p in self.language):
            return "language"
        return None


def strip_peft_prefix(name: str) -> str:
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


# one module per family, each holding ``FAMILY``, ``PRESETS`` and ``build_nano`` (its tiny random-weight builder)
FAMILY_MODULES = ("qwen2_5_vl", "qwen3_vl", "gemma3", "smolvlm", "llava_next")


def _module(name: str):
    return importlib.import_module(f"dermvlm.models.families.{name}")


def _registry() -> dict[str, Family]:
    return {f.name: f for f in (_module(m).FAMILY for m in FAMILY_MODULES)}


FAMILIES: dict[str, Family] = _registry()


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        from dermvlm.config import did_you_mean

        raise UnknownFamilyError(f"unknown model family {name!r}{did_you_mean(name, list(FAMILIES))}; known: "
                                 f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def nano_builder(name: str) -> Callable[..., Path]:
    """The family's tiny builder: ``build_nano(out, preset, seed, min_pixels, max_pixels, extra_terms,
    patch_size) -> Path`` (options a family cannot honour raise ``ValueError``)."""
    return _module(get_family(name).name).build_nano


def config_builder(name: str) -> Callable[..., Any]:
    """The family's ``model_config(preset, vocab_size, token_ids)``: the transformers config its builder uses."""
    return _module(get_family(name).name).model_config


def image_processor_builder(name: str) -> Callable[..., Any]:
    """The family's ``image_processor(preset, min_pixels, max_pixels)``: the image processor its builder saves."""
    return _module(get_family(name).name).image_processor


def special_tokens(name: str) -> list[str]:
    """The special tokens the family's local tokenizer starts its vocabulary with (ids 0, 1, ...)."""
    return list(_module(get_family(name).name).SPECIAL_TOKENS)


def nano_presets(name: str) -> dict[str, Any]:
    """The family's builder presets (name → sizes)."""
    return _module(get_family(name).name).PRESETS


def family_for(model_or_path: Any) -> Family:
    """The family of a loaded model (its ``config.model_type``) or of a checkpoint folder's ``config.json``."""
    if isinstance(model_or_path, str | Path):
        config_file = Path(model_or_path) / "config.json"
        if not config_file.is_file():
            raise UnknownFamilyError(f"{model_or_path}: no config.json, so its model family is unknown")
        model_type = json.loads(config_file.read_text()).get("model_type", "")
        where = str(config_file)
    else:
        model = getattr(model_or_path, "base_model", model_or_path)
        model = getattr(model, "model", model) if not hasattr(model, "config") else model
        model_type = model.config.model_type
        where = type(model).__name__
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UnknownFamilyError(f"{where}: model_type {model_type!r} is not one of the families dermvlm knows "
                             f"({', '.join(sorted(FAMILIES))})")
