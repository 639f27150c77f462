"""DPO's policy samples from vLLM's offline engine, in a child process of its own.

The child holds the engine and its GPU memory only while it samples, and gives everything back when it exits, before
the stage trains (an in-process engine kept 90 % of the GPU through training). Under several processes each rank's
child sees only that rank's GPU (``CUDA_VISIBLE_DEVICES``), not GPU 0 for all. The engine is sized by the prompts:
the longest prompt with its images plus the answer (``max_model_len``), the most images in one prompt, and the GPU
memory free when it starts; on the CPU build, eager mode and a fixed KV cache as for serving. Its processor, and the
engine's, have the run's pixel budget (``model.pixels`` as JSON; ``null``: the folder's own).

    python -m dermvlm.training.vllm_sampling MODEL_DIR ROWS_DIR OUT_JSON K MAX_NEW_TOKENS SEED [PIXELS_JSON]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dermvlm import lifeline

CPU_KV_CACHE = 512 * 2**20  # bytes


def engine_limits(processor, rows, max_new_tokens: int) -> dict[str, Any]:
    """``max_model_len`` (the longest prompt's tokens, images included, plus the answer) and the most images in one
    prompt, from the model's own processor."""
    longest, images = 0, 1
    for row in rows:
        text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = processor(text=[text], images=row["images"] or None, return_tensors="pt")["input_ids"]
        longest = max(longest, ids.shape[1])
        images = max(images, len(row["images"] or []))
    return {"max_model_len": longest + max_new_tokens + 8, "limit_mm_per_prompt": {"image": images}}


def child_environment(local_rank: int, visible: str | None) -> dict[str, str]:
    """The child's environment: only this rank's GPU visible (of those the parent sees), no process group."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    gpus = [g for g in (visible.split(",") if visible else []) if g.strip()]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[local_rank % len(gpus)]
    elif visible is None:
        env["CUDA_VISIBLE_DEVICES"] = str(local_rank)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env


def sample_in_child(model_dir: str, rows, k: int, max_new_tokens: int, seed: int, work: Path,
                    pixels=None) -> list[list[str]]:
    """``k`` sampled answers per row from a vLLM engine in a child process (see the module docstring); ``pixels``:
    the run's ``PixelsSpec``."""
    from dermvlm.io import atomic_dir

    with atomic_dir(work / "rows") as tmp:
        rows.save_to_disk(str(tmp))
    out = work / "samples.json"
    out.unlink(missing_ok=True)
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = child_environment(int(os.environ.get("LOCAL_RANK", "0")), visible) if torch.cuda.is_available() \
        else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "dermvlm.training.vllm_sampling", model_dir, str(work / "rows"), str(out), str(k),
           str(max_new_tokens), str(seed), json.dumps(pixels.model_dump() if pixels is not None else None)]
    log = work / "vllm.log"
    with open(log, "wb") as f:  # under a lifeline: the engine dies with this process, whatever kills it
        done = lifeline.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"vLLM sampling exited with code {done.returncode} (log: {log}): {' | '.join(tail)}")
    return json.loads(out.read_text())


def _engine_kwargs(limits: dict[str, Any]) -> dict[str, Any]:
    import torch

    from dermvlm.devices import vllm_target

    if vllm_target() == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {**limits, "gpu_memory_utilization": round(min(0.9, 0.9 * free / total), 3)}
    return {**limits, "enforce_eager": True, "kv_cache_memory_bytes": CPU_KV_CACHE}


def main(model_dir: str, rows_dir: str, out: str, k: int, max_new_tokens: int, seed: int,
         pixels: dict[str, Any] | None = None) -> None:
    from datasets import load_from_disk
    from vllm import LLM, SamplingParams

    from dermvlm.config import PixelsSpec
    from dermvlm.io import atomic_write_text
    from dermvlm.models.loading import load_processor
    from dermvlm.models.pixels import vllm_processor_kwargs

    rows = load_from_disk(rows_dir)
    processor = load_processor(model_dir, pixels=PixelsSpec(**pixels) if pixels else None)
    limits = engine_limits(processor, rows, max_new_tokens)
    llm = LLM(model=model_dir, seed=seed, mm_processor_kwargs=vllm_processor_kwargs(processor) or None,
              **_engine_kwargs(limits))
    conversations = []
    for row in rows:
        images = iter(row["images"])
        conversations.append([{"role": m["role"], "content": [
            {"type": "image_pil", "image_pil": next(images)} if p["type"] == "image" else
            {"type": "text", "text": p["text"]} for p in m["content"]]} for m in row["prompt"]])
    params = SamplingParams(n=k, temperature=1.0, max_tokens=max_new_tokens, seed=seed)
    results = llm.chat(conversations, params, use_tqdm=False)
    atomic_write_text(Path(out), json.dumps([[o.text for o in r.outputs] for r in results]))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), json.loads(a[6]) if len(a) > 6 else None)
