"""Differentiable attention entropy: equal to the naive entropy of softmax, gradients vs finite differences,
and the tap on the tiny pipeline against the capture machinery's reference statistics."""

from __future__ import annotations

import math

import pytest
import torch

import attnlens.captures  # noqa: F401  (import order)
from attnlens.reducers.differentiable import EntropyTap, attention_entropy, attention_entropy_naive
from attnlens.taps.hooks import attnlens_hooks

torch.set_num_threads(1)


def _qk(B=2, T=9, H=4, KVH=2, S=7, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64) * 2
    k = torch.randn(B, S, KVH, D, generator=g, dtype=torch.float64) * 2
    return q.requires_grad_(), k.requires_grad_()


def test_hand_computed_two_keys():
    # one head, one frame, keys with logits 0 and log 3: p = (1/4, 3/4)
    q = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)  # [1, 1, 1, 2]
    k = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]], dtype=torch.float64)  # [1, 2, 1, 2]
    h = attention_entropy(q, k, 1.0, normalize=False)
    expect = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert abs(float(h) - expect) < 1e-15
    assert abs(float(attention_entropy(q, k, 1.0)) - expect / math.log(2)) < 1e-15


@pytest.mark.parametrize("masked", [False, True])
def test_equals_naive_float64(masked):
    q, k = _qk()
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 1]], dtype=torch.bool) if masked else None
    fast = attention_entropy(q, k, 0.37, key_mask=mask, chunk_bytes=1)  # one frame per chunk
    naive = attention_entropy_naive(q, k, 0.37, key_mask=mask)
    assert fast.shape == (2, 4, 9)
    assert torch.max(torch.abs(fast - naive)) < 1e-12
    # gradients of a weighted sum agree with autograd through the materialized softmax
    w = torch.randn(fast.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gq, gk = torch.autograd.grad((fast * w).sum(), (q, k))
    nq, nk = torch.autograd.grad((naive * w).sum(), (q, k))
    assert torch.max(torch.abs(gq - nq)) < 1e-12 and torch.max(torch.abs(gk - nk)) < 1e-12


@pytest.mark.parametrize("masked", [False, True])
def test_gradient_matches_finite_differences(masked):
    q, k = _qk(B=1, T=3, H=2, KVH=1, S=5, D=3, seed=3)
    mask = torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool) if masked else None

    def f(q_, k_):
        return attention_entropy(q_, k_, 0.8, key_mask=mask).mean()

    gq, gk = torch.autograd.grad(f(q, k), (q, k))
    eps = 1e-6
    with torch.no_grad():
        for x, g in ((q, gq), (k, gk)):
            flat = x.view(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                flat[i] = old + eps
                up = float(f(q, k))
                flat[i] = old - eps
                down = float(f(q, k))
                flat[i] = old
                fd = (up - down) / (2 * eps)
                assert abs(fd - float(g.reshape(-1)[i])) < 1e-8, (i, fd, float(g.reshape(-1)[i]))
    assert torch.autograd.gradcheck(lambda a, b: attention_entropy(a, b, 0.8, key_mask=mask), (q, k))


def test_chunking_does_not_change_values_float32():
    q, k = _qk(T=40)
    q, k = q.detach().float(), k.detach().float()
    a = attention_entropy(q, k, 0.5, chunk_bytes=1, impl="recompute")
    b = attention_entropy(q, k, 0.5, chunk_bytes=1 << 30, impl="recompute")
    # one frame per chunk vs one chunk: the BLAS may order the sums differently (2.4e-6 seen on a 16-core host)
    assert torch.max(torch.abs(a - b)) < 1e-5


def test_too_few_lyric_keys_is_an_error():
    q, k = _qk()
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 2] = True
    with pytest.raises(ValueError, match="at least 2 keys"):
        attention_entropy(q, k, 1.0, key_mask=mask)


@pytest.fixture(scope="module")
def pipe():
    import attnlens as al

    return al.models.tiny_pipeline(seed=0)


def test_tap_matches_capture_reference(pipe):
    """Per-layer mean entropy from the tap == the capture reducer's per-frame entropy (all keys and lyric-only)."""
    import attnlens as al
    from attnlens.train.conditioning import context_latents, encode_condition

    cond = encode_condition(pipe, ["soft pop"], ["[verse]\nhello there my friend\nsing along"], 2.0)
    T = 50
    x = torch.randn(1, T, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.75)
    ctx = context_latents(pipe, 1, T, "cpu", torch.float32)
    tr = pipe.transformer
    kw = dict(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=cond.encoder_hidden_states,
              context_latents=ctx, return_dict=False)  # fmt: skip
    with al.capture(tr, layout=cond.layout) as cap:
        with (
            EntropyTap(tr, keys="all") as tap_all,
            EntropyTap(tr, keys="lyrics", lyric_positions=cond.lyric_positions()) as tap_lyr,
        ):
            out = tr(**kw)[0]
            all_layers = tap_all.per_layer()
            lyr_layers = tap_lyr.per_layer()
    ref_all = cap.stats["entropy"][0].mean(dim=(1, 2, 3))  # [layer]
    ref_lyr = cap.stats["entropy_lyric"][0].mean(dim=(1, 2, 3))
    assert len(cond.lyric_positions()[0]) >= 5
    assert torch.max(torch.abs(all_layers.detach() - ref_all)) < 1e-5
    assert torch.max(torch.abs(lyr_layers.detach() - ref_lyr)) < 1e-5
    assert all_layers.requires_grad is False or all_layers.grad_fn is not None
    assert attnlens_hooks(tr) == []
    with torch.no_grad():
        plain = tr(**kw)[0]
    assert torch.equal(out.detach(), plain)  # the tap does not change the model's output


def test_tap_hooks_removed_when_forward_raises(pipe):
    tr = pipe.transformer
    with pytest.raises(RuntimeError):
        with EntropyTap(tr, keys="all"):
            tr(hidden_states=torch.zeros(1, 4, 8), timestep=torch.ones(1), timestep_r=torch.ones(1),
               encoder_hidden_states=torch.zeros(1, 3, 5), context_latents=torch.zeros(1, 4, 16))  # fmt: skip
    assert attnlens_hooks(tr) == []


@pytest.mark.parametrize("impl", ["recompute", "fused"])
def test_penalty_gradient_same_with_gradient_checkpointing(pipe, impl):
    """The tap computes the penalty after the forward from the layers' kept q and k: recomputing the layers in the
    backward (gradient checkpointing) gives the same value and the same parameter gradients."""
    import os

    if impl == "fused" and not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("the fused kernels need CUDA or Triton's interpreter")
    import attnlens as al
    from attnlens.train.conditioning import context_latents, encode_condition

    dev = "cpu"
    if impl == "fused":  # the kernels need a power-of-2 head_dim >= 16, and CUDA where there is one
        pytest.importorskip("triton")
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=2)).to(dev)

    cond = encode_condition(pipe, ["soft pop"], ["[verse]\nhello there my friend\nsing along"], 2.0)
    T = 24
    x = torch.randn(1, T, 8, generator=torch.Generator().manual_seed(1)).to(dev)
    t = torch.full((1,), 0.6, device=dev)
    ctx = context_latents(pipe, 1, T, dev, torch.float32)
    tr = pipe.transformer
    kw = dict(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=cond.encoder_hidden_states.to(dev),
              context_latents=ctx, return_dict=False)  # fmt: skip
    params = [p for n, p in tr.named_parameters() if "cross_attn" in n and ("to_q" in n or "to_k" in n)]
    assert params

    def run(checkpointing: bool):
        if checkpointing:
            tr.enable_gradient_checkpointing()
        else:
            tr.disable_gradient_checkpointing()
        tr.train()
        try:
            with EntropyTap(tr, keys="lyrics", lyric_positions=cond.lyric_positions(), impl=impl) as tap:
                tr(**kw)
                pen = tap.mean()
            return pen.detach(), torch.autograd.grad(pen, params)
        finally:
            tr.disable_gradient_checkpointing()
            tr.eval()

    v0, g0 = run(False)
    v1, g1 = run(True)
    assert abs(float(v0) - float(v1)) < 1e-6
    for a, b in zip(g0, g1):
        assert float(a.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
