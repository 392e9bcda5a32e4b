"""PixArt's family on the real diffusers classes (tiny configs, random weights): the tap reads what attn2's softmax
sees (scale, the −10000 mask bias), observation changes nothing, the recorded prompt layout and query grid, and
per-word heatmaps over the image — on a planted model whose one word attends to a known region."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.adapters.pixart import PIXART_SEGMENTS, PixArtAdapter, boolean_key_mask
from attnlens.taps.hooks import attnlens_hooks

B, S = 2, 10  # batch rows and T5 positions of the bare-transformer calls
RUN = dict(num_inference_steps=2, clean_caption=False, max_sequence_length=12)


def _tiny_transformer(seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = PixArtTransformer2DModel(
            num_attention_heads=4,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=64,
            sample_size=8,
            patch_size=2,
            caption_channels=24,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
    return m.eval()


@pytest.fixture(scope="module")
def dit():
    return _tiny_transformer()


@pytest.fixture(scope="module")
def pipe():
    return al.models.tiny_pixart_pipeline(seed=0)


def _inputs(seed: int = 1, mask: torch.Tensor | None = None, h: int = 8, w: int = 12):
    g = torch.Generator().manual_seed(seed)
    kw = dict(
        hidden_states=torch.randn(B, 4, h, w, generator=g),  # a 4 x 6 grid of 2 x 2 patches
        encoder_hidden_states=torch.randn(B, S, 24, generator=g),
        timestep=torch.tensor([500, 500]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )
    if mask is not None:
        kw["encoder_attention_mask"] = mask
    return kw


def _prompt_mask():
    """Row 0 attends to its first 6 keys, row 1 to its first 3 (T5 padding on the right)."""
    m = torch.zeros(B, S, dtype=torch.long)
    m[0, :6] = 1
    m[1, :3] = 1
    return m


def _layout():
    m = _prompt_mask()
    items = []
    for b in range(B):
        n = int(m[b].sum())
        segs = ["prompt"] * (n - 1) + ["prompt_special"] + ["padding"] * (S - n)
        items.append(al.captures.ItemLayout(segments=segs, vocabulary=PIXART_SEGMENTS))
    return al.captures.Layout(items=items, source="user")


def _attn2_io(model, inputs):
    """Each layer's attn2 output, its q / k / v projections (the module's own), from hooks."""
    seen, handles = {}, []
    for i, blk in enumerate(model.transformer_blocks):
        a = blk.attn2
        handles.append(a.register_forward_hook(lambda m, x, o, i=i: seen.__setitem__(("out", i), o)))
        for name in ("to_q", "to_k", "to_v"):
            mod = getattr(a, name)
            handles.append(mod.register_forward_hook(lambda m, x, o, i=i, n=name: seen.__setitem__((n, i), o)))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("masked", [False, True])
def test_pixart_rebuilds_attn2_output_from_captured_probabilities(dit, masked):
    inputs = _inputs(mask=_prompt_mask() if masked else None)
    seen = _attn2_io(dit, inputs)
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        dit(**inputs)
    assert cap.maps.shape == (1, 2, B, 4, 24, S)  # [step, layer, batch, head, patch (4 x 6), key]
    assert cap.model["query_grid"] == [4, 6] and cap.frame_rate == 1.0 and cap.n_frames == 24
    for layer in range(2):
        attn = dit.transformer_blocks[layer].attn2
        P = cap.maps[0, layer].double()  # [B, H, N, S]
        v = seen[("to_v", layer)].view(B, S, 4, 16).double()
        o = torch.einsum("bhns,bshd->bnhd", P, v).reshape(B, 24, 64)
        got = attn.to_out[0](o.float())
        assert (got - seen[("out", layer)]).abs().max().item() <= 1e-5
    if masked:  # the -10000 bias: probability exactly 0, and no segment (masses still sum to 1)
        assert float(cap.maps[0, :, 0, ..., 6:].abs().max()) == 0.0
        assert float(cap.maps[0, :, 1, ..., 3:].abs().max()) == 0.0
        assert float(cap.stats["mass"][..., PIXART_SEGMENTS.code("padding")].abs().max()) == 0.0
        assert cap.meta["key_mask"] is True
    assert torch.allclose(cap.stats["mass"].sum(-1), torch.ones(()), atol=1e-5)


def test_the_models_minus_10000_bias_gives_masked_keys_exactly_zero_probability(dit):
    """The model's own logits plus its own bias, softmaxed in fp32: the masked keys' probabilities underflow to
    exactly 0.0, and the capture's maps (boolean mask) equal those probabilities."""
    mask = _prompt_mask()
    inputs = _inputs(seed=4, mask=mask)
    seen = _attn2_io(dit, inputs)
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        dit(**inputs)
    bias = ((1 - mask.float()) * -10000.0)[:, None, None, :]  # what the transformer adds: [B, 1, 1, S]
    for layer in range(2):
        q = seen[("to_q", layer)].view(B, 24, 4, 16).transpose(1, 2)
        k = seen[("to_k", layer)].view(B, S, 4, 16).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16) + bias, dim=-1)  # fp32, as the model
        assert p.dtype == torch.float32 and torch.count_nonzero(p[~mask.bool()[:, None, None, :].expand_as(p)]) == 0
        assert (p - cap.maps[0, layer]).abs().max().item() <= 1e-6
    # the same bias handed over as [B, 1, S] (the transformer's own form) is read as the same mask
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap3, torch.no_grad():
        dit(**{**inputs, "encoder_attention_mask": bias[:, 0]})
    assert torch.equal(cap3.maps, cap.maps)


def test_each_call_is_read_with_its_own_mask(dit):
    """Two calls in one capture, each with a fresh mask tensor (the first one freed before the second is made): each
    step's maps drop the keys of its own mask."""
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        for drop in (slice(6, None), slice(2, None)):
            m = torch.ones(B, S, dtype=torch.long)
            m[:, drop] = 0
            dit(**_inputs(seed=6, mask=m))
            del m
    assert float(cap.maps[0, ..., 6:].abs().max()) == 0.0 and float(cap.maps[0, ..., 2:6].min()) > 0.0
    assert float(cap.maps[1, ..., 2:].abs().max()) == 0.0


def test_boolean_key_mask_forms_and_refusals():
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    want = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(boolean_key_mask(m), want) and torch.equal(boolean_key_mask(m.bool()), want)
    bias = ((1 - m.to(torch.bfloat16)) * -10000.0)[:, None]  # bf16 rounds -10000 to -9984
    assert torch.equal(boolean_key_mask(bias), want)
    assert torch.equal(boolean_key_mask(torch.where(m.bool(), 0.0, float("-inf"))[:, None]), want)
    with pytest.raises(ValueError, match="soft bias"):
        boolean_key_mask(torch.tensor([[0.0, -3.0, 0.0]])[:, None])
    with pytest.raises(ValueError, match="soft bias"):
        boolean_key_mask(torch.tensor([[1.0, 0.5]]))
    with pytest.raises(ValueError, match="drops every key"):
        boolean_key_mask(torch.tensor([[1, 1], [0, 0]]))


def test_pixart_statistics_match_the_maps_and_entropy_counts_unmasked_keys(dit):
    from attnlens.metrics.frame_stats import frame_stats

    mask = _prompt_mask()
    with al.capture(dit, layout=_layout(), maps=True, reducer="reference") as cap, torch.no_grad():
        dit(**_inputs(seed=3, mask=mask))
    P = cap.maps.double()
    plogp = torch.where(P > 0, P * P.clamp_min(1e-300).log(), torch.zeros_like(P)).sum(-1)
    n_keys = torch.tensor([6.0, 3.0], dtype=torch.float64)[None, None, :, None, None]
    assert torch.allclose(cap.stats["entropy"].double(), -plogp / n_keys.log(), atol=1e-6)
    for b in range(B):
        ref = frame_stats(cap.maps[:, :, b], cap.layout[b], key_valid=mask[b].bool())
        for name in ("entropy", "mass", "entropy_lyric"):
            assert torch.allclose(cap.stats[name][:, :, b], ref[name], atol=1e-6), name
        for name in ("argmax", "lyric_argmax"):
            assert torch.equal(cap.stats[name][:, :, b], ref[name]), name


def test_pixart_refuses_a_fused_or_foreign_processor():
    m = _tiny_transformer()
    m.fuse_qkv_projections()  # cross-attention then reads to_kv, never to_k
    with pytest.raises(al.adapters.AdapterError, match="unfuse_qkv_projections"):
        PixArtAdapter(m)
    m.unfuse_qkv_projections()
    m.set_default_attn_processor()  # AttnProcessor: attn.scale = 1/sqrt(D), the same softmax
    assert PixArtAdapter(m).facts.scale == 0.25


# ------------------------------------------------------------------------------------------------- the pipeline
def _generate(pipe, capture=None, **kw):
    args = {**RUN, "generator": torch.Generator().manual_seed(0), "output_type": "latent", **kw}
    prompt = args.pop("prompt", "a red cat on a blue sofa")
    if capture is None:
        return pipe(prompt, **args).images
    with capture as cap:
        out = pipe(prompt, **args).images
    return out, cap


@pytest.fixture(scope="module")
def run(pipe):
    """One guided generation captured with maps: ``(latents out, capture)``."""
    return _generate(pipe, al.capture(pipe, maps=True))


def test_pipeline_capture_records_the_prompt_layout_grid_and_guidance_rows(pipe, run):
    out, cap = run
    assert cap.batch_labels == ["uncond:0", "cond:0"]  # the negative prompt's rows first
    cond, neg = cap.layout[1], cap.layout[0]
    assert cond.words == ["a", "red", "cat", "on", "a", "blue", "sofa"]
    n_prompt = cond.segments.count("prompt")  # "sofa" is three pieces of the offline tokenizer
    assert cond.segments == ["prompt"] * n_prompt + ["prompt_special"] + ["padding"] * (12 - n_prompt - 1)
    assert [cond.words[cond.word_index[k]] for k in range(n_prompt)][-3:] == ["sofa"] * 3
    assert neg.segments == ["prompt_special"] + ["padding"] * 11 and neg.words == []
    assert cap.model["query_grid"] == [16, 16] and cap.maps.shape[-2:] == (256, 12)
    assert cap.model["adapter"] == "pixart" and cap.model["vae_scale_factor"] == 8
    assert "256 patches (16 × 16)" in repr(cap) and "256 patches (16 × 16)" in cap._repr_html_()
    # the pipeline's mask is honoured: padding gets nothing, </s> of the empty negative prompt gets everything
    assert float(cap.maps[..., n_prompt + 1 :].abs().max()) == 0.0
    assert torch.allclose(cap.maps[:, :, 0, ..., 0], torch.ones(()), atol=1e-6)
    # one output per prompt repeated in place; no guidance: one row per image
    _, cap2 = _generate(pipe, al.capture(pipe), num_images_per_prompt=2)
    assert cap2.batch_labels == ["uncond:0.0", "uncond:0.1", "cond:0.0", "cond:0.1"]
    _, cap3 = _generate(pipe, al.capture(pipe), guidance_scale=1.0, num_images_per_prompt=2)
    assert cap3.batch_labels == ["cond:0.0", "cond:0.1"] and cap3.layout.known


def test_embeddings_passed_in_leave_the_layout_unknown(pipe):
    emb, mask, neg, neg_mask = pipe.encode_prompt("a red cat", max_sequence_length=12)
    kw = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None)
    kw.update(negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask)
    _, cap = _generate(pipe, al.capture(pipe), prompt=None, **kw)
    assert not cap.layout.known and "layout unknown" in cap.meta["layout_warning"]
    assert cap.batch_labels == ["cond:0", "cond:1"] and cap.meta["key_mask"] is True  # the mask is still read


def test_pipeline_outputs_are_bitwise_identical_and_no_hooks_remain(pipe, run):
    plain = _generate(pipe)
    seen, cap = run
    assert torch.equal(plain, seen) and cap.stats["entropy"].shape == (2, 2, 2, 4, 256)
    assert attnlens_hooks(pipe.transformer) == [] and attnlens_hooks(pipe.text_encoder) == []


@pytest.mark.parametrize("where", ["step", "layer1"])
def test_hooks_removed_after_an_exception(pipe, where):
    class Boom(RuntimeError):
        pass

    def boom(*a, **k):
        raise Boom

    tr = pipe.transformer
    target = tr if where == "step" else tr.transformer_blocks[1].attn2.to_k
    h = target.register_forward_hook(boom)
    try:
        with pytest.raises(Boom):
            _generate(pipe, al.capture(pipe, maps=True))
    finally:
        h.remove()
    assert attnlens_hooks(tr) == [] and attnlens_hooks(pipe.text_encoder) == []
    assert not hasattr(tr, "_attnlens_capture_active")


def test_analyze_has_the_family_mass_columns_and_the_capture_round_trips(run, tmp_path):
    _, cap = run
    df = al.analyze(cap)
    cols = [f"{s}_mass" for s in PIXART_SEGMENTS.names]
    assert all(c in df.columns for c in cols) and "lyric_mass" not in df.columns
    assert ((df[cols].sum(axis=1) - 1).abs() < 1e-5).all() and (df["padding_mass"] == 0).all()
    back = al.load_capture(cap.save(tmp_path / "pixart.attn"))
    assert back.layout.vocabulary == PIXART_SEGMENTS and back.model["query_grid"] == [16, 16]
    assert torch.equal(back.maps, cap.maps) and torch.equal(back.stats["mass"], cap.stats["mass"])
    a = al.plot.token_heatmap_data(back, words=["cat"])
    b = al.plot.token_heatmap_data(cap, words=["cat"])
    assert np.array_equal(a.values, b.values)


# --------------------------------------------------------------------------------------------- the heatmaps
def test_token_heatmap_data_sums_a_words_pieces_and_averages_layers_heads_steps(run):
    _, cap = run
    item = cap.layout[1]
    sofa = [k for k in range(item.n_keys) if item.word_index[k] == 6]
    d = al.plot.token_heatmap_data(cap, words=["sofa", 1, "</s>", "A"], step="all", layers=None, heads=[1, 3])
    assert d.words == ["sofa", "red", "</s>", "A"] and d.batch == 1 and d.grid == (16, 16)
    assert d.keys[0] == tuple(sofa) and len(sofa) == 3 and d.keys[3] == (0, 4)  # both "a"s, case-insensitive
    P = cap.maps[:, :, 1][:, :, [1, 3]].double()  # [step, layer, head, patch, key]
    want = P[..., sofa].sum(-1).mean(dim=(0, 1, 2)).reshape(16, 16).numpy()
    assert np.abs(d.values[0] - want).max() < 1e-12
    eos = item.segments.index("prompt_special")
    want_eos = P[..., eos].mean(dim=(0, 1, 2)).reshape(16, 16).numpy()
    assert np.abs(d.values[2] - want_eos).max() < 1e-12
    every = al.plot.token_heatmap_data(cap, step=-1, layers=0, heads=0)  # every word, one map
    assert every.words == item.words and every.steps == [1]
    total = cap.maps[-1, 0, 1, 0].double().sum(-1).reshape(16, 16).numpy()  # all keys: 1 per patch
    eos_map = al.plot.token_heatmap_data(cap, words=["</s>"], step=-1, layers=0, heads=0).values[0]
    per_word_keys = sum(len(k) for k in every.keys)
    assert per_word_keys == item.segments.count("prompt")  # each prompt token in one word
    # words (each token once, repeated words apart) + </s> = the whole distribution (padding masked)
    assert np.abs(every.values.sum(0) + eos_map - total).max() < 1e-6
    up = d.upsampled(64, 48)  # bilinear: convex combinations of neighbouring patches
    assert (
        up.shape == (4, 64, 48) and d.values[0].min() - 1e-7 <= up[0].min() <= up[0].max() <= d.values[0].max() + 1e-7
    )
    assert np.allclose(al.plot._image_data.upsample(np.full((1, 16, 16), 0.25), 64, 48), 0.25)
    with pytest.raises(ValueError, match="not a word or token"):
        al.plot.token_heatmap_data(cap, words=["dog"])


def test_token_heatmaps_refuse_a_capture_of_queries_in_time(run):
    _, cap = run
    in_time = dataclasses.replace(cap, model={k: v for k, v in cap.model.items() if k != "query_grid"})
    with pytest.raises(ValueError, match="not an image's patches"):
        al.plot.token_heatmap_data(in_time, words=["cat"])
    wrong = dataclasses.replace(cap, model={**cap.model, "query_grid": [8, 8]})
    with pytest.raises(ValueError, match="does not hold"):
        al.plot.token_heatmap_data(wrong, words=["cat"])


def test_planted_word_region_is_the_heatmaps_argmax_region():
    pipe = al.models.tiny_pixart_pipeline(seed=0)
    rows, cols = slice(4, 9), slice(9, 14)  # the planted region: rows 4..8, columns 9..13 of 16 x 16 patches
    latents = al.models.plant_word_region(pipe, "cat", (4, 9), (9, 14), alpha=2.0, beta=10.0, mark=10.0)
    assert latents.shape == (1, 4, 32, 32) and float(latents[0, 0, 8:18, 18:28].min()) == 10.0
    pos0 = pipe.transformer.pos_embed.pos_embed[0, :, 0].double()  # position embedding, channel 0, per patch
    with al.capture(pipe, maps=True, steps=[0]) as cap:
        image = pipe("a red cat", latents=latents, **{**RUN, "max_sequence_length": 8}).images[0]
    d = al.plot.token_heatmap_data(cap, words=["cat", "red"], step=0, layers=[0])
    planted = np.zeros((16, 16), dtype=bool)
    planted[rows, cols] = True
    r, c = d.argmax()[0]
    assert planted[r, c]
    assert np.array_equal(d.values[0] > 0.5, planted)  # the hot region is exactly the planted one
    # the numbers themselves, in closed form: logit z with "cat", 0 with the 3 other attended keys (a, red, </s>)
    z = 2.0 * (10.0 * torch.as_tensor(planted.reshape(-1), dtype=torch.float64) + pos0) - 10.0
    want = (z.exp() / (z.exp() + 3)).reshape(16, 16).numpy()
    assert np.abs(d.values[0] - want).max() < 1e-5
    assert np.abs(d.values[1] - (1 - want) / 3).max() < 1e-5
    up = d.upsampled(*image.size[::-1])  # 256 x 256 pixels: 16 per patch
    y, x = np.unravel_index(up[0].argmax(), up[0].shape)
    assert planted[y // 16, x // 16]
    fig = al.plot.token_heatmaps(cap, image, words=["cat", "red"], step=0, layers=[0])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", f"cat  ({d.mass[0]:.2f})", f"red  ({d.mass[1]:.2f})"]
    assert fig.axes[1].images[-1].get_array().shape == (256, 256)
    with pytest.raises(ValueError, match="3 tokens"):
        al.models.plant_word_region(pipe, "sofa", (0, 1), (0, 1))
