"""`make setup-gpu` leaves a GPU environment that the setup behind `make test` / `make demo` keeps: the Makefile run
for real against a stand-in .venv whose pip and python only record what they were asked to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDER = "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> \"$(dirname \"$0\")/../calls.log\"\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "requirements").mkdir()
    for lock in ("cpu.lock", "gpu.lock"):
        shutil.copy(ROOT / "requirements" / lock, tmp_path / "requirements" / lock)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "pip", "dermvlm"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    return tmp_path


def make(project: Path, target: str) -> list[str]:
    log = project / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["make", "-s", target], cwd=project, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")})
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_setup_gpu_is_kept_by_test_and_demo(project):
    calls = make(project, "setup-gpu")
    assert any(c.endswith("-r requirements/gpu.lock") for c in calls)
    assert not any("cpu.lock" in c for c in calls)
    assert (project / ".venv" / ".dermvlm-setup").is_file()
    for target in ("test", "demo"):  # the environment is set up: nothing is installed over it
        calls = make(project, target)
        assert not any(c.startswith("pip install") for c in calls), calls
    future = time.time() + 5
    os.utime(project / "requirements" / "gpu.lock", (future, future))  # the GPU lock changed: its set again
    calls = make(project, "test")
    assert "pip install --no-cache-dir --no-deps -q -r requirements/gpu.lock" in calls
    assert not any("cpu.lock" in c for c in calls) and calls[-1] == "python -m pytest -n 2 --dist loadfile tests"


def test_plain_setup_installs_the_cpu_lock(project):
    calls = make(project, "setup")
    assert calls[0] == "pip install --no-cache-dir --no-deps -q -r requirements/cpu.lock"
    assert not any("gpu.lock" in c or "ruff" in c for c in calls)
