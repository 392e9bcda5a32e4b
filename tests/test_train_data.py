"""Data builders (empty-lyrics guard, folder / jsonl / GTSinger / latents), VAE preprocessing with cache, flow
matching conventions against the pipeline's scheduler, and conditioning equal to what the pipeline feeds the DiT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import attnlens.captures  # noqa: F401  (import order)
from attnlens.train.data import AudioLyricsDataset, DatasetError, gtsinger_words, prepare, sung_words
from attnlens.train.flow import noisy_latents, sample_times, turbo_timesteps, velocity_target

torch.set_num_threads(1)


def _write(folder, name, lyrics, caption="pop", sr=44100, seconds=0.5):
    t = np.arange(int(sr * seconds)) / sr
    sf.write(folder / f"{name}.wav", 0.1 * np.sin(2 * np.pi * 220 * t), sr)
    (folder / f"{name}.lyrics.txt").write_text(lyrics)
    (folder / f"{name}.caption.txt").write_text(caption)


def test_sung_words():
    assert sung_words("[verse]\n[chorus]\n") == []
    assert sung_words("") == [] and sung_words(None) == []
    assert sung_words("[verse]\nhello, world!\n[outro] ...") == ["hello,", "world!"]


def test_rejects_folder_of_only_structure_tags(tmp_path):
    for i in range(3):
        _write(tmp_path, f"s{i}", "[verse]\n")
    with pytest.raises(DatasetError) as e:
        AudioLyricsDataset.from_folder(str(tmp_path))
    msg = str(e.value)
    assert "3 of 3 samples have no sung words" in msg and "[verse]" in msg and "allow_empty_lyrics" in msg
    ds = AudioLyricsDataset.from_folder(str(tmp_path), allow_empty_lyrics=True)
    assert len(ds) == 3 and ds.n_without_words == 3


def test_rejects_some_missing_lyrics_and_counts_them(tmp_path):
    _write(tmp_path, "a", "[verse]\nsing it loud")
    _write(tmp_path, "b", "[chorus]")
    _write(tmp_path, "c", "la la")
    (tmp_path / "c.lyrics.txt").unlink()  # missing lyrics file
    with pytest.raises(DatasetError, match=r"2 of 3 samples have no sung words.*b, c"):
        AudioLyricsDataset.from_folder(str(tmp_path))


def test_metadata_jsonl_and_tags(tmp_path):
    _write(tmp_path, "x", "unused")
    rows = [{"audio": "x.wav", "lyrics": "[verse]\nhello", "caption": "rock", "tags": ["male", "live"]}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = AudioLyricsDataset.from_folder(str(tmp_path))
    assert ds[0].caption == "rock, male, live" and ds[0].lyrics == "[verse]\nhello" and ds[0].key == "x"


def test_gtsinger_reader(tmp_path):
    seg = tmp_path / "English" / "EN-Alto-1" / "Breathy" / "Song" / "Breathy_Group"
    seg.mkdir(parents=True)
    sf.write(seg / "0000.wav", np.zeros(4800), 48000)
    words = [
        {"word": "<SP>", "start_time": 0.0, "end_time": 0.3},
        {"word": "hello", "start_time": 0.3, "end_time": 0.6},
        {"word": "hello", "start_time": 0.6, "end_time": 0.8},  # same word over a second note
        {"word": "<AP>", "start_time": 0.8, "end_time": 0.9},
        {"word": "breath", "start_time": 0.9, "end_time": 1.0},
        {"word": "world", "start_time": 1.0, "end_time": 1.5},
    ]
    (seg / "0000.json").write_text(json.dumps(words))
    assert gtsinger_words(str(seg / "0000.json")) == [
        {"word": "hello", "start": 0.3, "end": 0.8},
        {"word": "world", "start": 1.0, "end": 1.5},
    ]
    ds = AudioLyricsDataset.from_gtsinger(str(tmp_path / "English"))
    s = ds[0]
    assert s.lyrics == "hello world" and s.language == "en" and s.caption == "english alto, breathy, solo vocal"
    assert s.key == "EN-Alto-1/Breathy/Song/Breathy_Group/0000"


def test_turbo_grid_and_sign_convention():
    import attnlens as al

    grid = turbo_timesteps(8, 3.0)
    ref = [1.0, 0.9545454545, 0.9, 0.8333333333, 0.75, 0.6428571429, 0.5, 0.3]
    assert np.allclose(grid.numpy(), ref, atol=1e-9)
    t = sample_times(1000, torch.Generator().manual_seed(0), "turbo")
    assert set(np.round(t.numpy(), 6)) <= set(np.round(grid.float().numpy(), 6)) and len(set(t.tolist())) == 8
    # the pipeline's Euler step with the true velocity moves exactly along x_t = t·noise + (1-t)·x0
    pipe = al.models.tiny_pipeline.__wrapped__ if hasattr(al.models.tiny_pipeline, "__wrapped__") else None
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    sched.set_timesteps(sigmas=grid.tolist())
    g = torch.Generator().manual_seed(1)
    x0, noise = (
        torch.randn(1, 6, 4, generator=g, dtype=torch.float64),
        torch.randn(1, 6, 4, generator=g, dtype=torch.float64),
    )
    v = velocity_target(x0, noise)
    x = noisy_latents(x0, noise, torch.ones(1, dtype=torch.float64))
    for i, ts in enumerate(sched.timesteps):
        x = sched.step(v, ts, x, return_dict=False)[0]
        nxt = float(grid[i + 1]) if i + 1 < len(grid) else 0.0
        assert torch.allclose(x, noisy_latents(x0, noise, torch.tensor([nxt], dtype=torch.float64)), atol=1e-6)
    assert torch.allclose(x, x0, atol=1e-6)
    del pipe


@pytest.fixture(scope="module")
def pipe():
    import attnlens as al

    return al.models.tiny_pipeline(seed=0)


def test_conditioning_equals_what_the_pipeline_feeds_the_dit(pipe):
    from attnlens.train.conditioning import context_latents, encode_condition

    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("ehs", kwargs["encoder_hidden_states"].clone())
        seen.setdefault("ctx", kwargs["context_latents"].clone())

    h = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(prompt="warm folk", lyrics="[verse]\nwalking down the road", audio_duration=2.0,
             num_inference_steps=1, guidance_scale=1.0, output_type="latent")  # fmt: skip
    finally:
        h.remove()
    cond = encode_condition(pipe, ["warm folk"], ["[verse]\nwalking down the road"], 2.0)
    assert torch.equal(cond.encoder_hidden_states, seen["ehs"])
    assert torch.equal(context_latents(pipe, 1, 50, "cpu", torch.float32), seen["ctx"])
    words = [cond.layout[0].tokens[p].strip() for p in cond.lyric_positions()[0]]
    assert "".join(words) == "walkingdowntheroad"


def test_prepare_encodes_with_vae_and_caches(pipe, tmp_path, monkeypatch):
    from diffusers import AutoencoderOobleck

    # a VAE whose latent width matches the tiny DiT (Oobleck latents = encoder_hidden_size / 2 channels)
    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=16, downsampling_ratios=[2, 4, 4, 6, 10],
                             channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4, decoder_input_channels=8,
                             audio_channels=2, sampling_rate=48000).eval()  # fmt: skip
    monkeypatch.setattr(pipe, "vae", vae)
    data = tmp_path / "data"
    data.mkdir()
    _write(data, "a", "[verse]\nhello world", sr=44100, seconds=0.8)  # resampled to 48 kHz: 38400 samples
    ds = AudioLyricsDataset.from_folder(str(data))
    p1 = prepare(pipe, ds, cache_dir=str(tmp_path / "cache"))
    lat = p1[0].latents
    assert lat.shape == (20, 8)  # 38400 / 1920 latent frames, acoustic_dim 8
    assert p1[0].audio_duration == pytest.approx(0.8)

    def boom(*a, **k):
        raise AssertionError("cache not used")

    monkeypatch.setattr(vae, "encode", boom)
    monkeypatch.setattr(pipe.condition_encoder, "forward", boom)
    p2 = prepare(pipe, ds, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(p2[0].latents, lat)
    assert torch.equal(p2[0].encoder_hidden_states, p1[0].encoder_hidden_states)
    assert p2[0].lyric_positions == p1[0].lyric_positions and len(p1[0].lyric_positions) >= 2


def test_latents_dataset_validation():
    with pytest.raises(DatasetError, match=r"\[T, C\]"):
        AudioLyricsDataset.from_latents([{"latents": torch.zeros(2, 3, 4), "lyrics": "a b", "caption": "c"}])
    with pytest.raises(DatasetError, match="1 of 1 samples have no sung words"):
        AudioLyricsDataset.from_latents([{"latents": np.zeros((4, 8)), "lyrics": "[verse]", "caption": "c"}])
