"""The tiny offline Stable Audio pipeline (time base, sequence lengths, guidance batch, T5-style tokenizer), and
captures of it: the layout recorded from the T5 tokens, CFG rows."""

from __future__ import annotations

import warnings

import pytest
import torch

import attnlens as al
from attnlens.adapters.stable_audio import STABLE_AUDIO_SEGMENTS
from attnlens.models.t5_tokenizer import t5_style_tokenizer
from attnlens.taps.hooks import attnlens_hooks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde's Brownian interval notes

KW = dict(audio_end_in_s=2.0, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    return al.models.tiny_stable_audio_pipeline(seed=0)


def _run(pipe, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**{**KW, **kw}, generator=torch.Generator().manual_seed(0), output_type="latent").audios


def test_builder_is_offline_deterministic_and_at_the_real_rate(pipe):
    again = al.models.tiny_stable_audio_pipeline(seed=0)
    other = al.models.tiny_stable_audio_pipeline(seed=1)
    w = pipe.transformer.transformer_blocks[0].attn2.to_k.weight
    assert torch.equal(w, again.transformer.transformer_blocks[0].attn2.to_k.weight)
    assert not torch.equal(w, other.transformer.transformer_blocks[0].attn2.to_k.weight)
    assert pipe.vae.hop_length == 2048 and pipe.vae.config.sampling_rate == 44100
    fam = al.adapters.resolve(pipe)
    assert fam.name == "stable-audio" and fam.frame_rate == pytest.approx(44100 / 2048)
    assert (fam.facts.heads, fam.facts.kv_heads, fam.facts.head_dim) == (4, 2, 16)
    assert torch.equal(_run(pipe, prompt="warm piano"), _run(again, prompt="warm piano"))
    tok = pipe.tokenizer
    enc = tok("warm piano", padding="max_length", max_length=tok.model_max_length, return_offsets_mapping=True)
    n = sum(enc.attention_mask)
    assert enc.input_ids[n - 1] == tok.eos_token_id and enc.input_ids[n:] == [tok.pad_token_id] * (16 - n)
    assert [("warm piano")[s:e] for s, e in enc.offset_mapping[: n - 1]] == [
        tok.decode([i]) for i in enc.input_ids[: n - 1]
    ]


def test_capture_of_the_pipeline_records_the_prompt_layout(pipe):
    with al.capture(pipe, maps=True) as cap:
        _run(pipe, prompt="warm piano night", guidance_scale=1.0)
    assert cap.layout.source == "pipeline" and cap.layout.vocabulary == STABLE_AUDIO_SEGMENTS
    it = cap.layout[0]
    assert it.n_keys == 16 + 2 and it.words == ["warm", "piano", "night"]
    L = it.lyric_positions()
    assert [it.tokens[k] for k in L] == ["warm", "piano", "night"]  # the prompt's tokens, labelled in order
    assert sorted({it.word_index[k] for k in L}) == [0, 1, 2]
    assert it.segments[-2:] == ["seconds_start", "seconds_total"] and "prompt_special" in it.segments
    assert it.segments.count("padding") == 16 - sum(s in ("prompt", "prompt_special") for s in it.segments)
    assert cap.batch_labels == ["cond:0"] and cap.n_frames == 64 and len(cap.steps) == 3
    assert torch.allclose(cap.stats["mass"].sum(-1), torch.ones(()), atol=1e-5)
    # the padding keys are in the softmax (the pipeline passes no mask) and take real mass
    assert float(cap.stats["mass"][..., STABLE_AUDIO_SEGMENTS.code("padding")].mean()) > 0.05
    df = al.analyze(cap)
    assert {"prompt_mass", "padding_mass", "seconds_total_mass"} <= set(df.columns)
    assert attnlens_hooks(pipe.transformer) == []


def test_guidance_rows_are_labelled_unconditional_first(pipe):
    with al.capture(pipe) as cap:
        _run(pipe, prompt="warm piano", guidance_scale=3.0)
    assert cap.batch_labels == ["uncond:0", "cond:0"]
    assert set(cap.layout[0].segments) == {"null"}  # no negative prompt: a zeroed condition
    assert cap.layout[1].words == ["warm", "piano"]
    with al.capture(pipe) as neg:
        _run(pipe, prompt="warm piano", negative_prompt="harsh noise", guidance_scale=3.0)
    assert neg.batch_labels == ["uncond:0", "cond:0"]
    assert neg.layout[0].words == ["harsh", "noise"] and neg.layout[1].words == ["warm", "piano"]


def test_capture_leaves_the_pipeline_output_bitwise_identical(pipe):
    plain = _run(pipe, prompt="soft rain", guidance_scale=2.0)
    with al.capture(pipe, maps=True):
        seen = _run(pipe, prompt="soft rain", guidance_scale=2.0)
    assert torch.equal(plain, seen)


def test_t5_style_tokenizer_ids_padding_and_offsets():
    tok = t5_style_tokenizer(16)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2) and tok.model_max_length == 16
    text = "warm piano, Xylophonic dreams"
    enc = tok(text, return_offsets_mapping=True)
    ids, spans, pieces = enc.input_ids, enc.offset_mapping, tok.convert_ids_to_tokens(enc.input_ids)
    assert ids[-1] == 1 and 1 not in ids[:-1] and pieces[:2] == ["▁warm", "▁piano"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    covered = set()
    for k, (piece, (s, e)) in enumerate(zip(pieces[:-1], spans[:-1])):
        if piece == "▁":  # a lone word mark (a rare word follows in pieces): decodes to nothing, spans its first char
            assert tok.decode([ids[k]]) == "" and (s, e) == tuple(spans[k + 1])
            continue
        assert text[s:e] == piece.lstrip("▁") == tok.decode([ids[k]])  # offsets exclude the space, decoding reads
        covered |= set(range(s, e))
    assert covered == {i for i, ch in enumerate(text) if ch != " "}  # every character once
    assert tok("é").input_ids[-2] == tok.unk_token_id
    pad = tok(["warm piano", " ".join(["sea"] * 30)], padding="max_length", truncation=True, max_length=16)
    assert pad.input_ids[0] == [tok.convert_tokens_to_ids("▁warm"), tok.convert_tokens_to_ids("▁piano"), 1] + [0] * 13
    assert pad.attention_mask[0] == [1, 1, 1] + [0] * 13
    assert len(pad.input_ids[1]) == 16 and pad.input_ids[1][-1] == 1 and all(pad.attention_mask[1])


def test_time_base_sequence_lengths_and_guidance_batch(pipe):
    state = torch.random.get_rng_state()
    small = al.models.tiny_stable_audio_pipeline(seed=3, config=al.models.TinyStableAudioConfig(sample_size=32))
    assert torch.equal(torch.random.get_rng_state(), state)  # weights drawn without touching the global RNG
    assert small.transformer.config.sample_size == 32 and pipe.transformer.config.sample_size == 64
    assert pipe.vae.config.sampling_rate / pipe.vae.hop_length == pytest.approx(21.533, abs=1e-3)
    assert pipe.vae.encode(torch.zeros(1, 2, 4 * 2048)).latent_dist.mean.shape == (1, 4, 4)  # what the DiT takes
    seen = []
    hooks = [
        pipe.transformer.register_forward_pre_hook(lambda m, a: seen.append(("dit", tuple(a[0].shape)))),
        pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
            lambda m, a, kw: seen.append(("block", tuple(kw["hidden_states"].shape))), with_kwargs=True
        ),
        pipe.transformer.transformer_blocks[0].attn2.register_forward_pre_hook(
            lambda m, a, kw: seen.append(("keys", tuple(kw["encoder_hidden_states"].shape))), with_kwargs=True
        ),
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            audio = pipe(prompt="warm piano", audio_end_in_s=2.0, num_inference_steps=2, guidance_scale=1.0).audios
        plain = list(seen)
        seen.clear()
        _run(pipe, prompt="warm piano", negative_prompt="noise", guidance_scale=3.0, num_inference_steps=2)
    finally:
        for h in hooks:
            h.remove()
    assert audio.shape == (1, 2, 2 * 44100)  # decoded at 44.1 kHz, cut to audio_end_in_s
    # one query per latent plus the prepended global (timing + timestep) token; 16 text keys + 2 timing keys
    assert plain == [("dit", (1, 4, 64)), ("block", (1, 65, 64)), ("keys", (1, 18, 32))] * 2
    assert seen == [("dit", (2, 4, 64)), ("block", (2, 65, 64)), ("keys", (2, 18, 32))] * 2  # guidance: batch x 2


def test_an_unknown_character_is_a_prompt_token_not_a_special_one(pipe):
    from attnlens.adapters.stable_audio import prompt_item

    tok = pipe.tokenizer
    enc = tok("café piano", padding="max_length", max_length=tok.model_max_length)
    assert tok.unk_token_id in enc.input_ids
    item = prompt_item(tok, enc.input_ids, enc.attention_mask)
    unk_at = enc.input_ids.index(tok.unk_token_id)
    assert item.segments[unk_at] == "prompt" and item.segments.count("prompt_special") == 1  # only </s>
