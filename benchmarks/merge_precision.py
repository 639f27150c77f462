"""Per-element rounding of LoRA updates merged into bfloat16, on one synthetic real-width layer (Qwen2.5-VL-7B's
gate_proj, 18944 x 3584, N(0, 0.02) weights stored in bf16, three random rank-32 updates of 1e-3 and 1e-2 relative
norm, as three LoRA stages): each stage merging into the bf16 folder of the one before (what the pipeline does), one
float32 merge cast to bf16 once, and float32 kept; then NF4's own error on the same weights.

What it measures is the Frobenius norm of the rounding noise relative to the Frobenius norm of the updates' sum,
element by element. That is not what a stage loses: round-to-nearest adds noise that is uncorrelated with the inputs
(its expected change is the update itself), while the update is low-rank and aligned with them, so the model's
function can keep nearly all of an update whose elements are mostly rounding noise. ``merge_function.py`` measures
the function (KL, greedy tokens, held-out loss) of QLoRA adapters trained for real; docs/BENCHMARKS.md, "Merge
precision", has both. CPU, about a minute:

    python benchmarks/merge_precision.py
"""

from __future__ import annotations

import bitsandbytes.functional as bnb
import torch

OUT, IN, RANK = 18944, 3584, 32


def low_rank_update(w, relative: float):
    d = torch.randn(OUT, RANK) @ torch.randn(RANK, IN)
    return d * (relative * w.float().norm() / d.norm())


def update_error(w, w0, total) -> float:
    """How far the merged weights' change is from the updates' sum, relative to the sum."""
    return float(((w.float() - w0.float()) - total).norm() / total.norm())


def main() -> None:
    torch.manual_seed(0)
    w0 = (torch.randn(OUT, IN) * 0.02).to(torch.bfloat16)
    for relative in (1e-3, 1e-2):
        updates = [low_rank_update(w0, relative) for _ in range(3)]
        total = sum(updates)
        chained = w0
        for d in updates:
            chained = (chained.float() + d).to(torch.bfloat16)
        once = (w0.float() + total).to(torch.bfloat16)
        kept = w0.float() + total
        print(f"update/weight {relative:g}: lost to rounding, chained bf16 merges "
              f"{update_error(chained, w0, total):.3f}, "
              f"one float32 merge cast once {update_error(once, w0, total):.3f}, "
              f"float32 kept {update_error(kept, w0, total):.1e}")
    packed, state = bnb.quantize_4bit(w0.float(), quant_type="nf4", blocksize=64)
    nf4 = bnb.dequantize_4bit(packed, state)
    print(f"NF4 error relative to the weights: {float((nf4 - w0.float()).norm() / w0.float().norm()):.4f}")


if __name__ == "__main__":
    main()
