"""`dermvlm data fetch dermamnist`: the official .npz from a real HTTP server on 127.0.0.1 (standing in for Zenodo),
checked before it is kept; unreachable hosts and broken files are one-line errors that leave nothing behind."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from dermvlm.cli import app


@pytest.fixture()
def mirror(tmp_path):
    """A static file server over ``tmp_path/mirror`` with a small DermaMNIST-shaped .npz and a broken one."""
    root = tmp_path / "mirror"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": (rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8) if k == "images"
                           else rng.integers(0, 7, (n, 1)))
              for s, n in (("train", 14), ("val", 4), ("test", 6)) for k in ("images", "labels")}
    np.savez(root / "dermamnist.npz", **arrays)
    (root / "dermamnist_64.npz").write_bytes(b"not a zip at all")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the server's access log out of the command's stderr
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch(*args: str):
    return CliRunner().invoke(app, ["data", "fetch", "dermamnist", *args])


def test_fetch_keeps_a_checked_npz_the_adapter_reads(mirror, tmp_path):
    out = tmp_path / "dm"
    r = fetch("--url", mirror, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "train 14, val 4, test 6" in r.output and sorted(p.name for p in out.iterdir()) == ["dermamnist.npz"]
    again = fetch("--url", mirror + "/gone", "--out", str(out))  # already there: kept, no request needed
    assert again.exit_code == 0, again.output

    from dermvlm.datasets.adapters import load_source
    from dermvlm.knowledge import load_graph

    records = load_source("dermamnist", load_graph(), out).records
    assert len(records) == 24 and {r.split for r in records} == {"train", "val", "test"}


def test_broken_file_and_dead_host_leave_nothing(mirror, tmp_path):
    out = tmp_path / "dm"
    r = fetch("--url", mirror, "--size", "64", "--out", str(out))
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: dermamnist_64.npz: not a DermaMNIST"), r.stderr
    assert not out.exists()
    dead = fetch("--url", "http://127.0.0.1:9", "--out", str(out))
    assert dead.exit_code == 2 and "cannot reach 127.0.0.1" in dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1
    assert not out.exists()
    missing = fetch("--url", mirror + "/nothing-here", "--out", str(out))
    assert missing.exit_code == 2 and "HTTP 404" in missing.stderr and not out.exists()
