"""The processes of one run (``accelerate launch``, torchrun, or any launcher that sets ``RANK``/``WORLD_SIZE`` and
``MASTER_ADDR``/``MASTER_PORT``): one process group, set up through accelerate before anything is built, and the
barrier the pipeline waits on while the main process builds data or writes a stage's files.

A barrier is a collective, not a file to poll: when a process of the run dies, the others' barrier fails at once
(its connection closes) and they stop with one line, instead of waiting hours for a file that will never come.
"""

from __future__ import annotations

from datetime import timedelta

from dermvlm.ranks import rank, world_size

# How long a process may wait at a barrier for a living peer (rank 0 building a large data recipe); a dead peer
# fails the barrier at once, whatever this is.
BARRIER_TIMEOUT = timedelta(hours=2)


class PeerError(RuntimeError):
    """Another process of the run stopped (its own error is in its output)."""


def init_processes() -> None:
    """Join the run's process group (accelerate's ``PartialState``: gloo on CPU, NCCL on GPUs), once; nothing
    with one process."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    if not dist.is_initialized():
        PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


def barrier(what: str) -> None:
    """Wait until every process of the run reaches this point (``what``: what the others waited for)."""
    if world_size() == 1:
        return
    init_processes()
    from accelerate import PartialState

    try:
        PartialState().wait_for_everyone()
    except RuntimeError as err:  # gloo / NCCL: a peer closed its connection or the wait timed out
        raise PeerError(f"rank {rank()}: another process of this run stopped while this one waited for {what} "
                        f"(its error is above; {str(err).splitlines()[0][:200]})") from None
