"""Every manifest and evaluation record names the code it ran from: the git commit of dermvlm's source (marked
when its files differ), and nothing made up for a package folder that is not that checkout."""

import shutil
import subprocess
from pathlib import Path

from dermvlm.manifest import source_commit, versions

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_a_checkout_names_its_commit_and_whether_its_source_differs():
    head, changed = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", "src"))
    assert versions()["dermvlm_commit"] == head + ("+modified" if changed else "")


def test_a_package_folder_that_is_not_the_checkouts_source_names_no_commit(tmp_path):
    repo = tmp_path / "someone_elses_project"
    installed = repo / ".venv" / "lib" / "site-packages" / "dermvlm"
    shutil.copytree(ROOT / "src" / "dermvlm", installed, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_commit(installed) is None  # no repository at all
    git("init", "-q", cwd=repo)
    git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty", "-m", "theirs", cwd=repo)
    assert source_commit(installed) is None  # their repository, not dermvlm's
