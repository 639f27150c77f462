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
MAX_IMAGES = 20_000  # per split (DermaMNIST: 7,007 / 1,003 / 2,005)


def max_download(size: int) -> int:
    """Bytes a DermaMNIST .npz of ``size`` px can take: its uncompressed arrays, with room to spare."""
    return 3 * MAX_IMAGES * size * size * 3 // 2 + (1 << 20)


class FetchError(RuntimeError):
    """A fetch that cannot complete; the message says why and what to do, in one line."""


def dermamnist_filename(size: int) -> str:
    return "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each array's (shape, dtype) from the ``.npy`` headers inside the ``.npz``, read without loading any array."""
    import zipfile

    import numpy as np

    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            out[info.filename.removesuffix(".npy")] = (tuple(shape), dtype.str)
    return out


def check_npz(path: Path, name: str | None = None, size: int | None = None) -> dict[str, int]:
    """The image count per split of a DermaMNIST ``.npz`` (called ``name`` in messages), or a ``FetchError``.

    Memory stays bounded whatever the file claims: the arrays' shapes are read from their headers first and must be
    DermaMNIST's (``(N, size, size, 3)`` uint8 images, at most ``MAX_IMAGES`` per split) before any is loaded."""
    import zipfile

    import numpy as np

    name = name or path.name
    if not zipfile.is_zipfile(path):
        raise FetchError(f"{name}: not a DermaMNIST .npz (not a zip archive; a proxy or error page?)")
    try:
        headers = _headers(path)
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in headers:
                    raise FetchError(f"{name}: no {key} array; not a DermaMNIST .npz")
            shape, dtype = headers[f"{split}_images"]
            side = shape[1] if len(shape) == 4 else None
            if len(shape) != 4 or shape[-1] != 3 or shape[1] != shape[2] or dtype != "|u1":
                raise FetchError(f"{name}: {split}_images has shape {shape} ({dtype}), expected (N, H, W, 3) uint8")
            if size is not None and side != size:
                raise FetchError(f"{name}: the images are {side} px, not the {size} px asked for (--size {size}); "
                                 "fetch the file of that size")
            if shape[0] > MAX_IMAGES:
                raise FetchError(f"{name}: {split}_images claims {shape[0]:,} images; DermaMNIST has 10,015 in all")
        data = np.load(path, allow_pickle=False)
        counts = {}
        for split in SPLITS:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
            if len(images) != len(labels):
                raise FetchError(f"{name}: {split}_images has {len(images)} images but {len(labels)} labels")
            if len(labels) and not (labels.min() >= 0 and labels.max() <= 6):
                raise FetchError(f"{name}: {split}_labels outside DermaMNIST's 0-6")
            counts[split] = len(labels)
    except FetchError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise FetchError(f"{name}: not a DermaMNIST .npz ({type(err).__name__}: {str(err)[:120]})") from None
    return counts


def fetch_dermamnist(out_dir: str | Path, size: int = 28, base_url: str = ZENODO, timeout: float = 60.0
                     ) -> tuple[Path, dict[str, int]]:
    """Download DermaMNIST at ``size`` px into ``out_dir`` (kept as is when already there and valid)."""
    import httpx

    if size not in SIZES:
        raise FetchError(f"--size {size}: DermaMNIST is released at {', '.join(map(str, SIZES))} px")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FetchError(f"--out {out}: exists and is a file; give a folder (the .npz is written into it)")
    target = out / dermamnist_filename(size)
    if target.exists():
        return target, check_npz(target, size=size)
    url = f"{base_url.rstrip('/')}/{target.name}?download=1"
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise FetchError(f"{url}: HTTP {r.status_code}; download it by hand into {out} "
                                 f"(the dermamnist adapter reads {target.name})")
            limit, got = max_download(size), 0
            with part.open("wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    got += len(chunk)
                    if got > limit:
                        raise FetchError(f"{url}: more than {limit >> 20} MB, larger than DermaMNIST at {size} px "
                                         "can be; is --url the right mirror?")
                    fh.write(chunk)
        counts = check_npz(part, target.name, size)
        part.replace(target)
    except httpx.HTTPError as err:
        raise FetchError(f"cannot reach {httpx.URL(url).host} ({type(err).__name__}: {err}); no internet here? "
                         f"Copy {target.name} from a machine that has it into {out}") from None
    finally:
        part.unlink(missing_ok=True)
        if created and not target.exists():
            out.rmdir()  # a failed fetch leaves nothing behind
    return target, counts
