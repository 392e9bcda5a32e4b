"""al.intervene: each mode against an independent recomputation from captured maps and the module's own V and
output projection; restore-after; errors. On the tiny ACE-Step transformer and on Stable Audio's DiT."""

from __future__ import annotations

import pytest
import torch

import attnlens as al
from attnlens.captures import ItemLayout
from attnlens.interventions import InterventionError
from attnlens.taps.hooks import attnlens_hooks

LAYOUT = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)  # 12 keys


@pytest.fixture(scope="module")
def ace():
    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=3))
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(2, 24, 8, generator=g),
        timestep=torch.full((2,), 0.5),
        timestep_r=torch.full((2,), 0.5),
        encoder_hidden_states=torch.randn(2, 12, 64, generator=g),
        context_latents=torch.randn(2, 24, 16, generator=g),
        return_dict=False,
    )
    return pipe.transformer, kw


def _observe(model, kw, layer, **intervention):
    """(model output, the layer's cross-attention output, its value projection, the capture's maps of that layer)
    with the intervention on (or none)."""
    fam = al.adapters.resolve(model)
    seen = {}
    hs = [
        fam.cross_attention(layer).register_forward_hook(lambda m, a, o: seen.__setitem__("out", o)),
        fam.value_module(layer).register_forward_hook(lambda m, a, o: seen.__setitem__("v", o)),
    ]
    try:
        with torch.no_grad():
            if intervention:
                with al.intervene(model, layout=LAYOUT, **intervention):
                    out = model(**kw)[0]
            else:
                with al.capture(model, layout=LAYOUT, layers=[layer], maps=True, reducer="reference") as cap:
                    out = model(**kw)[0]
                seen["P"] = cap.maps[0, 0]  # [B, H, T, S]
    finally:
        for h in hs:
            h.remove()
    return out, seen


def _rebuild(model, layer, P, v_flat, edit):
    """The layer's output from maps ``P [B, H, T, S]`` and the value projection, with ``edit(out_h)`` applied to the
    per-head outputs ``out_h [B, T, H, D]`` first."""
    fam = al.adapters.resolve(model)
    f = fam.facts
    v = fam.value_of(v_flat)[:, :, torch.arange(f.heads) // f.group].double()  # [B, S, H, D]
    out_h = torch.einsum("bhts,bshd->bthd", P.double(), v)
    out_h = edit(out_h)
    attn = fam.cross_attention(layer)
    return attn.to_out[1](attn.to_out[0](out_h.flatten(2).float()))


def test_zero_mean_and_uniform_equal_a_recomputation(ace):
    model, kw = ace
    _, base = _observe(model, kw, 1)
    P, v = base["P"], base["v"]

    def zero(out_h):
        out_h[:, :, 3] = 0
        return out_h

    def mean(out_h):
        out_h[:, :, 3] = out_h[:, :, 3].mean(dim=1, keepdim=True)
        return out_h

    valid = torch.tensor([s != "padding" for s in LAYOUT.segments], dtype=torch.float64)
    Pu = P.clone().double()
    Pu[:, 3] = (valid / valid.sum())[None, None, :]

    for mode, want in (
        ("zero", _rebuild(model, 1, P, v, zero)),
        ("mean", _rebuild(model, 1, P, v, mean)),
        ("uniform", _rebuild(model, 1, Pu, v, lambda out_h: out_h)),
    ):
        _, got = _observe(model, kw, 1, ablate=[(1, 3)], mode=mode)
        assert (got["out"] - want).abs().max().item() <= 1e-5, mode
    # GQA: head 2 shares head 3's KV head and is untouched
    _, got = _observe(model, kw, 1, ablate=[(1, 3)], mode="zero")
    untouched = _rebuild(model, 1, P, v, lambda out_h: out_h)
    other = _rebuild(model, 1, P, v, zero)
    assert torch.allclose(got["out"], other, atol=1e-5) and not torch.allclose(got["out"], untouched, atol=1e-4)


def test_uniform_over_one_segment(ace):
    model, kw = ace
    _, base = _observe(model, kw, 0)
    lyr = torch.tensor([s == "lyric" for s in LAYOUT.segments], dtype=torch.float64)
    Pu = base["P"].clone().double()
    Pu[:, 5] = (lyr / lyr.sum())[None, None, :]
    _, got = _observe(model, kw, 0, ablate=[(0, 5)], mode="uniform", segment="lyric")
    assert (got["out"] - _rebuild(model, 0, Pu, base["v"], lambda out_h: out_h)).abs().max().item() <= 1e-5


def test_steering_multiplies_a_segment_and_weight_one_is_bitwise_nothing(ace):
    model, kw = ace
    plain, base = _observe(model, kw, 2)
    same, _ = _observe(model, kw, 2, scale={"lyric": 1.0}, layers=[2])
    assert torch.equal(plain, same)
    w = torch.tensor([3.0 if s == "lyric" else 1.0 for s in LAYOUT.segments], dtype=torch.float64)
    Ps = base["P"].double() * w  # softmax(logits + log w) = P w / Σ P w
    Ps = Ps / Ps.sum(-1, keepdim=True)
    P = base["P"].double().clone()
    P[:, [0, 1]] = Ps[:, [0, 1]]
    steered, got = _observe(model, kw, 2, scale={"lyric": 3.0}, layers=[2], heads=[0, 1])
    assert (got["out"] - _rebuild(model, 2, P, base["v"], lambda out_h: out_h)).abs().max().item() <= 1e-5
    assert not torch.equal(steered, plain)


def test_patching_with_the_runs_own_maps_reproduces_it_and_other_maps_change_it(ace):
    model, kw = ace
    with al.capture(model, layout=LAYOUT, maps=True, reducer="reference", num_steps=1) as cap, torch.no_grad():
        plain = model(**kw)[0]
    with al.intervene(model, patch=cap, heads=[(0, 1), (2, 7)]), torch.no_grad():
        patched = model(**kw)[0]
    assert (patched - plain).abs().max().item() <= 1e-5
    flipped = {(0, 1): cap.maps[0, 0, :, 1].flip(-1)}  # [B, T, S], keys reversed
    with al.intervene(model, patch=flipped), torch.no_grad():
        other = model(**kw)[0]
    assert (other - plain).abs().max().item() > 1e-3


def test_the_model_is_restored_exactly_and_composes_with_capture(ace):
    model, kw = ace
    with torch.no_grad():
        before = model(**kw)[0]
    with al.intervene(model, ablate=[(0, 0), (1, 2)]), al.capture(model, layout=LAYOUT) as cap, torch.no_grad():
        changed = model(**kw)[0]
    assert cap.stats["entropy"].shape[:2] == (1, 3) and not torch.equal(changed, before)
    with torch.no_grad():
        after = model(**kw)[0]
    assert torch.equal(before, after) and attnlens_hooks(model) == []

    class Boom(RuntimeError):
        pass

    def boom(m, a, o):
        raise Boom

    h = model.layers[1].cross_attn.to_out[0].register_forward_hook(boom)
    try:
        with pytest.raises(Boom), al.intervene(model, scale={"caption": 0.5}, layout=LAYOUT), torch.no_grad():
            model(**kw)
    finally:
        h.remove()
    assert attnlens_hooks(model) == [] and not hasattr(model, "_attnlens_intervention_active")


def test_bad_input_is_named(ace):
    model, kw = ace
    with pytest.raises(InterventionError, match=r"unknown segment\(s\) \['lyrics'\] in scale; the ace-step family has"):
        al.intervene(model, scale={"lyrics": 2.0})
    with pytest.raises(InterventionError, match=r"\(3, 0\) out of range: the model has 3 layers of 16 heads"):
        al.intervene(model, ablate=[(3, 0)])
    with pytest.raises(InterventionError, match="mode must be one of"):
        al.intervene(model, ablate=[(0, 0)], mode="noise")
    with pytest.raises(InterventionError, match="two interventions"):
        al.intervene(model, ablate=[(0, 0)], scale={"lyric": 2.0}, layers=[0], heads=[0])
    bad = {(0, 1): torch.full((2, 12, 9), 1 / 9)}
    with pytest.raises(
        InterventionError, match=r"does not fit this call: expected \[batch, frames, keys\] \(2, 12, 12\)"
    ):
        with al.intervene(model, patch=bad), torch.no_grad():
            model(**kw)
    with pytest.raises(InterventionError, match="need the key layout"):
        with al.intervene(model, scale={"lyric": 2.0}), torch.no_grad():
            model(**kw)
    assert attnlens_hooks(model) == []


def test_stable_audio_head_zeroed_only_on_audio_frames():
    from diffusers import StableAudioDiTModel

    torch.manual_seed(0)
    dit = StableAudioDiTModel(sample_size=16, in_channels=4, num_layers=2, attention_head_dim=16,
                              num_attention_heads=4, num_key_value_attention_heads=2, out_channels=4,
                              cross_attention_dim=16, time_proj_dim=8, global_states_input_dim=8,
                              cross_attention_input_dim=16).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(1, 4, 16, generator=g), timestep=torch.tensor([0.5]),
              encoder_hidden_states=torch.randn(1, 6, 16, generator=g),
              global_hidden_states=torch.randn(1, 1, 8, generator=g), return_dict=False)  # fmt: skip
    attn = dit.transformer_blocks[1].attn2
    got = {}
    h = attn.to_out[0].register_forward_hook(lambda m, a, o: got.__setitem__("x", a[0].clone()))  # after pre-hooks
    try:
        with torch.no_grad():
            dit(**kw)
            plain_x = got["x"]
            with al.intervene(dit, ablate=[(1, 2)]):
                dit(**kw)
    finally:
        h.remove()
    x = got["x"].unflatten(-1, (4, 16))
    ref = plain_x.unflatten(-1, (4, 16))
    assert torch.equal(x[:, 0], ref[:, 0])  # the prepended global token keeps every head
    assert float(x[:, 1:, 2].abs().max()) == 0.0 and torch.equal(x[:, 1:, [0, 1, 3]], ref[:, 1:, [0, 1, 3]])
