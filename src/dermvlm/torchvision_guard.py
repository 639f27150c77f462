"""Make PyPI's CUDA torchvision importable beside a CPU-only torch (see ENVIRONMENT.md).

PyPI's torchvision wheels are CUDA builds; next to ``torch+cpu`` their compiled ops cannot load and
``import torchvision`` fails with ``operator torchvision::nms does not exist`` because two
``register_fake`` decorators in ``torchvision/_meta_registrations.py`` are not guarded. This module guards
them with ``torchvision.extension._has_ops()``. It changes nothing when torch is a CUDA build or when
torchvision already imports, and applying it twice is a no-op.

Run: ``python -m dermvlm.torchvision_guard`` (``make setup`` does). Standard library only, so it runs
before the package's own dependencies are importable.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

MARKER = "# dermvlm: guarded for CPU torch"
OPS = ("torchvision::nms", "torchvision::qnms")


def _imports_cleanly() -> tuple[bool, str]:
    proc = subprocess.run(
        [sys.executable, "-c", "import torchvision"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def _torch_is_cpu_only() -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.version.cuda)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip() == "None"


def guard_source(text: str) -> str:
    """Return ``_meta_registrations.py`` source with the unguarded decorators made conditional."""
    if MARKER in text:
        return text
    out = text
    for op in OPS:
        plain = f'@torch.library.register_fake("{op}")'
        guarded = (
            f'@(torch.library.register_fake("{op}") if torchvision.extension._has_ops() '
            f"else (lambda fn: fn))  {MARKER}"
        )
        out = out.replace(plain, guarded)
    return out


def apply() -> str:
    """Apply the guard where needed; return a one-line account of what was done."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "torchvision not installed: nothing to do"
    ok, err = _imports_cleanly()
    if ok:
        return "torchvision imports: nothing to do"
    if not _torch_is_cpu_only():
        raise SystemExit(f"torchvision fails to import beside a CUDA torch (not fixable here): {err}")
    target = Path(spec.origin).parent / "_meta_registrations.py"
    text = target.read_text()
    new = guard_source(text)
    if new == text:
        raise SystemExit(f"torchvision fails to import and {target} has no known decorator to guard: {err}")
    tmp = target.with_suffix(".py.dermvlm-tmp")
    tmp.write_text(new)
    tmp.replace(target)
    ok, err = _imports_cleanly()
    if not ok:
        raise SystemExit(f"torchvision still fails after the guard: {err}")
    return f"guarded {target}"


if __name__ == "__main__":
    print(apply())
