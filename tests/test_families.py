"""The model-family seam: Stable Audio's family on the real diffusers class, a user-registered family defined here,
and imports that run one way."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import attnlens as al
from attnlens.adapters.stable_audio import STABLE_AUDIO_SEGMENTS, StableAudioAdapter
from attnlens.captures import ItemLayout, Layout
from attnlens.families import AttentionFacts, FamilyBase
from attnlens.segments import Segments
from attnlens.taps.hooks import attnlens_hooks

S_PROMPT, S_PAD = 6, 4  # prompt tokens (incl. </s>) and padding: 6 + 4 + 2 timing keys = 12 keys


def _tiny_dit(seed: int = 0):
    from diffusers import StableAudioDiTModel

    g = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        m = StableAudioDiTModel(
            sample_size=24,
            in_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            num_key_value_attention_heads=2,
            out_channels=4,
            cross_attention_dim=16,
            time_proj_dim=8,
            global_states_input_dim=8,
            cross_attention_input_dim=16,
        )
    finally:
        torch.random.set_rng_state(g)
    return m.eval()


def _inputs(B: int = 2, T: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    S = S_PROMPT + S_PAD + 2
    return dict(
        hidden_states=torch.randn(B, 4, T, generator=g),
        timestep=torch.tensor([0.7]),
        encoder_hidden_states=torch.randn(B, S, 16, generator=g),
        global_hidden_states=torch.randn(B, 1, 8, generator=g),
        return_dict=False,
    )


def _layout(B: int = 2) -> Layout:
    segs = ["prompt"] * (S_PROMPT - 1) + ["prompt_special"] + ["padding"] * S_PAD + ["seconds_start", "seconds_total"]
    return Layout(items=[ItemLayout(segments=segs, vocabulary=STABLE_AUDIO_SEGMENTS) for _ in range(B)], source="user")


@pytest.fixture(scope="module")
def dit():
    return _tiny_dit()


def _attn2_io(model, inputs):
    """Each layer's attn2 output ``[B, 1 + T, H·D]``, its value projection and its to_out weights, from the module."""
    seen = {}
    handles = []
    for i, blk in enumerate(model.transformer_blocks):
        handles.append(blk.attn2.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("out", i), o)))
        handles.append(blk.attn2.to_v.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("v", i), o)))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _rebuild(model, cap, seen, layer, mask=None):
    """attn2's output rebuilt from the captured probabilities and the module's own value projection and to_out."""
    attn = model.transformer_blocks[layer].attn2
    f = StableAudioAdapter(model).facts
    P = cap.maps[0, layer]  # [B, H, T, S]
    B, H, T, S = P.shape
    v = seen[("v", layer)].view(B, S, f.kv_heads, f.head_dim)  # [B, S, KVH, D]
    v = v[:, :, torch.arange(H) // f.group]  # [B, S, H, D]
    o = torch.einsum("bhts,bshd->bthd", P.double(), v.double()).reshape(B, T, H * f.head_dim)
    return attn.to_out[0](o.float())


@pytest.mark.parametrize("masked", [False, True])
def test_stable_audio_rebuilds_attn2_output_from_captured_probabilities(dit, masked):
    inputs = _inputs()
    if masked:  # item 0 drops two prompt tokens and all padding; item 1 drops one timing key
        mask = torch.ones(2, S_PROMPT + S_PAD + 2, dtype=torch.bool)
        mask[0, 2:4] = False
        mask[0, S_PROMPT : S_PROMPT + S_PAD] = False
        mask[1, -1] = False
        inputs["encoder_attention_mask"] = mask
    seen = _attn2_io(dit, inputs)
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        dit(**inputs)
    assert cap.maps.shape == (1, 2, 2, 4, 24, 12)  # [step, layer, batch, head, frame (no global token), key]
    for layer in range(2):
        want = seen[("out", layer)][:, 1:]  # the global token (position 0) is not an audio frame
        got = _rebuild(dit, cap, seen, layer)
        assert (got - want).abs().max().item() <= 1e-5
    if masked:
        P = cap.maps[0]
        assert float(P[:, 0, :, :, 2:4].abs().max()) == 0.0 and float(P[:, 1, ..., -1].abs().max()) == 0.0
        # masked keys are in no segment; the masses still add to 1 over the family's segments
        mass = cap.stats["mass"]
        assert mass.shape[-1] == len(STABLE_AUDIO_SEGMENTS)
        assert float(mass[:, :, 0, ..., STABLE_AUDIO_SEGMENTS.code("padding")].abs().max()) == 0.0
    assert torch.allclose(cap.stats["mass"].sum(-1), torch.ones(()), atol=1e-5)


def test_stable_audio_statistics_match_the_maps_and_entropy_counts_unmasked_keys(dit):
    inputs = _inputs(seed=3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, S_PROMPT : S_PROMPT + S_PAD] = False  # item 1 attends to 8 keys
    mask[1, 1] = False  # and not to its second prompt token
    inputs["encoder_attention_mask"] = mask
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        dit(**inputs)
    P = cap.maps.double()  # [step, layer, batch, head, frame, key]
    plogp = torch.where(P > 0, P * P.clamp_min(1e-300).log(), torch.zeros_like(P)).sum(-1)
    n_keys = torch.tensor([12.0, 7.0], dtype=torch.float64)[None, None, :, None, None]
    want = -plogp / n_keys.log()
    assert torch.allclose(cap.stats["entropy"].double(), want, atol=1e-6)
    codes = torch.as_tensor(cap.layout[0].segment_codes())
    for g, name in enumerate(STABLE_AUDIO_SEGMENTS.names):
        want_g = P[..., codes == g].sum(-1)
        assert torch.allclose(cap.stats["mass"][..., g].double(), want_g, atol=1e-6), name
    # the lyric-only statistics run over the prompt tokens (the family's sequence segment)
    L = cap.layout[0].lyric_positions()
    assert L.tolist() == list(range(S_PROMPT - 1))
    a = P[..., L].argmax(-1)  # a masked key has probability 0 and is never the argmax here
    assert torch.equal(cap.stats["lyric_argmax"].long(), a)
    # and every statistic agrees with the reference definition on the maps, masked keys included
    from attnlens.metrics.frame_stats import frame_stats

    for b in range(2):
        ref = frame_stats(cap.maps[:, :, b], cap.layout[b], key_valid=mask[b])
        for name in ("entropy", "mass", "entropy_lyric"):
            assert torch.allclose(cap.stats[name][:, :, b], ref[name], atol=1e-6), name
        for name in ("argmax", "lyric_argmax"):
            assert torch.equal(cap.stats[name][:, :, b], ref[name]), name


def test_stable_audio_capture_leaves_outputs_bitwise_identical_and_no_hooks(dit):
    inputs = _inputs(seed=5)
    with torch.no_grad():
        plain = dit(**inputs)[0]
    with al.capture(dit, layout=_layout(), maps=True) as cap, torch.no_grad():
        seen = dit(**inputs)[0]
    assert torch.equal(plain, seen) and cap.stats["entropy"].shape == (1, 2, 2, 4, 24)
    assert attnlens_hooks(dit) == []


@pytest.mark.parametrize("where", ["step", "layer1"])
def test_stable_audio_hooks_removed_after_an_exception(dit, where):
    inputs = _inputs()

    class Boom(RuntimeError):
        pass

    def boom(*a, **k):
        raise Boom

    target = dit if where == "step" else dit.transformer_blocks[1].attn2.to_k
    h = target.register_forward_hook(boom)
    try:
        with pytest.raises(Boom), al.capture(dit, layout=_layout()), torch.no_grad():
            dit(**inputs)
    finally:
        h.remove()
    assert attnlens_hooks(dit) == [] and not hasattr(dit, "_attnlens_capture_active")


def test_stable_audio_analyze_has_the_family_mass_columns_and_round_trips(dit, tmp_path):
    with al.capture(dit, layout=_layout(), maps=True) as cap, torch.no_grad():
        dit(**_inputs())
    df = al.analyze(cap)
    cols = [f"{s}_mass" for s in STABLE_AUDIO_SEGMENTS.names]
    assert all(c in df.columns for c in cols) and "lyric_mass" not in df.columns
    assert ((df[cols].sum(axis=1) - 1).abs() < 1e-5).all()
    assert cap.frame_rate == pytest.approx(44100 / 2048)
    path = tmp_path / "sa.attn"
    cap.save(path)
    back = al.load_capture(path)
    assert back.layout.vocabulary == STABLE_AUDIO_SEGMENTS
    assert torch.equal(back.stats["mass"], cap.stats["mass"]) and torch.equal(back.maps, cap.maps)


def test_a_layout_of_another_family_is_refused(dit):
    from attnlens.captures.session import CaptureError

    wrong = Layout(items=[ItemLayout.from_segment_lengths(lyric=12)] * 2, source="user")
    with pytest.raises(CaptureError, match="not the model family"), al.capture(dit, layout=wrong), torch.no_grad():
        dit(**_inputs())


# ---------------------------------------------------------------------------------------------- a third family
PAIR_SEGMENTS = Segments(names=("words", "style", "pad"), sequence="words", family="toy-pair")


class ToyAttention(nn.Module):
    """Cross-attention with its own names: ``wq``/``wk``/``wv``, heads 2, KV heads 1, scale 0.5."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.wq, self.wk, self.wv = nn.Linear(dim, 32), nn.Linear(dim, 16), nn.Linear(dim, 16)

    def forward(self, x, c):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, 2, 16).transpose(1, 2)  # [B, 2, T, 16]
        k = self.wk(c).view(B, -1, 1, 16).transpose(1, 2)
        v = self.wv(c).view(B, -1, 1, 16).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)  # GQA: both heads read KV head 0
        return (p @ v).transpose(1, 2).reshape(B, T, 32)


class ToyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ToyAttention(), ToyAttention()])
        self.inp = nn.Linear(32, 16)

    def forward(self, x, t, cond):
        outs = []
        for blk in self.blocks:
            outs.append(blk(x, cond))
            x = self.inp(outs[-1])
        return outs


class ToyFamily(FamilyBase):
    name = "toy-pair"
    describes = "a ToyDenoiser"
    segments = PAIR_SEGMENTS
    timestep_arg = ("t", 1)
    encoder_arg = ("cond", 2)

    @classmethod
    def accepts(cls, model):
        return isinstance(model, ToyDenoiser)

    def __init__(self, model):
        self.transformer = model
        self.facts = AttentionFacts(n_layers=2, heads=2, kv_heads=1, head_dim=16, scale=0.5)
        self.frame_rate = 10.0

    def cross_attention(self, layer):
        return self.transformer.blocks[layer]

    def query_key_modules(self, layer):
        return self.transformer.blocks[layer].wq, self.transformer.blocks[layer].wk

    def value_module(self, layer):
        return self.transformer.blocks[layer].wv

    def query_of(self, out):
        return out.view(out.shape[0], out.shape[1], 2, 16)

    def key_of(self, out):
        return out.view(out.shape[0], out.shape[1], 1, 16)


def test_a_family_defined_here_is_captured_through_the_public_registration():
    torch.manual_seed(0)
    model = ToyDenoiser().eval()
    x, cond = torch.randn(1, 7, 16), torch.randn(1, 5, 16)
    with pytest.raises(al.adapters.AdapterError, match="ToyDenoiser"):
        al.capture(model)
    al.adapters.register(ToyFamily)
    try:
        layout = ItemLayout(segments=["words", "words", "words", "style", "pad"], vocabulary=PAIR_SEGMENTS)
        with al.capture(model, layout=layout, maps=True) as cap, torch.no_grad():
            outs = model(x, 0.5, cond)
    finally:
        al.adapters.unregister(ToyFamily)
    assert cap.model["adapter"] == "toy-pair" and cap.frame_rate == 10.0
    blk = model.blocks[1]
    with torch.no_grad():
        xin = model.inp(outs[0])
        q = blk.wq(xin).view(1, 7, 2, 16).transpose(1, 2)
        k = blk.wk(cond).view(1, 5, 1, 16).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)  # [1, 2, 7, 5]
    assert torch.allclose(cap.maps[0, 1, 0], want, atol=1e-6)
    assert torch.allclose(cap.stats["mass"][0, 1, 0, ..., 0], want[..., :3].sum(-1), atol=1e-6)
    assert torch.allclose(cap.stats["mass"][0, 1, 0, ..., 2], want[..., 4], atol=1e-6)
    ent = -(want * want.log()).sum(-1) / math.log(5)
    assert torch.allclose(cap.stats["entropy"][0, 1, 0], ent, atol=1e-6)
    df = al.analyze(cap)
    assert {"words_mass", "style_mass", "pad_mass"} <= set(df.columns)
    assert attnlens_hooks(model) == []


def test_registering_something_that_is_not_a_family_is_refused():
    with pytest.raises(al.adapters.AdapterError, match="accepts"):
        al.adapters.register(object)


# -------------------------------------------------------------------------------------------------------- imports
def test_every_module_imports_first():
    """``import attnlens.X`` works as the first attnlens import for every module X (no import cycle, no order the
    modules depend on): each is imported in a fresh module table (torch stays loaded, to keep this fast)."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import torch, diffusers, transformers  # noqa: F401  (third-party modules stay loaded)
        import attnlens
        names = [m.name for m in pkgutil.walk_packages(attnlens.__path__, "attnlens.") if not m.name.endswith("__main__")]
        bad = []
        for name in names:
            for k in [k for k in sys.modules if k == "attnlens" or k.startswith("attnlens.")]:
                del sys.modules[k]
            try:
                importlib.import_module(name)
            except (Exception, SystemExit) as e:
                bad.append(f"{name}: {e!r}")
        print(len(names))
        print("\\n".join(bad))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert int(lines[0]) > 60 and lines[1:] == []


def test_stable_audio_fused_kernel_agrees_with_the_reference_under_a_key_mask(dit):
    pytest.importorskip("triton")
    inputs = _inputs(seed=7)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, S_PROMPT : S_PROMPT + S_PAD] = False
    inputs["encoder_attention_mask"] = mask
    caps = {}
    for red in ("reference", "fused"):
        with al.capture(dit, layout=_layout(), reducer=red) as caps[red], torch.no_grad():
            dit(**inputs)
    assert caps["fused"].meta["reducer"] == "fused"
    for name, ref in caps["reference"].stats.items():
        got = caps["fused"].stats[name]
        if got.is_floating_point():
            assert torch.allclose(got, ref, atol=2e-5), name
        else:
            assert torch.equal(got, ref), name


def test_stable_audio_plots_prompt_words_against_seconds(dit):
    from attnlens.adapters.stable_audio import prompt_item

    tok = al.models.offline_tokenizer()
    ids = tok("warm piano").input_ids + [tok.eos_token_id]  # the prompt's closing special token
    ids += [tok.pad_token_id] * (S_PROMPT + S_PAD - len(ids))
    mask = [1] * 3 + [0] * (len(ids) - 3)
    item = prompt_item(tok, ids, mask)
    assert item.segments[:3] == ["prompt", "prompt", "prompt_special"] and item.words == ["warm", "piano"]
    assert item.segments[-2:] == ["seconds_start", "seconds_total"] and item.n_keys == 12
    with al.capture(dit, layout=item, maps=True) as cap, torch.no_grad():
        dit(**_inputs())
    md = al.plot.map_data(cap, step=-1, layer=1, head=2)
    assert [r.label for r in md.rows] == ["warm", "piano"] and md.frame_rate == pytest.approx(44100 / 2048)
    P = cap.maps[0, 1, 0, 2].numpy()  # [frame, key]
    assert md.values.shape[0] == 2 and abs(md.values[0] - P[:, 0]).max() < 1e-6
    every = al.plot.map_data(cap, step=-1, layer=1, head=2, keys="all")
    labels = [r.label for r in every.rows]
    assert labels[-3:] == ["padding ×7", "seconds_start[0]", "seconds_total[0]"]
    assert abs(every.values.sum(0) - 1).max() < 1e-5  # every key in one row: columns sum to 1
    fig = al.plot.heads(cap, step=-1, layers=[1])
    assert len(fig.axes) >= 4
