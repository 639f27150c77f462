"""GRPO generation with vLLM at the run's pixel budget.

TRL 1.16 builds its colocated engine as ``vllm.LLM(model=model.name_or_path, ...)`` without ``mm_processor_kwargs``
(``trl/generation/vllm_generation.py``), so vLLM's processor would resize images to the checkpoint's own budget
while the prompt ids TRL hands it carry the image tokens of the training processor's budget: the counts differ and
vLLM refuses the prompt (where they happen to agree, it sees other pixels). ``budgeted_colocate`` gives the engine
the budget while the trainer builds it. A vLLM server (``vllm_mode: server``) is started by the user: ``server_flags``
are the flags it needs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from typing import Any

from dermvlm.models.pixels import vllm_processor_kwargs

log = logging.getLogger(__name__)


@contextlib.contextmanager
def budgeted_colocate(args: Any, processor: Any) -> Iterator[None]:
    """While the trainer is built: TRL's colocated ``vllm.LLM`` gets ``processor``'s pixel budget."""
    kwargs = vllm_processor_kwargs(processor)
    if not (args.use_vllm and args.vllm_mode == "colocate" and kwargs):
        if args.use_vllm and args.vllm_mode == "server":
            log.info("GRPO generates on a vLLM server: it must run with %s (the run's pixel budget)",
                     " ".join(server_flags(processor)))
        yield
        return
    from trl.generation import vllm_generation

    build = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(build, mm_processor_kwargs=kwargs)
    try:
        yield
    finally:
        vllm_generation.LLM = build


def server_flags(processor: Any) -> list[str]:
    """The ``vllm serve`` / ``trl vllm-serve`` flags that give the server ``processor``'s pixel budget."""
    kwargs = vllm_processor_kwargs(processor)
    return ["--mm-processor-kwargs", f"'{json.dumps(kwargs)}'"] if kwargs else []
