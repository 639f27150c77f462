"""The processes of one run wait for each other with collectives: when one dies, the others stop at once with one
line instead of polling for a file for hours. Two processes started as a cluster launcher (srun, mpirun) starts them:
only RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, no torchrun agent to tear the survivors down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_dies_while_the_others_wait_fails_them_at_once(tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    cfg = {"name": "dead-rank", "seed": 0, "output_dir": str(tmp_path / "runs"),
           "model": {"nano": {"preset": "nano", "seed": 0}, "dtype": "float32"},
           "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml"), "source": "imagefolder", "root": str(empty)},
           "stages": [{"name": "sft", "kind": "sft", "use_lora": True, "trl": {"max_steps": 1}}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = _free_port()
    procs = []
    for rank in (0, 1):  # rank 0 builds the data and fails (no images); rank 1 waits for it at a barrier
        env = os.environ | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "",
                            "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "pipeline", str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    try:
        _, err0 = procs[0].communicate(timeout=600)
        died = time.monotonic()
        _, err1 = procs[1].communicate(timeout=120)  # before: it polled for the data's key file for 2 hours
    finally:
        for p in procs:
            p.kill()
    waited = time.monotonic() - died
    assert procs[0].returncode == 2 and "no images in class sub-folders" in err0
    assert procs[1].returncode == 2 and waited < 60, err1[-2000:]
    last = err1.strip().splitlines()[-1]
    assert last.startswith("error: rank 1: another process of this run stopped while this one waited for the data "
                           "recipe"), err1[-2000:]
