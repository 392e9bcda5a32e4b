"""Atomic writes (attnlens.files): all or nothing, ordinary permissions."""

from __future__ import annotations

import os

import pytest
import torch

from attnlens.files import atomic_save_safetensors, atomic_write, atomic_write_json, atomic_write_text


def test_write_replaces_whole_file_with_ordinary_mode(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    old = os.umask(0o022)
    os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~old
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})

    def bad(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"x": ')  # half written
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, bad)
    assert p.read_text() == '{"x": 1}'
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_safetensors_roundtrip(tmp_path):
    from safetensors.torch import load_file

    p = atomic_save_safetensors(tmp_path / "w.safetensors", {"a": torch.arange(6.0).view(2, 3).t()}, {"k": "v"})
    assert torch.equal(load_file(p)["a"], torch.arange(6.0).view(2, 3).t())
