"""One pixel budget per run: the image size the model sees, the same in the stored data, the training processor,
the rollouts, the vLLM server, evaluation and the chat page.

The budget is ``model.pixels`` (``PixelsSpec``) or, when unset, what the model folder's own processor says. It
lives in the processor: ``apply_pixels`` sets it on a loaded one (every stage loads through ``load_processor`` and
saves its processor beside its model, so every stage folder carries it), ``vllm_processor_kwargs`` and
``vllm_pixel_args`` hand it to vLLM (``mm_processor_kwargs``). Images are stored and sent with their longer side at
``budget_side``, the longest side the budget uses for photographs up to 2:1 (at least: a recipe's own larger
``image.max_side`` wins), so no stage sees fewer pixels than the budget asks for and the processor (HF or vLLM,
with the same budget) makes the same model input of them. What a budget means per family:

- ``qwen2_5_vl``, ``qwen3_vl``: the image is resized to between ``min`` and ``max`` pixels, each side a multiple
  of patch x merge (28 / 32 px); one visual token per merge² patches.
- ``smolvlm``: the longer side is resized to √max px, then cut into tiles of the tower's size plus a global view
  (``min`` does not apply).
- ``gemma3`` (MedGemma) and ``llava_next``: a fixed input (Gemma 3: 896x896 → 256 tokens; LLaVA-NeXT: the
  checkpoint's anyres grid of tiles); they take no budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError

REFERENCE_SIZE = (1024, 768)  # a typical dermoscopy photograph (width, height)
BIG = 16384  # larger than any side a budget keeps
RESIZE, TILES, FIXED, ANYRES = "resize", "tiles", "fixed", "anyres"
FAMILY_KINDS = {"qwen2_5_vl": RESIZE, "qwen3_vl": RESIZE, "smolvlm": TILES, "gemma3": FIXED, "llava_next": ANYRES}
PROCESSOR_KINDS = {"Qwen2VLImageProcessor": RESIZE, "Idefics3ImageProcessor": TILES, "Gemma3ImageProcessor": FIXED,
                   "LlavaNextImageProcessor": ANYRES}
NO_BUDGET = {
    "gemma3": "gemma3 (Gemma 3 / MedGemma) resizes every image to its fixed input (896x896, 256 tokens in the real "
              "checkpoints)",
    "llava_next": "llava_next tiles every image on the checkpoint's anyres grid (its image_grid_pinpoints)",
}


def check_pixels(family: str | None, pixels: Any) -> str | None:
    """Why ``family`` cannot take the budget ``pixels`` (a ``PixelsSpec``): one line naming the field and what to
    use; ``None`` when it can (or when either is unknown)."""
    if pixels is None or family is None:
        return None
    if family in NO_BUDGET:
        return f"model.pixels: {NO_BUDGET[family]}; leave model.pixels out"
    if FAMILY_KINDS.get(family) == TILES:
        if pixels.min is not None:
            return ("model.pixels.min: smolvlm has no minimum (its tiles have one size); give only model.pixels.max "
                    "(the longer side is resized to √max px)")
        if pixels.max is None:
            return "model.pixels: give model.pixels.max for smolvlm (the longer side is resized to √max px)"
    return None


def image_kind(image_processor: Any) -> str | None:
    """``resize``, ``tiles``, ``fixed``, ``anyres`` or None for an image processor (its class, any backend)."""
    name = type(image_processor).__name__
    return next((kind for prefix, kind in PROCESSOR_KINDS.items() if name.startswith(prefix)), None)


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def apply_pixels(processor: Any, family: str | None, pixels: Any) -> Any:
    """Set the budget ``pixels`` on ``processor``'s image processor (in place; returned); ``None`` keeps the
    processor's own settings. A budget the family cannot take raises ``ConfigError`` naming ``model.pixels``."""
    if pixels is None:
        return processor
    ip = _image_processor(processor)
    kind = image_kind(ip)
    why = check_pixels(family or _family_of_kind(kind), pixels)
    if why:
        raise ConfigError(why)
    if kind == RESIZE:
        low = pixels.min if pixels.min is not None else ip.size["shortest_edge"]
        high = pixels.max if pixels.max is not None else ip.size["longest_edge"]
        if low > high:
            raise ConfigError(f"model.pixels: the budget's minimum {low} exceeds its maximum {high} (one of them is "
                             "the checkpoint's own); set both model.pixels.min and model.pixels.max")
        ip.size = {"shortest_edge": low, "longest_edge": high}
    elif kind == TILES:
        ip.size = {"longest_edge": math.isqrt(pixels.max)}
    else:
        raise ConfigError(f"model.pixels: {type(ip).__name__} takes no pixel budget; leave model.pixels out")
    return processor


def _family_of_kind(kind: str | None) -> str | None:
    return {FIXED: "gemma3", ANYRES: "llava_next", TILES: "smolvlm"}.get(kind or "")


def vllm_processor_kwargs(processor: Any) -> dict[str, Any]:
    """vLLM's ``mm_processor_kwargs`` that give its processor this processor's budget (``{}`` for a fixed input)."""
    ip = _image_processor(processor)
    kind = image_kind(ip)
    if kind == RESIZE:
        return {"size": {"shortest_edge": int(ip.size["shortest_edge"]), "longest_edge": int(ip.size["longest_edge"])}}
    if kind == TILES:
        return {"size": {"longest_edge": int(ip.size["longest_edge"])}}
    return {}


def vllm_pixel_args(model_dir: str | Path) -> list[str]:
    """vLLM server flags that hold its processor to a model folder's pixel budget: ``--mm-processor-kwargs`` (what
    the folder's own processor says) and, for families that also take video, ``--limit-mm-per-prompt`` without
    video (so vLLM sizes its memory for images only). None for a hub name: vLLM reads that checkpoint as it is."""
    import json

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        return []
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(str(folder))
    kwargs = vllm_processor_kwargs(ip)
    args = ["--mm-processor-kwargs", json.dumps(kwargs)] if kwargs else []
    if image_kind(ip) == RESIZE:
        args += ["--limit-mm-per-prompt", json.dumps({"video": 0})]
    return args


def input_size(processor: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) the processor resizes an image of this size to before it cuts patches or tiles."""
    ip = _image_processor(processor)
    kind = image_kind(ip)
    if kind == RESIZE:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, ip.patch_size * ip.merge_size, ip.size["shortest_edge"],
                            ip.size["longest_edge"])
    elif kind == TILES and ip.do_resize:
        from transformers.models.idefics3.image_processing_idefics3 import (
            _resize_output_size_rescale_to_max_len,
            _resize_output_size_scale_below_upper_bound,
        )

        h, w = _resize_output_size_rescale_to_max_len(height, width, max_len=ip.size["longest_edge"])
        h, w = _resize_output_size_scale_below_upper_bound(h, w)
    elif kind == FIXED and not getattr(ip, "do_pan_and_scan", False):
        w, h = ip.size["width"], ip.size["height"]
    elif kind == ANYRES:
        from transformers.image_processing_utils import select_best_resolution

        best_h, best_w = select_best_resolution((height, width), ip.image_grid_pinpoints)
        scale = min(best_w / width, best_h / height)
        w, h = min(math.ceil(width * scale), best_w), min(math.ceil(height * scale), best_h)
    else:
        return width, height
    return w, h


def image_tokens(processor: Any, width: int, height: int) -> int:
    """Tokens one image of this size adds to a chat prompt, counted by the processor itself (image placeholders,
    and per family the wrappers, tile and row markers)."""
    from PIL import Image

    def ids(content: list[dict[str, Any]], images: list | None) -> int:
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        return len(processor(text=[text], images=images, return_tensors="np")["input_ids"][0])

    question = {"type": "text", "text": "What is it?"}
    image = Image.new("RGB", (width, height), (180, 120, 100))
    return ids([{"type": "image"}, question], [image]) - ids([question], None)


def budget_side(processor: Any) -> int | None:
    """The longest image side the processor uses at its budget, for photographs up to 2:1 either way: what a run
    stores and sends images at, at least (``None`` for a processor this module does not know)."""
    ip = _image_processor(processor)
    kind = image_kind(ip)
    if kind is None:
        return None
    if kind == FIXED and not getattr(ip, "do_pan_and_scan", False):  # squeezed square: a 2:1 image keeps its height
        return 2 * max(ip.size["width"], ip.size["height"])
    shapes = ((BIG, BIG // 2), (BIG // 2, BIG), (BIG, BIG))
    return max(max(input_size(processor, w, h)) for w, h in shapes)


@dataclass(frozen=True)
class PixelBudget:
    """A run's pixel budget as its processor applies it, and what it costs for one reference image."""

    kind: str  # resize, tiles, fixed, anyres or unknown
    min_pixels: int | None  # resize: the budget; otherwise none
    max_pixels: int | None  # resize: the budget; tiles: (longest edge)²; fixed / anyres: none (a fixed input)
    image_side: int | None  # the longest side images are stored and sent at (None: as they are)
    image_size: tuple[int, int]  # the reference image (width, height)
    input_size: tuple[int, int]  # the size the processor turns it into
    tokens_per_image: int  # tokens it adds to a prompt

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pixel_budget(processor: Any, image_size: tuple[int, int] = REFERENCE_SIZE, floor_side: int = 0) -> PixelBudget:
    """The effective budget of ``processor`` (after ``apply_pixels``) and the tokens an image of ``image_size``
    (width, height) costs at it: what the memory planner and the manifest read. ``floor_side``: a longest side the
    run keeps images at anyway (the data recipe's ``image.max_side``)."""
    ip = _image_processor(processor)
    kind = image_kind(ip) or "unknown"
    low = high = None
    if kind == RESIZE:
        low, high = int(ip.size["shortest_edge"]), int(ip.size["longest_edge"])
    elif kind == TILES:
        high = int(ip.size["longest_edge"]) ** 2
    side = budget_side(processor)
    w, h = image_size
    return PixelBudget(kind, low, high, max(side, floor_side) if side else None, (w, h), input_size(processor, w, h),
                       image_tokens(processor, w, h))


PIXELS_FILE = "dermvlm_pixels.json"  # a stage's model folder: the run's budget and image side


def write_pixels_file(model_dir: str | Path, budget: PixelBudget) -> Path:
    import json

    from dermvlm.io import atomic_write_text

    return atomic_write_text(Path(model_dir) / PIXELS_FILE, json.dumps(budget.as_dict(), indent=2) + "\n")


def image_side(model_dir: str | Path) -> int | None:
    """The longest side to send a model folder's images at: the side its run stored them at (``PIXELS_FILE``), else
    what its processor's budget uses; ``None`` when neither says (not a local model folder, or an unknown
    processor)."""
    import json

    record = Path(model_dir) / PIXELS_FILE
    if record.is_file():
        return json.loads(record.read_text()).get("image_side")
    if not (Path(model_dir) / "config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    return budget_side(AutoImageProcessor.from_pretrained(str(model_dir)))
