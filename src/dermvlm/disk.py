"""A failed write named as what it is: PyTorch reports a full disk during ``torch.save`` as
``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534``; ``write_failure`` turns
that (and safetensors' wrapped ENOSPC) into an ``OSError`` naming the folder, which the CLI prints as one line
("no space left on the device ... free space or choose another folder")."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

LOW_SPACE = 64 * 2**20  # what a write that just failed on a full disk leaves free, at most
TORCH_WRITE_FAILED = "inline_container.cc"


def write_failure(err: BaseException, folder: str | Path) -> BaseException:
    """The error to raise for ``err``, raised while writing into ``folder``: an ``OSError`` (ENOSPC) naming the
    folder when the disk there is full, else ``err`` itself."""
    text = str(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return err
    if TORCH_WRITE_FAILED not in text and "No space left on device" not in text:
        return err
    try:
        free = shutil.disk_usage(Path(folder)).free
    except OSError:
        return err
    if free > LOW_SPACE and "No space left on device" not in text:
        return err
    return OSError(errno.ENOSPC, f"no space left on the device ({free // 2**20} MB free) while saving a checkpoint",
                   str(folder))
