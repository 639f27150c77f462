"""How a run's final model is served (vLLM) and what the demo asks it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dermvlm.config.base import Strict


class ServeSpec(Strict):
    """How ``serve`` starts vLLM for this run."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, lt=65536)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=1024, gt=0)
    kv_cache_memory: str = "128M"
    startup_timeout: float = Field(default=300.0, gt=0)
    api_key: str | None = None


class DemoSpec(Strict):
    """The question the demo asks the served model about one sample image."""

    question: str = "What is the most likely diagnosis of this skin lesion?"
    image: str | None = None  # a bundled sample image name; the first one when None
    max_tokens: int = Field(default=64, gt=0)
