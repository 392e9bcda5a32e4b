"""Captures of the demo model are bitwise what the code before model families gave (files saved by that code,
`tests/data/captures_v0_1/`, made with attnlens 0.1.0 at the commit before the family seam), and those files still
load (they carry no segment vocabulary: they read as ACE-Step's). Kept for one release."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnlens as al
from attnlens.segments import DEFAULT_SEGMENTS

DATA = Path(__file__).parent / "data" / "captures_v0_1"
KW = dict(prompt="warm voice, folk", lyrics="[verse]\nsun rise over blue sea home", audio_duration=4.0,
          num_inference_steps=8, guidance_scale=1.0, output_type="latent")  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    return al.models.demo_pipeline()


@pytest.mark.parametrize(
    ("name", "opts"),
    [("demo_stats", {}), ("demo_maps", dict(maps=True, steps=[-1], layers=[1], heads=[0, 3]))],
)
def test_capture_equals_the_one_saved_by_the_previous_code(pipe, name, opts):
    old = al.load_capture(DATA / f"{name}.attn")
    assert old.layout.vocabulary == DEFAULT_SEGMENTS
    with al.capture(pipe, **opts) as cap:
        pipe(**KW, generator=torch.Generator().manual_seed(0))
    assert cap.steps == old.steps and cap.timesteps == old.timesteps and cap.layers == old.layers
    assert cap.layout.to_json()["items"] == old.layout.to_json()["items"]
    assert set(cap.stats) == set(old.stats)
    for k, v in old.stats.items():
        assert torch.equal(cap.stats[k], v), k
    if old.maps is not None:
        assert torch.equal(cap.maps, old.maps)
