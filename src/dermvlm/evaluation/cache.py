"""What produced an evaluation folder's answers: the cache key (one place), kept in ``cache_key.json`` beside
``predictions.jsonl``. A rerun continues from the stored answers only when its key is the same; otherwise it refuses,
naming what differs, unless told to start over (``--fresh``).

The key holds:

- ``model``: the name the requests use; ``model_id``: the endpoint's entry in ``GET /v1/models`` (``id``, ``root``,
  ``parent``, ``max_model_len``), or for ``--serve DIR`` what is served (name, resolved folder, context length);
- ``weights``: a fingerprint of the model folder when it is on this machine (``--serve DIR``, or a loopback
  endpoint whose ``root`` is a local folder), see :func:`folder_fingerprint`;
- ``endpoint``: the base URL (a loopback server with fingerprinted weights is keyed without its port, since a
  local server gets a free port each start), or ``vllm --serve`` with ``serve`` (dtype, context length);
- ``sampling``: temperature, max_tokens, seed, guided_format (and its regex when on);
- ``system_prompt``: the text sent (``None`` for none);
- ``items``: sha256 of the suite's items (ids + questions + options, in order, before ``--limit``) and their count,
  so that a larger ``--limit`` continues a smaller one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dermvlm.config import SuiteConfig
from dermvlm.io import atomic_write_text

KEY_FILE = "cache_key.json"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
# Every file `dermvlm eval` writes in its output folder (``items/`` is rebuilt on every run and is left alone).
EVAL_FILES = (PREDICTIONS, ERRORS, KEY_FILE, "metrics.json", "report.md", "confusion_matrix.png", "per_class.png",
              "per_fitzpatrick.png", "server.log", "judge.jsonl", "class_scores.jsonl", "operating_point.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
KEY_VERSION = 1


class CacheMismatch(ValueError):
    """The folder holds answers made with another setup (model, endpoint, sampling, system prompt or items)."""


def folder_fingerprint(folder: str | Path) -> str | None:
    """sha256 over a model (or LoRA adapter) folder: the contents of its top-level ``*.json`` and ``*.jinja`` files
    (config, generation config, tokenizer, processor, chat template, adapter config, safetensors index) and the
    name, size and mtime of each weight file (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.gguf``).
    ``None`` when ``folder`` is not a folder with a ``config.json`` or ``adapter_config.json``."""
    folder = Path(folder)
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix in (".json", ".jinja"):
            h.update(f"{path.name}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        elif path.suffix in WEIGHT_SUFFIXES:
            st = path.stat()
            h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def items_digest(items: list[dict[str, Any]]) -> dict[str, Any]:
    """sha256 of the items' ids, questions and options (in order) and their count."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it["id"], it.get("question"), list(it.get("options") or [])],
                            ensure_ascii=False).encode() + b"\n")
    return {"sha256": h.hexdigest(), "n": len(items)}


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _portless(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{parts.hostname}:*", parts.path, "", ""))


def make_key(*, model: str, model_id: dict[str, Any] | None, endpoint: str, suite: SuiteConfig,
             system_prompt: str | None, items: list[dict[str, Any]], serve: dict[str, Any] | None = None,
             weights_dir: str | Path | None = None, format_regex: str | None = None,
             items_key: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cache key of one evaluation (the module docstring lists the fields). ``serve`` is given for a server
    started for this evaluation; ``weights_dir`` is a model folder on this machine to fingerprint (for an endpoint,
    its ``root`` when the endpoint is on loopback). ``items_key`` stands for the items when they are a file's
    (its digest: the same whatever ``--limit`` reads of it)."""
    weights = folder_fingerprint(weights_dir) if weights_dir else None
    if serve is not None:
        where = "vllm --serve"
    else:
        where = endpoint.rstrip("/")
        if weights and is_loopback(where):
            where = _portless(where)
    return {
        "version": KEY_VERSION,
        "model": model,
        "model_id": model_id,
        "weights": weights,
        "endpoint": where,
        "serve": serve,
        "sampling": {"temperature": suite.temperature, "max_tokens": suite.max_tokens, "seed": suite.seed,
                     "guided_format": suite.guided_format,
                     "format_regex": format_regex if suite.guided_format else None},
        "system_prompt": system_prompt,
        "items": items_key or items_digest(items),
    }


LABELS = {"version": "cache key version", "model": "model", "model_id": "endpoint model (GET /v1/models)",
          "weights": "model weights", "endpoint": "endpoint", "serve": "vLLM serve options",
          "system_prompt": "system prompt", "items": "suite items"}


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str | int | float | bool) or v is None else json.dumps(v, sort_keys=True)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two keys, in words (``temperature 0.0 → 0.7``, ``system prompt differs``)."""
    out = []
    for field in [*LABELS, "sampling", *sorted((old.keys() | new.keys()) - {*LABELS, "sampling"})]:
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if field == "sampling" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} {_show(a.get(k))} → {_show(b.get(k))}" for k in {**a, **b} if a.get(k) != b.get(k)]
        elif field in ("weights", "system_prompt", "items") or len(_show(a)) + len(_show(b)) > 120:
            out.append(f"{LABELS.get(field, field)} differs")
        else:
            out.append(f"{LABELS.get(field, field)} {_show(a)} → {_show(b)}")
    return out


def has_answers(out: Path) -> bool:
    p = out / PREDICTIONS
    return p.is_file() and p.stat().st_size > 0


def clear(out: Path) -> list[Path]:
    """Delete the files ``dermvlm eval`` wrote in ``out`` (:data:`EVAL_FILES`), nothing else; return them."""
    removed = []
    for name in EVAL_FILES:
        p = out / name
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p)
        elif p.is_dir():
            shutil.rmtree(p)
            removed.append(p)
    return removed


def check_and_store(out: Path, key: dict[str, Any], reset_on_mismatch: bool = False) -> None:
    """Refuse (``CacheMismatch``) to add answers to a folder whose answers another setup made, or whose answers
    have no key; with ``reset_on_mismatch`` clear the folder instead. Then write ``key`` as ``cache_key.json``."""
    out = Path(out)
    key_file = out / KEY_FILE
    if has_answers(out):
        try:
            old = json.loads(key_file.read_text(encoding="utf-8"))
            problem = ", ".join(differences(old, key)) if old != key else ""
        except (OSError, json.JSONDecodeError, AttributeError):
            problem = f"{PREDICTIONS} has no readable {KEY_FILE}, so what produced it is unknown"
        if problem:
            if not reset_on_mismatch:
                raise CacheMismatch(f"{out}: its answers were made with another setup ({problem}); use --fresh to "
                                    f"discard them and start over, or another --out")
            clear(out)
    atomic_write_text(key_file, json.dumps(key, indent=2, ensure_ascii=False) + "\n")
