"""Many captures in a row (benchmarks/soak.py on the tiny pipeline): no growth in hooks, Python objects, traced
Python memory or resident memory. The default test runs 20 captures; the slow one 1000 (numbers in
docs/reliability.md).

The thresholds are far below what a leak of one capture's results per iteration would add (a capture of the tiny
pipeline holds about 40 KiB of statistics and dozens of Python objects), and far above the noise measured here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("attnlens_soak", SOAK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check(summary, objects_max, traced_mb_max, rss_mb_max):
    assert summary["hooks_max"] == 0, summary
    assert summary["objects"]["growth"] < objects_max, summary
    assert summary["traced_mb"]["growth"] < traced_mb_max, summary
    assert summary["rss_mb"]["growth"] < rss_mb_max, summary


@pytest.fixture(scope="module")
def workload(soak):
    return soak.TinyWorkload(0.4, 1, False)


def test_leak_would_be_seen(soak, workload):
    """The measurement can fail: a workload that keeps every capture shows growth in objects and traced memory
    (statistics tensors live outside Python's allocator; their layout, lists and dicts do not)."""
    wl = workload
    kept = []

    class Leaky:
        components = wl.components

        def once(self):
            cap = wl.once()
            kept.append(cap)
            return cap

    res = soak.soak(10, Leaky(), warmup=1, every=9, window=5)["summary"]
    assert res["objects"]["growth"] > 100 and res["traced_mb"]["growth"] > 0.02, res


def test_soak_short(soak, workload):
    res = soak.soak(20, workload, warmup=4, every=10, window=10)
    s = res["summary"]
    print(json.dumps(s))
    assert len(res["samples"]) == 20 and all(x["hooks"] == 0 for x in res["samples"])
    _check(s, objects_max=50, traced_mb_max=0.1, rss_mb_max=16)


@pytest.mark.slow
def test_soak_1000(soak):
    res = soak.soak(1000, soak.TinyWorkload(0.4, 1, True), warmup=10, every=10, window=100)
    s = res["summary"]
    print(json.dumps(s))
    _check(s, objects_max=50, traced_mb_max=0.25, rss_mb_max=32)
