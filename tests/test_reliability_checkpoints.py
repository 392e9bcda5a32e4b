"""Training checkpoints: a damaged newest checkpoint and a resume with changed settings.

- every checkpoint has a manifest (size and SHA-256 of each file); a truncated or bit-flipped file is detected, said
  in a warning, and the resume falls back to the previous complete checkpoint, ending bitwise where an uninterrupted
  run ends; none complete is a ``CheckpointError`` listing what is wrong with each;
- a resume with a changed learning rate (or any optimizer / schedule setting) is refused, naming the old and new
  values, and ``config.json`` keeps the settings the checkpoint was trained with; other changed settings are used
  and recorded in ``config.json`` and later checkpoints (``resumes``).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_train_loop import _final_adapter, _items, _pipe, base  # noqa: F401  (base: the module's pipeline fixture)

import attnlens.captures  # noqa: F401  (import order)
from attnlens.train.checkpoint import CheckpointError, _write_manifest
from attnlens.train.data import AudioLyricsDataset
from attnlens.train.lora import LoraConfig
from attnlens.train.trainer import Trainer

KW = dict(steps=4, save_every=1, keep_checkpoints=2, lr=2e-3, progress=False, seed=3)
LORA = LoraConfig(rank=2, alpha=4, dropout=0.1)  # dropout: the global RNG must be restored too


@pytest.fixture(scope="module")
def data():
    return AudioLyricsDataset.from_latents(_items(2))


@pytest.fixture(scope="module")
def reference(base, data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("full")
    Trainer(_pipe(base), LORA, data, out_dir=str(out), **KW).fit()
    return _final_adapter(str(out))


def _run_cut(base, data, out, **kw):  # noqa: F811
    """A run killed after step 3 (the checkpoints of steps 2 and 3 kept)."""
    torch.manual_seed(999)  # another global RNG state before the "kill"
    assert Trainer(_pipe(base), LORA, data, out_dir=str(out), **{**KW, **kw}).fit(stop_at=3) == ""
    return out


@pytest.fixture(scope="module")
def cut_run(base, data, tmp_path_factory):  # noqa: F811
    return _run_cut(base, data, tmp_path_factory.mktemp("cut"))


def _cut(cut_run, out):
    """A copy of the killed run in ``out``; returns its checkpoints folder."""
    shutil.copytree(cut_run, out, dirs_exist_ok=True)
    return out / "checkpoints"


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "damage",
    ["truncate-optimizer", "truncate-adapter", "flip-rng", "flip-adapter", "drop-state", "empty-manifest"],
)
def test_damaged_newest_checkpoint_falls_back(base, data, reference, cut_run, tmp_path, damage):  # noqa: F811
    root = _cut(cut_run, tmp_path)
    newest = root / "step_00000003"
    assert sorted(os.listdir(root)) == ["latest", "step_00000002", "step_00000003"]
    what, name = damage.split("-")
    f = {
        "optimizer": newest / "optimizer.safetensors",
        "adapter": newest / "adapter" / "pytorch_lora_weights.safetensors",
        "rng": newest / "rng.safetensors",
        "state": newest / "state.json",
        "manifest": newest / "manifest.json",
    }[name]
    raw = f.read_bytes()
    if what == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
        expect = "is truncated or damaged"
    elif what == "flip":  # same size, one byte changed in the tensor data
        f.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0x10]) + raw[-2:])
        expect = "is damaged \\(its SHA-256 differs"
    elif what == "drop":
        f.unlink()
        expect = "state.json is missing"
    else:
        f.write_text("{}")
        expect = "manifest.json is damaged"
    with pytest.warns(UserWarning, match=rf"step_00000003.*{expect}.*resuming from the previous complete checkpoint"):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **KW).fit()
    assert _same(_final_adapter(str(tmp_path)), reference)
    steps = [int(r.split(",")[0]) for r in (tmp_path / "metrics.csv").read_text().strip().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_no_complete_checkpoint_is_an_error(base, data, cut_run, tmp_path):  # noqa: F811
    root = _cut(cut_run, tmp_path)
    for step in ("step_00000002", "step_00000003"):
        p = root / step / "optimizer.safetensors"
        p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*step_00000003.*step_00000002.*start"):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **KW).fit()


def test_changed_learning_rate_is_refused_and_the_record_kept(base, data, cut_run, tmp_path):  # noqa: F811
    _cut(cut_run, tmp_path)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(
        CheckpointError, match=r"changed optimizer settings \(lr 0.002 in the checkpoint, 0.02 now\).*another out_dir"
    ):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **{**KW, "lr": 2e-2}).fit()
    assert (tmp_path / "config.json").read_text() == before  # the record still says what was trained
    with pytest.raises(CheckpointError, match=r"betas \[0.9, 0.999\] in the checkpoint, \[0.8, 0.999\] now"):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **{**KW, "betas": (0.8, 0.999)}).fit()
    with pytest.raises(CheckpointError, match="written for another LoRA: rank 2 in the checkpoint, 4 now"):
        Trainer(_pipe(base), LoraConfig(rank=4, alpha=4, dropout=0.1), data, out_dir=str(tmp_path), **KW).fit()


def test_cosine_schedule_length_is_refused(base, data, tmp_path):  # noqa: F811
    _run_cut(base, data, tmp_path, lr_schedule="cosine")
    with pytest.raises(CheckpointError, match="steps 4 in the checkpoint, 8 now"):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **{**KW, "lr_schedule": "cosine", "steps": 8}).fit()


def test_checkpoint_without_settings_is_checked_against_its_optimizer(base, data, cut_run, tmp_path):  # noqa: F811
    """Checkpoints written before the settings were kept: the optimizer's own groups hold lr, betas, eps."""
    root = _cut(cut_run, tmp_path)
    for step in ("step_00000002", "step_00000003"):
        p = root / step / "state.json"
        state = json.loads(p.read_text())
        del state["train"], state["resumes"]
        p.write_text(json.dumps(state))
        _write_manifest(str(root / step), int(step[5:]))
    with pytest.raises(CheckpointError, match=r"lr 0.002 in the checkpoint, 0.001 now"):
        Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **{**KW, "lr": 1e-3}).fit()


def test_other_changed_settings_are_used_and_recorded(base, data, reference, cut_run, tmp_path):  # noqa: F811
    _cut(cut_run, tmp_path)
    Trainer(_pipe(base), LORA, data, out_dir=str(tmp_path), **{**KW, "max_grad_norm": 0.5, "steps": 5}).fit()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["train"]["max_grad_norm"] == 0.5 and cfg["train"]["steps"] == 5
    assert cfg["resumes"] == [
        {"step": 3, "checkpoint": "step_00000003", "changed": {"steps": [4, 5], "max_grad_norm": [1.0, 0.5]}}
    ]
    state = json.loads((tmp_path / "checkpoints" / "step_00000005" / "state.json").read_text())
    assert state["resumes"] == cfg["resumes"] and state["train"]["max_grad_norm"] == 0.5
    assert not _same(_final_adapter(str(tmp_path)), reference)  # it trained on with the new clipping
