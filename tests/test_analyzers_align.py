"""al.align and al.lyrics_alignment_score on captures with planted staircases; the tiny pipeline end to end."""

import numpy as np
import pytest

import attnlens as al
from attnlens.analyzers.alignment_score import scored_rows
from attnlens.analyzers.synthetic import capture_from_maps, staircase_maps, synthetic_layout
from attnlens.captures.result import NotCapturedError

WORDS = [0, 7, 15, 26, 31, 44]  # 5 words over 44 frames, uneven


def _cap(keep_maps=True):
    it = synthetic_layout()
    P = staircase_maps(it, WORDS)
    noisy = P * np.random.default_rng(0).uniform(0.8, 1.2, size=P.shape)
    noisy /= noisy.sum(-1, keepdims=True)
    flat = np.full_like(P, 1 / P.shape[1])
    maps = np.stack([P, noisy, flat])[None, None, None]  # [1, 1, 1, 3 heads, F, K]
    return capture_from_maps(maps, [it], layers=[5], keep_maps=keep_maps)


def test_align_planted_words_exact_to_one_frame():
    cap = _cap()
    aln = al.align(cap, heads=[(5, 0), (5, 1)])
    assert [w.word for w in aln.words] == ["walking", "down", "the", "morning", "road"]
    starts = np.array([w.start for w in aln.words]) * 12.5
    assert np.all(np.abs(starts - np.array(WORDS[:-1])) <= 1)
    assert aln.words[-1].end == 44 / 12.5
    assert [ln.text for ln in aln.lines] == ["walking down the", "morning road"]
    assert aln.lines[1].start == aln.words[3].start
    lrc = aln.lrc().splitlines()
    assert lrc[0] == "[00:00.00]walking down the" and lrc[1].endswith("]morning road")
    assert list(aln.to_dataframe().columns) == ["word", "start", "end", "line", "unit"]
    # heads as a dict or as the find_alignment_heads frame give the same answer
    assert al.align(cap, heads={5: [0, 1]}).words == aln.words
    top = al.find_alignment_heads(cap, top_k=2)
    assert sorted(top.attrs["heads"]) == [(5, 0), (5, 1)]
    assert al.align(cap, heads=top).words == aln.words
    # against ground truth: the timing error is within one frame (80 ms)
    true = [(w.word, WORDS[i] / 12.5, WORDS[i + 1] / 12.5) for i, w in enumerate(aln.words)]
    te = al.metrics.timing_error(aln.words, true)
    assert te.within_100 == 1.0 and np.all(np.abs(te.error_ms) <= 80 + 1e-9)


def test_align_needs_maps_and_words():
    cap = _cap(keep_maps=False)
    with pytest.raises(NotCapturedError, match=r"al.capture\(pipe, layers=\[5\], heads=\[0\], maps=True\)"):
        al.align(cap, heads=[(5, 0)])
    with pytest.raises(NotCapturedError, match="layer 4 was not kept"):
        al.align(_cap(), heads=[(4, 0)])
    from attnlens.captures.layout import ItemLayout

    bare = ItemLayout.from_segment_lengths(lyric=4, caption=2)
    P = np.full((1, 1, 1, 1, 10, 6), 1 / 6)
    with pytest.raises(ValueError, match="no word information"):
        al.align(capture_from_maps(P, [bare]), heads=[(0, 0)])


def test_aas_on_capture_matches_array_form():
    cap = _cap()
    it = cap.layout[0]
    pos, tags = scored_rows(it)
    # ACE-Step's rows: [ verse] tag tokens, sung tokens and newlines; not the header nor <|endoftext|>
    assert [it.tokens[i] for i in pos][:3] == ["[", "verse]", " wal"] and tags.tolist()[:3] == [True, True, False]
    assert "\n" in [it.tokens[i] for i in pos] and "<|endoftext|>" not in [it.tokens[i] for i in pos]
    r = al.lyrics_alignment_score(cap, heads={5: [0, 1]})
    maps = cap.maps[0, 0, 0, :2][:, :, pos].transpose(1, 2).numpy()
    r2 = al.metrics.lyrics_alignment_score(maps, tags)
    assert r.score == r2.score and r.confidence == r2.confidence
    assert 0 <= r.score <= 1
    # monotonicity by hand: centroids of scored rows over energies > 0.01; the newline rows (no peak) sit mid-song
    E = r.energy.astype(np.float64)
    cents = []
    for i in np.flatnonzero(~tags):
        w = np.where(E[i] > 0.01, E[i], 0.0)
        if w.sum() > 1e-9:
            cents.append((w * np.arange(E.shape[1])).sum() / w.sum())
    ok = [b >= a - 9 for a, b in zip(cents, cents[1:])]
    assert r.monotonicity == sum(ok) / len(ok) and r.monotonicity < 1
    # newline rows carry no peak: coverage is the share of sung rows among scored rows
    n_sung, n_scored = len(it.lyric_positions()), int((~tags).sum())
    assert r.coverage == pytest.approx(n_sung / n_scored)
    with pytest.raises(NotCapturedError, match="layer 2 was not kept"):
        al.lyrics_alignment_score(cap)  # ACE-Step's default heads live in layers 2-6


def test_tiny_pipeline_end_to_end():
    pytest.importorskip("attnlens.captures.session", reason="capture core not available")
    pipe = al.models.tiny_pipeline(seed=0)
    with al.capture(pipe, layers=[0, 1], heads=[0, 1, 2], maps=True) as cap:
        pipe(prompt="folk", lyrics="[verse]\nwalking down the road", audio_duration=2.0, num_inference_steps=2,
             guidance_scale=1.0, output_type="latent")  # fmt: skip
    df = al.analyze(cap)
    assert len(df) == len(cap.steps) * 2 * 3
    assert not df.select_dtypes("number").isna().any().any()
    masses = df[["lyric_mass", "lyric_meta_mass", "timbre_mass", "caption_mass", "padding_mass"]].sum(1)
    assert np.allclose(masses, 1.0, atol=1e-4)
    # the capture's own statistics agree with the reference frame_stats on its maps
    maps_only = capture_from_maps(cap.maps.numpy(), cap.layout, layers=cap.layers, heads=cap.heads,
                                  steps=cap.steps, timesteps=cap.timesteps, keep_maps=False)  # fmt: skip
    for k in ("entropy", "mass", "entropy_lyric"):
        assert np.allclose(cap.stats[k].numpy(), maps_only.stats[k].numpy(), atol=1e-4), k
    agree = (cap.stats["lyric_argmax"].numpy() == maps_only.stats["lyric_argmax"].numpy()).mean()
    assert agree > 0.99
    aln = al.align(cap, heads=[(0, 0), (1, 2)])
    assert [w.word for w in aln.words] == ["walking", "down", "the", "road"]
    assert all(a.start <= b.start for a, b in zip(aln.words, aln.words[1:]))
    r = al.lyrics_alignment_score(cap, heads={0: [0], 1: [1, 2]})
    assert 0 <= r.score <= 1


@pytest.mark.slow
def test_acestep_protocol_on_tiny_pipeline():
    pytest.importorskip("attnlens.captures.session", reason="capture core not available")
    import torch

    from attnlens.analyzers.alignment_score import acestep_protocol_score

    pipe = al.models.tiny_pipeline(seed=0)
    kw = dict(prompt="folk", lyrics="[verse]\nwalking down the road")
    x0 = pipe(**kw, audio_duration=2.0, num_inference_steps=2, guidance_scale=1.0, output_type="latent").audios
    r = acestep_protocol_score(pipe, x0, **kw, num_inference_steps=8, seed=42)
    # the same protocol written out: x_t = t noise + (1 - t) x0 at t = 1/8, one step, default heads
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(42))
    with al.capture(pipe, layers=[2, 3, 4, 5, 6], heads=[3, 6, 8, 9, 10, 11], maps=True) as cap:
        pipe(**kw, latents=0.125 * noise + 0.875 * x0, timesteps=[0.125], guidance_scale=1.0, output_type="latent",
             audio_duration=2.0)  # fmt: skip
    assert cap.timesteps == [0.125]
    assert r.score == al.lyrics_alignment_score(cap).score and 0 <= r.score <= 1
