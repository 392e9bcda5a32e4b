"""The demo model's guided-attention loss: frame targets by hand, the loss against the captured attention map."""

from __future__ import annotations

import math

import numpy as np
import torch

import attnlens as al
from attnlens.demo.training import HeadGuide, frame_words
from attnlens.models.demo import demo_task
from attnlens.train.conditioning import encode_condition


def test_frame_words_by_hand():
    ex = {"latents": np.zeros((12, 8)), "word_starts": [2, 7], "word_ends": [6, 10]}
    # DiT frame f covers latent frames 2f, 2f+1 and takes the word holding latent frame 2f
    assert frame_words(ex).tolist() == [-1, 0, 0, -1, 1, -1]


def test_guide_loss_equals_cross_entropy_of_the_captured_map():
    """HeadGuide's loss = mean over frames with a word of -log(lyric-renormalized attention of the target word), with
    the attention taken from an independent path (al.capture's full map, reference reducer)."""
    pipe = al.models.demo_pipeline()
    ex = demo_task().make_dataset(1, seed=3, split="test")[0]
    cond = encode_condition(pipe, [ex["caption"]], [ex["lyrics"]], 4.0, dtype=torch.float32)
    pos = cond.lyric_positions()[0]
    tgt = torch.from_numpy(frame_words(ex))[None]  # [1, T_dit]
    g = torch.Generator().manual_seed(0)
    T, C = ex["latents"].shape
    x = torch.randn(1, T, C, generator=g)
    t = torch.full((1,), 0.4)
    ctx = torch.cat([torch.zeros(1, T, C), torch.ones(1, T, C)], dim=-1)
    kw = dict(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=cond.encoder_hidden_states,
              context_latents=ctx, return_dict=False)  # fmt: skip
    with torch.no_grad(), HeadGuide(pipe.transformer, 1, 0, pos, tgt) as guide:
        pipe.transformer(**kw)
    with torch.no_grad(), al.capture(pipe.transformer, maps=True, reducer="reference") as cap:
        pipe.transformer(**kw)
    P = cap.attention(step=0, layer=1, head=0).double()  # [frame, key]
    PL = P[:, pos] / P[:, pos].sum(-1, keepdim=True)
    ok = tgt[0] >= 0
    want = -torch.log(PL[ok.nonzero()[:, 0], tgt[0][ok]]).mean()
    assert math.isclose(float(guide.loss), float(want), rel_tol=1e-5), (float(guide.loss), float(want))
