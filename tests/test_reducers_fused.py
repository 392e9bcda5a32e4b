"""The fused statistics kernel equals the reference path (run through Triton's interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of torch bring it)")


DEV = "cuda" if torch.cuda.is_available() else "cpu"

# tests/conftest.py sets TRITON_INTERPRET=1 (before Triton is imported) when no CUDA device is present, so the
# kernel runs in Triton's CPU interpreter here.


def _case(B=2, T=70, H=4, KVH=2, D=16, S=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g) * 2
    k = torch.randn(B, S, KVH, D, generator=g) * 2
    seg = torch.randint(0, 5, (B, S), generator=g)
    seg[1, :] = 3  # item 1 has no lyric token
    lidx = torch.full((B, S), -1, dtype=torch.long)
    pos = (seg[0] == 0).nonzero().flatten()
    lidx[0, pos] = torch.arange(len(pos))
    return q, k, seg, lidx, (lidx >= 0).sum(1)


def test_fused_equals_reference():
    from attnlens.reducers.fused import reduce_fused
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    q, k, seg, lidx, nl = (t.to(DEV) for t in _case())
    heads = torch.tensor([0, 1, 3], device=DEV)
    out = reduce_fused(q, k, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), block_t=32, block_s=32)
    ref, _ = reduce_reference(q[:, :, heads], k, 0.25, heads // 2, segment_onehot(seg), lidx, nl)
    for name in ref:
        if ref[name].dtype.is_floating_point:
            assert torch.allclose(out[name], ref[name], atol=5e-6), name
        else:
            assert torch.equal(out[name], ref[name]), name
    assert torch.all(out["lyric_argmax"][1] == -1) and torch.all(out["entropy_lyric"][1] == 0)


def test_capture_fused_equals_reference_on_a_transformer():
    import attnlens as al
    from attnlens.captures import ItemLayout

    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=2)).to(DEV)
    tr = pipe.transformer
    g = torch.Generator().manual_seed(0)
    B, T, S = 1, 24, 12
    kw = dict(
        hidden_states=torch.randn(B, T, 8, generator=g),
        timestep=torch.full((B,), 0.5),
        timestep_r=torch.full((B,), 0.5),
        encoder_hidden_states=torch.randn(B, S, 64, generator=g),
        context_latents=torch.randn(B, T, 16, generator=g),
    )
    kw = {k: v.to(DEV) for k, v in kw.items()}
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    for layers, budget in (([1], 128 << 20), (None, 128 << 20), (None, 0)):  # one layer; layers batched; per layer
        caps = {}
        for red in ("reference", "fused"):
            session = al.capture(tr, layers=layers, heads=[0, 7, 15], layout=layout, reducer=red)
            session.stash_budget_bytes = budget
            with session as cap, torch.no_grad():
                tr(**kw)
            caps[red] = cap
            if red == "fused":
                assert session._batch_layers == (layers is None and budget > 0)
        assert caps["fused"].meta["reducer"] == "fused" and caps["reference"].meta["reducer"] == "reference"
        for name, ref in caps["reference"].stats.items():
            got = caps["fused"].stats[name]
            if ref.dtype.is_floating_point:
                assert torch.allclose(got, ref, atol=5e-6), (name, layers, budget)
            else:
                assert torch.equal(got, ref), (name, layers, budget)


def test_fused_statistics_with_maps_equal_reference():
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=2)).to(DEV)
    kw = dict(prompt="folk", lyrics="[verse]\nwalking down the road", audio_duration=0.8, num_inference_steps=2)
    caps = {}
    for red in ("reference", "fused"):
        with al.capture(pipe, heads=[1, 9], steps=[-1], maps=True, reducer=red) as cap:
            pipe(**kw, output_type="latent", generator=torch.Generator(DEV).manual_seed(0))
        caps[red] = cap
    ref, got = caps["reference"], caps["fused"]
    assert got.meta["reducer"] == "fused"
    assert torch.allclose(got.maps, ref.maps, atol=1e-6)
    assert torch.allclose(got.stats["entropy"], ref.stats["entropy"], atol=5e-6)
    assert torch.equal(got.stats["lyric_argmax"], ref.stats["lyric_argmax"])


def test_fused_path_reports_nonfinite_activations():
    import warnings

    import attnlens as al
    from attnlens.captures import ItemLayout

    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=2)).to(DEV)
    tr = pipe.transformer
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(1, 24, 8, generator=g),
        timestep=torch.full((1,), 0.5),
        timestep_r=torch.full((1,), 0.5),
        encoder_hidden_states=torch.randn(1, 12, 64, generator=g),
        context_latents=torch.randn(1, 24, 16, generator=g),
    )
    kw = {k: v.to(DEV) for k, v in kw.items()}
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=4)

    def poison(module, args, out):  # a NaN in one key of layer 1
        out = out.clone()
        out[0, 3] = float("nan")
        return out

    h = tr.layers[1].cross_attn.to_k.register_forward_hook(poison)
    try:
        with warnings.catch_warnings(record=True) as w, torch.no_grad():
            warnings.simplefilter("always")
            with al.capture(tr, layout=layout, reducer="fused") as cap:
                tr(**kw)
    finally:
        h.remove()
    assert cap.meta["reducer"] == "fused"
    assert cap.meta["nonfinite"] == [(0, 1)]
    assert any("non-finite" in str(x.message) for x in w)
    assert torch.isnan(cap.stats["entropy"][0, 1]).all() and torch.isfinite(cap.stats["entropy"][0, 0]).all()
