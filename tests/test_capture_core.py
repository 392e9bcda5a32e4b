"""The capture core on the real diffusers ACE-Step classes (tiny config, random weights)."""

from __future__ import annotations

import gc
import math
import pickle

import pytest
import torch

import attnlens as al
from attnlens.captures import CaptureError, CaptureFileError, NotCapturedError
from attnlens.taps import attnlens_hooks

PROMPT = "folk, warm vocals"
LYRICS = "[verse]\nwalking down the morning road"
TURBO = [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3]


def gen(pipe, seed=0, **kw):
    args = dict(prompt=PROMPT, lyrics=LYRICS, audio_duration=2.0, num_inference_steps=8, guidance_scale=1.0)
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(seed)).audios


@pytest.fixture(scope="module")
def pipe():
    return al.models.tiny_pipeline(seed=0)


def test_tiny_pipeline_is_real_and_deterministic(pipe):
    from diffusers import AceStepPipeline
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    assert isinstance(pipe, AceStepPipeline)
    assert isinstance(pipe.transformer, AceStepTransformer1DModel)
    assert pipe.latents_per_second == 25.0
    other = al.models.tiny_pipeline(seed=0)
    for (n, a), (_, b) in zip(pipe.transformer.state_dict().items(), other.transformer.state_dict().items()):
        assert torch.equal(a, b), n
    assert not torch.equal(
        pipe.transformer.layers[0].cross_attn.to_q.weight,
        al.models.tiny_pipeline(seed=1).transformer.layers[0].cross_attn.to_q.weight,
    )


def test_outputs_bitwise_identical_with_and_without_capture(pipe):
    before = gen(pipe, output_type="pt")
    with al.capture(pipe, maps=True) as cap:
        during = gen(pipe, output_type="pt")
    after = gen(pipe, output_type="pt")
    assert torch.equal(before, during)
    assert torch.equal(before, after)
    assert cap.maps is not None and not attnlens_hooks(pipe.transformer)


def test_turbo_schedule_and_step_selection(pipe):
    with al.capture(pipe) as full:
        gen(pipe, output_type="latent")
    assert full.timesteps == pytest.approx(TURBO, abs=5e-5)
    assert full.steps == list(range(8))
    with al.capture(pipe, steps=[0, -1, 3]) as sel:
        gen(pipe, output_type="latent")
    assert sel.steps == [0, 3, 7]
    assert sel.kept_timesteps == pytest.approx([1.0, 0.8333, 0.3], abs=5e-5)
    for i, s in enumerate(sel.steps):
        for name in full.stats:
            assert torch.equal(sel.stats[name][i], full.stats[name][s]), (name, s)


def _record_cross_attention(pipe, step_to_keep):
    """Test-side hooks (not attnlens): V projection and cross-attention output of every layer at one step."""
    rec, handles, state = {}, [], {"step": -1}

    def on_step(module, args, kwargs):
        state["step"] += 1

    handles.append(pipe.transformer.register_forward_pre_hook(on_step, with_kwargs=True))
    for i, blk in enumerate(pipe.transformer.layers):

        def on_v(m, a, out, i=i):
            if state["step"] == step_to_keep:
                rec[("v", i)] = out.detach().clone()

        def on_out(m, a, out, i=i):
            if state["step"] == step_to_keep:
                rec[("out", i)] = out.detach().clone()

        handles.append(blk.cross_attn.to_v.register_forward_hook(on_v))
        handles.append(blk.cross_attn.register_forward_hook(on_out))
    return rec, handles


def _check_reconstruction(pipe, step):
    rec, handles = _record_cross_attention(pipe, step)
    try:
        with al.capture(pipe, steps=[step], maps=True) as cap:
            gen(pipe, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    f = cap.model
    group = f["heads"] // f["kv_heads"]
    worst = 0.0
    for li, layer in enumerate(cap.layers):
        ca = pipe.transformer.layers[layer].cross_attn
        P = cap.maps[0, li]  # [batch, head, frame, key]
        v = rec[("v", layer)].unflatten(-1, (f["kv_heads"], f["head_dim"]))  # [B, S, KVH, D]
        v = v.repeat_interleave(group, dim=2)  # [B, S, H, D]
        o = torch.einsum("bhts,bshd->bthd", P, v).flatten(2)  # [B, T, H*D]
        rebuilt = ca.to_out[1](ca.to_out[0](o))
        worst = max(worst, (rebuilt - rec[("out", layer)]).abs().max().item())
    return worst


def test_probabilities_rebuild_module_output(pipe):
    assert _check_reconstruction(pipe, step=3) <= 1e-5


def test_probabilities_rebuild_module_output_with_lora():
    from peft import LoraConfig

    pipe = al.models.tiny_pipeline(seed=0)
    pipe.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    assert _check_reconstruction(pipe, step=5) <= 1e-5


def test_maps_and_statistics_agree(pipe):
    with al.capture(pipe, layers=[2, 3], heads=[6, 10, 11], steps=[-1], maps=True) as cap:
        gen(pipe, output_type="latent")
    A = cap.attention(step=-1, layer=3, head=11)
    assert A.shape == (cap.n_frames, cap.n_keys)
    assert torch.allclose(A.sum(-1), torch.ones(cap.n_frames), atol=1e-6)
    # independent computation of every statistic from the map (float64)
    it = cap.layout[0]
    P = A.double()
    S = P.shape[1]
    ent = -(P * P.log()).sum(-1) / math.log(S)
    li, hi = cap.layer_index(3), cap.head_index(11)
    assert torch.allclose(cap.stats["entropy"][0, li, 0, hi].double(), ent, atol=1e-5)
    codes = torch.as_tensor(it.segment_codes())
    for g in range(5):
        m = P[:, codes == g].sum(-1)
        assert torch.allclose(cap.stats["mass"][0, li, 0, hi, :, g].double(), m, atol=1e-5)
    L = torch.as_tensor(it.lyric_positions())
    Al = P[:, L] / P[:, L].sum(-1, keepdim=True)
    ent_l = -(Al * Al.log()).sum(-1) / math.log(len(L))
    assert torch.allclose(cap.stats["entropy_lyric"][0, li, 0, hi].double(), ent_l, atol=1e-5)
    assert torch.equal(cap.stats["lyric_argmax"][0, li, 0, hi].long(), Al.argmax(-1))
    assert torch.equal(cap.stats["argmax"][0, li, 0, hi].long(), P.argmax(-1))


def test_layout_labels_lyrics(pipe):
    with al.capture(pipe, layers=[0], heads=[0]) as cap:
        gen(pipe, output_type="latent", lyrics="[verse]\nwalking down the morning road\n[chorus]\nsing with me")
    it = cap.layout[0]
    assert it.words == ["walking", "down", "the", "morning", "road", "sing", "with", "me"]
    assert it.lines == ["walking down the morning road", "sing with me"]
    sung = [it.tokens[i] for i in it.lyric_positions()]
    assert "".join(sung).replace(" ", "") == "walkingdownthemorningroadsingwithme"
    kinds = {k for k, s in zip(it.kinds, it.segments) if s == "lyric_meta"}
    assert kinds == {"header", "tag", "space", "end"}
    for i in it.lyric_positions():  # every sung token points at its word's characters
        s, e = it.char_spans[i]
        ws, we = it.word_spans[it.word_index[i]]
        assert it.lyrics[s:e].strip() and ws < e and s < we
    assert it.segments.count("timbre") == 1 and it.segments.count("padding") == 0
    assert "folk, warm vocals" in it.caption


def test_layout_matches_diffusers_packing_for_a_ragged_batch(pipe):
    from diffusers.pipelines.ace_step.modeling_ace_step import _pack_sequences

    prompts = ["a", "folk song with a long caption about guitars"]
    lyrics = ["[verse]\nhello", "[chorus]\nwalking down the road\nsing with me tonight"]
    with al.capture(pipe, layers=[1], heads=[0, 5], maps=True) as cap:
        pipe(prompt=prompts, lyrics=lyrics, audio_duration=1.0, guidance_scale=1.0, output_type="latent")
    # independent packing: tag every source position, pack with diffusers' own function
    th, tm, lh, lm = pipe.encode_prompt(prompt=prompts, lyrics=lyrics, device="cpu", audio_duration=1.0)
    B, Ll, Lt = 2, lm.shape[1], tm.shape[1]
    tag_l = torch.stack([torch.full((Ll,), 1.0), torch.arange(Ll).float()], -1).expand(B, -1, -1)
    tag_m = torch.tensor([[[2.0, 0.0]]]).expand(B, 1, 2)
    tag_t = torch.stack([torch.full((Lt,), 3.0), torch.arange(Lt).float()], -1).expand(B, -1, -1)
    h1, m1 = _pack_sequences(tag_l, tag_m, lm, torch.ones(B, 1, dtype=torch.long))
    h2, m2 = _pack_sequences(h1, tag_t, m1, tm)
    assert cap.n_keys == h2.shape[1]
    ids_l = pipe.tokenizer(
        [f"# Languages\nen\n\n# Lyric\n{x}<|endoftext|>" for x in lyrics], padding="longest"
    ).input_ids
    for b in range(B):
        it = cap.layout[b]
        n_valid = int(m2[b].sum())
        assert it.segments[n_valid:] == ["padding"] * (cap.n_keys - n_valid)
        for p in range(n_valid):
            kind, j = int(h2[b, p, 0]), int(h2[b, p, 1])
            seg = it.segments[p]
            if kind == 1:
                assert seg in ("lyric", "lyric_meta")
                assert it.tokens[p] == pipe.tokenizer.decode([ids_l[b][j]])
            else:
                assert seg == {2: "timbre", 3: "caption"}[kind]
    assert cap.layout[0].segments.count("padding") > 0 and cap.layout[1].segments.count("padding") == 0
    pad = cap.stats["mass"][..., 4]
    assert pad[:, :, 0].mean() > 0.01  # padded keys take real mass: reported, not folded
    assert torch.all(pad[:, :, 1] == 0)


def test_cfg_halves_are_labelled():
    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(is_turbo=False))
    with al.capture(pipe, layers=[0], heads=[0]) as cap:
        pipe(
            prompt=PROMPT,
            lyrics=LYRICS,
            audio_duration=1.0,
            num_inference_steps=2,
            guidance_scale=3.0,
            output_type="latent",
        )
    assert cap.batch_labels == ["cond:0", "uncond:0"]
    assert cap.stats["entropy"].shape[2] == 2


def _raise_at(pipe, layer, step):
    state = {"step": -1}

    def on_step(m, a, kw):
        state["step"] += 1

    def boom(m, a, out):
        if state["step"] == step:
            raise RuntimeError("injected")

    return [
        pipe.transformer.register_forward_pre_hook(on_step, with_kwargs=True),
        pipe.transformer.layers[layer].cross_attn.register_forward_hook(boom),
    ]


@pytest.mark.parametrize("layer,step", [(0, 0), (3, 4), (7, 7)])
def test_exception_inside_pipeline_leaves_no_hooks(pipe, layer, step):
    ref = gen(pipe, output_type="latent")
    handles = _raise_at(pipe, layer, step)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            with al.capture(pipe, maps=True):
                gen(pipe, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert attnlens_hooks(pipe) == [] if hasattr(pipe, "named_modules") else True
    for comp in (pipe.transformer, pipe.text_encoder, pipe.condition_encoder):
        assert attnlens_hooks(comp) == []
    assert torch.equal(gen(pipe, output_type="latent"), ref)
    with al.capture(pipe, layers=[0]) as cap:  # a new capture works
        gen(pipe, output_type="latent")
    assert len(cap.steps) == 8


def test_bad_input_errors(pipe, tmp_path):
    with pytest.raises(TypeError, match="Linear.*AceStepPipeline or AceStepTransformer1DModel"):
        al.capture(torch.nn.Linear(2, 2))
    with pytest.raises(IndexError, match=r"layers \[8\] out of range.*8"):
        al.capture(pipe, layers=[8])
    with pytest.raises(IndexError, match=r"heads \[16\] out of range"):
        al.capture(pipe, heads=[16])
    with pytest.raises(ValueError, match="maps must be"):
        al.capture(pipe, maps="all")
    with al.capture(pipe, layers=[1], heads=[2], steps=[-1]) as cap:
        with pytest.raises(CaptureError, match="nested"):
            with al.capture(pipe):
                pass
        gen(pipe, output_type="latent")
    with pytest.raises(NotCapturedError, match="maps=True"):
        cap.attention(step=-1, layer=1, head=2)
    with al.capture(pipe, layers=[1], heads=[2], steps=[-1], maps=True) as cap:
        gen(pipe, output_type="latent")
    with pytest.raises(NotCapturedError, match=r"layers=\[3\]"):
        cap.attention(step=-1, layer=3, head=2)
    with pytest.raises(NotCapturedError, match=r"heads=\[5\]"):
        cap.attention(step=-1, layer=1, head=5)
    with pytest.raises(NotCapturedError, match=r"steps=\[0\]"):
        cap.attention(step=0, layer=1, head=2)
    with pytest.raises(CaptureError, match="new generation"):
        with al.capture(pipe, layers=[0]):
            gen(pipe, output_type="latent")
            gen(pipe, output_type="latent")
    assert attnlens_hooks(pipe.transformer) == []
    # files
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CaptureFileError, match="pickle"):
        al.load_capture(p)
    torch.save({"a": torch.ones(2)}, tmp_path / "t.pt")
    with pytest.raises(CaptureFileError, match="pickle"):
        al.load_capture(tmp_path / "t.pt")
    (tmp_path / "j.attn").write_text('{"not": "a capture"}')
    with pytest.raises(CaptureFileError):
        al.load_capture(tmp_path / "j.attn")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CaptureFileError, match="not an attnlens capture"):
        al.load_capture(tmp_path / "w.safetensors")
    good = cap.save(tmp_path / "good.attn")
    raw = open(good, "rb").read()
    (tmp_path / "trunc.attn").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaptureFileError, match="truncated|damaged"):
        al.load_capture(tmp_path / "trunc.attn")


def test_save_load_roundtrip(pipe, tmp_path):
    with al.capture(pipe, layers=[2, 3], heads=[6, 10, 11], steps=[-1], maps=True) as cap:
        gen(pipe, output_type="latent")
    path = cap.save(tmp_path / "run.attn")
    back = al.load_capture(path)
    assert back.layers == cap.layers and back.heads == cap.heads and back.steps == cap.steps
    assert back.timesteps == cap.timesteps and back.batch_labels == cap.batch_labels
    assert back.layout.to_json() == cap.layout.to_json()
    for k in cap.stats:
        assert torch.equal(back.stats[k], cap.stats[k])
    assert torch.equal(back.attention(-1, 3, 11), cap.attention(-1, 3, 11))
    assert "AceStepTransformer1DModel" in back._repr_html_()


def test_maps_mean_is_mean_over_steps(pipe):
    with al.capture(pipe, layers=[4], heads=[1], maps=True) as full:
        gen(pipe, output_type="latent")
    with al.capture(pipe, layers=[4], heads=[1], maps="mean") as mean:
        gen(pipe, output_type="latent")
    assert torch.allclose(mean.attention("mean", 4, 1), full.maps[:, 0, 0, 0].mean(0), atol=1e-6)


def test_bare_transformer_with_and_without_layout(pipe):
    from attnlens.captures import ItemLayout

    tr = pipe.transformer
    B, T, S = 1, 20, 12
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(B, T, 8, generator=g),
        timestep=torch.full((B,), 0.5),
        timestep_r=torch.full((B,), 0.5),
        encoder_hidden_states=torch.randn(B, S, 64, generator=g),
        context_latents=torch.randn(B, T, 16, generator=g),
    )
    with al.capture(tr, layers=[0]) as cap:
        with torch.no_grad():
            tr(**kw)
    assert not cap.layout.known and "unknown" in cap.meta["layout_warning"]
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=4)
    with al.capture(tr, layers=[0], layout=layout) as cap:
        with torch.no_grad():
            tr(**kw)
    assert torch.allclose(cap.stats["mass"].sum(-1), torch.ones(1), atol=1e-5)
    with pytest.raises(ValueError, match="num_steps"):
        al.capture(tr, steps=[-1])


def test_no_growth_over_100_captures(pipe):
    import tracemalloc

    def once():
        with al.capture(pipe, layers=[0, 1], heads=[0, 1], maps=True) as cap:
            pipe(prompt="a", lyrics="[verse]\nhi", audio_duration=0.4, num_inference_steps=1, output_type="latent")
        return cap

    for _ in range(5):
        once()
    gc.collect()
    tracemalloc.start()
    base_objs = len(gc.get_objects())
    base_mem = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        once()
    gc.collect()
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    objs = len(gc.get_objects())
    assert attnlens_hooks(pipe.transformer) == [] and attnlens_hooks(pipe.text_encoder) == []
    assert objs - base_objs < 200, objs - base_objs
    assert mem - base_mem < 2 << 20, mem - base_mem


def test_host_block_slots_and_fallbacks():
    from attnlens.captures.session import _HostBlock

    hb = _HostBlock(2, inner=(3,))
    xs = {(s, li): torch.full((4,), float(10 * s + li)) for s in range(2) for li in range(3)}
    for idx, x in xs.items():
        out = hb.put(idx, x)
        assert torch.equal(out, x) and out.data_ptr() == hb.block[idx].data_ptr()
    assert hb.complete(1) is None  # fewer steps than slots: not the whole block
    block = hb.complete(2)
    assert block.shape == (2, 3, 4) and torch.equal(block[1, 2], torch.full((4,), 12.0))
    extra = hb.put((2, 0), torch.ones(4))  # a step past the expected ones keeps its own copy
    assert torch.equal(extra, torch.ones(4)) and hb.block.shape[0] == 2
    partial = _HostBlock(2)
    partial.put((0,), torch.zeros(2))
    assert partial.complete(2) is None  # a slot never written
    assert _HostBlock(None).put((0,), torch.ones(2)).shape == (2,)  # unknown step count: per-step copies
