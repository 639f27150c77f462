"""What the per-family tiny builders share: the local tokenizer, TRL's real chat templates, seeding, saving.

Each family module builds a config, a processor and a random-weight model of its own architecture; these
helpers keep the tokenizer (the dermatology byte-level BPE of ``nano.py``), the template source and the folder
layout (``save_pretrained`` + ``dermvlm_nano.json``) the same for every family.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any


def trl_chat_template(name: str) -> str:
    """A chat template TRL ships (``trl/chat_templates/<name>.jinja``): the family's real one or its training
    variant with ``{% generation %}`` markers."""
    path = resources.files("trl").joinpath("chat_templates", f"{name}.jinja")
    if not path.is_file():
        raise FileNotFoundError(f"TRL ships no chat template {name!r} (trl/chat_templates/{name}.jinja)")
    return path.read_text()


def local_tokenizer(vocab_size: int, seed: int, special_tokens: list[str], extra_terms: list[str] | None = None,
                    added_tokens: tuple[str, ...] = (), **fast_kwargs: Any):
    """The dermatology BPE with this family's special tokens (ids 0..n-1), wrapped as a fast tokenizer.

    ``added_tokens`` are plain (non-special) vocabulary entries, e.g. literal newline runs a processor looks up.
    ``fast_kwargs`` go to ``PreTrainedTokenizerFast`` (bos/eos/pad tokens, ``extra_special_tokens``, ...)."""
    from transformers import PreTrainedTokenizerFast

    from dermvlm.models.nano import train_bpe

    tok = train_bpe(vocab_size, seed, special_tokens, extra_terms)
    if added_tokens:
        tok.add_tokens(list(added_tokens))
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", model_max_length=4096, **fast_kwargs)


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_model(config, seed: int, eos_token_id: int | list[int], pad_token_id: int, bos_token_id: int | None,
                 init_std: float | None = None):
    """A float32 ``AutoModelForImageTextToText`` with random weights for ``config``, generation ids set;
    ``init_std`` replaces the initialisation's standard deviation (``initializer_range``) everywhere."""
    import torch
    from transformers import AutoModelForImageTextToText

    config.dtype = "float32"
    if init_std is not None:
        for part in (config, config.get_text_config(), config.vision_config):
            part.initializer_range = init_std
    seed_all(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model


def save_folder(out: str | Path, model, processor, info: dict[str, Any],
                hub_key: Callable[[str], str] | None = None) -> Path:
    """Save model and processor as one HF folder at ``out`` (atomically) with ``dermvlm_nano.json``.

    ``hub_key`` renames the saved weights into the layout of the family's real hub checkpoints where transformers
    saves a freshly built model differently (what vLLM loads is the hub layout; transformers loads both, and a
    model loaded from the hub layout saves in it again)."""
    from dermvlm.io import atomic_dir

    with atomic_dir(out, command="nano build") as tmp:
        model.save_pretrained(tmp)
        if hub_key is not None:
            from safetensors.torch import load_file, save_file

            weights = tmp / "model.safetensors"
            save_file({hub_key(k): v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
        processor.save_pretrained(tmp)
        n_params = sum(t.numel() for t in model.parameters())
        (tmp / "dermvlm_nano.json").write_text(json.dumps({**info, "parameters": n_params}, indent=2) + "\n")
    return Path(out)


def check_preset(preset: Any, presets: dict[str, Any], family: str) -> Any:
    """The named preset's sizes; a preset object (a real-shape build, ``models/real_shapes.py``) as it is."""
    if not isinstance(preset, str):
        return preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for family {family}; choose one of {sorted(presets)}")
    return presets[preset]


def preset_name(preset: Any) -> str:
    """What ``dermvlm_nano.json`` records as the preset: its name, or ``like`` for a real-shape preset object."""
    return preset if isinstance(preset, str) else "like"


def refuse(family: str, **options: Any) -> None:
    """Fail on builder options this family has no use for (instead of silently ignoring them)."""
    given = [k for k, v in options.items() if v is not None]
    if given:
        raise ValueError(f"family {family} does not take {', '.join(given)} (its image size is fixed by the preset)")
