"""Fetch a public dataset's official release where the internet is reachable: DermaMNIST's ``.npz`` from the
MedMNIST+ record on Zenodo (what ``medmnist`` downloads), checked before it is kept, written atomically.

DermaMNIST is CC BY-NC 4.0 (derived from HAM10000): fetch it for research, keep it out of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

ZENODO = "https://zenodo.org/records/10519652/files"  # MedMNIST+ (MedMNIST v2 at 28, 64, 128 and 224 px)
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


class FetchError(RuntimeError):
    """A fetch that cannot complete; the message says why and what to do, in one line."""


def dermamnist_filename(size: int) -> str:
    return "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"


def check_npz(path: Path, name: str | None = None) -> dict[str, int]:
    """The image count per split of a DermaMNIST ``.npz`` (called ``name`` in messages), or a ``FetchError``."""
    import zipfile

    import numpy as np

    name = name or path.name
    if not zipfile.is_zipfile(path):
        raise FetchError(f"{name}: not a DermaMNIST .npz (not a zip archive; a proxy or error page?)")
    try:
        data = np.load(path, allow_pickle=False)
        counts = {}
        for split in SPLITS:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
            if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
                raise FetchError(f"{name}: {split}_images has shape {images.shape}, expected (N, H, W, 3) "
                                 f"with {len(labels)} labels")
            if len(labels) and not (labels.min() >= 0 and labels.max() <= 6):
                raise FetchError(f"{name}: {split}_labels outside DermaMNIST's 0-6")
            counts[split] = len(labels)
    except FetchError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise FetchError(f"{name}: not a DermaMNIST .npz ({type(err).__name__}: {str(err)[:120]})") from None
    return counts


def fetch_dermamnist(out_dir: str | Path, size: int = 28, base_url: str = ZENODO, timeout: float = 60.0
                     ) -> tuple[Path, dict[str, int]]:
    """Download DermaMNIST at ``size`` px into ``out_dir`` (kept as is when already there and valid)."""
    import httpx

    if size not in SIZES:
        raise FetchError(f"--size {size}: DermaMNIST is released at {', '.join(map(str, SIZES))} px")
    out = Path(out_dir)
    target = out / dermamnist_filename(size)
    if target.exists():
        return target, check_npz(target)
    url = f"{base_url.rstrip('/')}/{target.name}?download=1"
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise FetchError(f"{url}: HTTP {r.status_code}; download it by hand into {out} "
                                 f"(the dermamnist adapter reads {target.name})")
            with part.open("wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    fh.write(chunk)
        counts = check_npz(part, target.name)
        part.replace(target)
    except httpx.HTTPError as err:
        raise FetchError(f"cannot reach {httpx.URL(url).host} ({type(err).__name__}: {err}); no internet here? "
                         f"Copy {target.name} from a machine that has it into {out}") from None
    finally:
        part.unlink(missing_ok=True)
        if created and not target.exists():
            out.rmdir()  # a failed fetch leaves nothing behind
    return target, counts
