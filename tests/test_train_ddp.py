"""Several processes (DDP through accelerate's state, gloo on the CPU): the same adapter as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "ddp_check.py"), "--procs", "2", "--cpu", "--steps", "4",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["one_world_size"] == 1 and res["ddp_world_size"] == 2
    assert res["one_loss_first_last"][0] == res["ddp_loss_first_last"][0]
    assert res["adapter_max_abs_diff_one_vs_ddp"] < 1e-4 * res["adapter_norm"]
