"""What a model is made of, without its weights: parameters per part, every linear layer's shape, the text and
vision widths, and how many tokens and vision patches one image becomes at a pixel budget.

The model is built on the meta device (``accelerate.init_empty_weights``) from its config: a local checkpoint's
``config.json``, a nano or real-shape build's config (``models/real_shapes.py``), or, for a hub id that is not on
disk, the registered real shape of that checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.config import ModelSpec


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Footprint:
    """Parameter counts and widths of one model (``source`` says where they were read)."""

    source: str
    family: str
    parts: dict[str, int]  # vision, projector, language (embeddings and head included)
    embedding_params: int  # input embeddings and an untied output head
    linears: tuple[Linear, ...]
    hidden: int
    intermediate: int
    layers: int
    q_dim: int
    kv_dim: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def quantizable(self) -> int:
        """Parameters bitsandbytes stores in 4 bits: every linear layer's weight except the output head."""
        return sum(x.in_features * x.out_features for x in self.linears if not x.name.endswith("lm_head"))

    def lora_params(self, targets: str | list[str], r: int) -> int:
        """LoRA A and B parameters on the linear layers ``targets`` matches (peft's rule: a regex is matched
        against the whole module name, a list against the name's last part)."""
        import re

        def hit(name: str) -> bool:
            if isinstance(targets, str):
                return re.fullmatch(targets, name) is not None
            return name.split(".")[-1] in targets or name in targets

        return sum(r * (x.in_features + x.out_features) for x in self.linears if hit(x.name))


@dataclass(frozen=True)
class ImageGeometry:
    """One image of ``size`` (width, height) after the processor: tokens the language model reads and patches
    the vision tower runs on."""

    size: tuple[int, int]
    tokens: int
    patches: int


def resolve_model(spec: ModelSpec) -> tuple[Any, Any, str]:
    """(transformers config, image processor, where they came from) for the run's model, read offline."""
    from dermvlm.models.families import config_builder, image_processor_builder, nano_presets, special_tokens

    if spec.nano is not None:
        from dermvlm.models.real_shapes import LOCAL_VOCAB, get_shape, preset_at_depth

        n = spec.nano
        if n.like:
            shape = get_shape(n.like)
            family, preset = shape.family, preset_at_depth(shape, n.layers or 1)
            label = f"{n.like} shape, {n.layers or 1} layer(s) (random weights)"
        else:
            family = n.family or "qwen2_5_vl"
            preset, label = nano_presets(family)[n.preset], f"{family} {n.preset} build"
        ids = {t: i for i, t in enumerate(special_tokens(family))}
        config = config_builder(family)(preset, LOCAL_VOCAB + len(ids), ids)
        kwargs = {"patch_size": n.patch_size} if n.patch_size and family.startswith("qwen") else {}
        processor = image_processor_builder(family)(preset, n.min_pixels, n.max_pixels, **kwargs)
        return config, processor, label
    name = str(spec.name_or_path)
    if Path(name).is_dir():
        from transformers import AutoConfig, AutoImageProcessor

        return (AutoConfig.from_pretrained(name, trust_remote_code=spec.trust_remote_code),
                AutoImageProcessor.from_pretrained(name, trust_remote_code=spec.trust_remote_code), name)
    from dermvlm.models.real_shapes import full_config, shape_for_hub_id

    shape = shape_for_hub_id(name)
    if shape is None:
        raise ValueError(f"model.name_or_path: {name} is not a local folder and dermvlm has no registered shape of "
                         f"it; download it first (hf download {name} --local-dir DIR) and plan with DIR")
    processor = image_processor_builder(shape.family)(shape.preset)
    return full_config(shape), processor, f"{name} (registered shape: {shape.sources[0].split(' ')[0]})"


def footprint(config: Any, source: str) -> Footprint:
    """Count parameters and list linear layers of ``config``'s model built on the meta device (a text-only
    config, e.g. for comparing with published LLM figures, counts as all language model)."""
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from dermvlm.models.families import UnknownFamilyError, family_for

    vision = getattr(config, "vision_config", None)
    with init_empty_weights():
        model = (AutoModelForImageTextToText if vision is not None else AutoModelForCausalLM).from_config(config)
    model.tie_weights()  # from_config on the meta device leaves tied embeddings apart
    try:
        family = family_for(model)
    except UnknownFamilyError:
        family = None
    parts = {"vision": 0, "projector": 0, "language": 0}
    for name, p in model.named_parameters():
        parts[(family.part_of(name) if family else None) or "language"] += p.numel()
    embeddings = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        embeddings += head.weight.numel()
    linears = tuple(Linear(n, m.in_features, m.out_features) for n, m in model.named_modules()
                    if isinstance(m, nn.Linear))
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Footprint(
        source=source, family=family.name if family else config.model_type, parts=parts,
        embedding_params=embeddings, linears=linears, hidden=text.hidden_size, intermediate=text.intermediate_size,
        layers=text.num_hidden_layers, q_dim=heads * head_dim, kv_dim=text.num_key_value_heads * head_dim,
        vocab=text.vocab_size, vision_hidden=vision.hidden_size if vision else 0,
        vision_intermediate=vision.intermediate_size if vision else 0,
        vision_layers=(getattr(vision, "depth", None) or vision.num_hidden_layers) if vision else 0)


def image_geometry(config: Any, image_processor: Any, size: tuple[int, int],
                   pixels: tuple[int | None, int | None] = (None, None)) -> ImageGeometry:
    """Run the image processor on a blank image of ``size`` (width, height) and read what the model gets;
    ``pixels`` (min, max) overrides a native-resolution processor's bounds (the run's pixel budget)."""
    from PIL import Image

    kwargs: dict[str, Any] = {}
    if any(pixels) and "shortest_edge" in (getattr(image_processor, "size", None) or {}):
        bounds = dict(image_processor.size)
        bounds.update({k: v for k, v in zip(("shortest_edge", "longest_edge"), pixels, strict=True) if v})
        kwargs["size"] = bounds
    out = image_processor(images=[Image.new("RGB", size)], return_tensors="pt", **kwargs)
    vision = config.vision_config
    if "image_grid_thw" in out:  # Qwen: patches of the native-resolution grid, merged 2x2 into tokens
        patches = int(out["image_grid_thw"].prod(-1).sum())
        return ImageGeometry(size, patches // image_processor.merge_size**2, patches)
    values = out["pixel_values"]
    crops = values.shape[1] if values.dim() == 5 else values.shape[0]  # tiles (SmolVLM, LLaVA-NeXT) or crops
    per_crop = (values.shape[-1] // vision.patch_size) ** 2
    if getattr(config, "image_grid_pinpoints", None):  # LLaVA-NeXT: base view + unpadded grid + row newlines
        return ImageGeometry(size, anyres_tokens(config, image_processor, size, values.shape[-1]), crops * per_crop)
    if getattr(config, "mm_tokens_per_image", None):  # Gemma 3: pooled to a fixed number per crop
        return ImageGeometry(size, crops * config.mm_tokens_per_image, crops * per_crop)
    scale = getattr(config, "scale_factor", 1) or 1  # SmolVLM's pixel shuffle
    return ImageGeometry(size, crops * per_crop // scale**2, crops * per_crop)


def anyres_tokens(config: Any, image_processor: Any, size: tuple[int, int], tile: int) -> int:
    """Image tokens LLaVA-NeXT's processor puts in a prompt for an image of ``size`` (width, height), counted by
    transformers' own rule (``LlavaNextProcessor._get_number_of_features``, which needs no tokenizer)."""
    from transformers import LlavaNextProcessor

    counter = LlavaNextProcessor.__new__(LlavaNextProcessor)  # the count reads only these three attributes
    counter.image_processor, counter.patch_size = image_processor, config.vision_config.patch_size
    counter.num_additional_image_tokens = 1  # CLIP's CLS token
    tokens = counter._get_number_of_features(size[1], size[0], tile, tile)
    return tokens - (config.vision_feature_select_strategy == "default")  # the processor drops the CLS again
