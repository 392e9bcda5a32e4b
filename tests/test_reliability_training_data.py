"""Training data that cannot be used: every case is a ``DatasetError`` naming the file (and the line), never a raw
library error and never silently non-finite latents.

- float audio with NaN / Inf samples; audio too short for the VAE (1 and 100 samples, one short of the minimum);
- ``.latents.safetensors`` that are damaged, a pickle, or hold a tensor of the wrong kind; a ``metadata.jsonl`` row
  that is not an object or whose fields have the wrong JSON type; non-UTF-8 text files; a damaged cache entry is
  encoded again, with a warning;
- fuzzing (hypothesis, derandomized, ``max_examples`` explicit: 100 per strategy by default, 2000 with ``-m slow``):
  random ``metadata.jsonl`` lines, random or mutated sample files beside them, mutated float WAV files. Allowed
  outcomes: the dataset builds (or the audio loads, finite) or ``DatasetError`` with a message; each under a 10 s
  alarm.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_reliability_files import _fuzz, alarm, json_values, mutate

import attnlens.captures  # noqa: F401  (import order)
from attnlens.train.data import AudioLyricsDataset, DatasetError, gtsinger_words, load_audio, prepare

FUZZ_DEFAULT, FUZZ_SLOW = 100, 2000
SR = 48000


@pytest.fixture(scope="module")
def pipe():
    """The tiny pipeline with a VAE whose latents are as wide as its DiT's input (hop 1920 samples at 48 kHz)."""
    from diffusers import AutoencoderOobleck

    import attnlens as al

    p = al.models.tiny_pipeline(seed=0)
    torch.manual_seed(0)
    p.vae = AutoencoderOobleck(encoder_hidden_size=16, downsampling_ratios=[2, 4, 4, 6, 10],
                               channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4, decoder_input_channels=8,
                               audio_channels=2, sampling_rate=SR).eval()  # fmt: skip
    return p


def _sample(folder, name, audio, lyrics="[verse]\nhello world", caption="pop", subtype="FLOAT"):
    sf.write(folder / f"{name}.wav", np.asarray(audio, dtype=np.float32), SR, subtype=subtype)
    (folder / f"{name}.lyrics.txt").write_text(lyrics)
    (folder / f"{name}.caption.txt").write_text(caption)
    return folder / f"{name}.wav"


def _tone(n):
    return 0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / SR)


# ------------------------------------------------------------------------------------------------ audio


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_refused(pipe, tmp_path, bad):
    x = _tone(SR)
    x[1234] = bad
    wav = _sample(tmp_path, "a", x)
    ds = AudioLyricsDataset.from_folder(str(tmp_path))
    with pytest.raises(DatasetError, match=rf"{wav} holds 1 NaN/Inf sample value\(s\), the first at sample 1234"):
        prepare(pipe, ds)


@pytest.mark.parametrize("n", [1, 100, 3839])
def test_too_short_audio_names_the_minimum(pipe, tmp_path, n):
    wav = _sample(tmp_path, "a", _tone(n))
    ds = AudioLyricsDataset.from_folder(str(tmp_path))
    with pytest.raises(
        DatasetError, match=rf"{wav} is too short: {n} samples at 48000 Hz .*the minimum is 3840 samples \(0.08 s"
    ):
        prepare(pipe, ds)


def test_shortest_audio_that_encodes(pipe, tmp_path):
    _sample(tmp_path, "a", _tone(3840))
    out = prepare(pipe, AudioLyricsDataset.from_folder(str(tmp_path)))
    assert out[0].latents.shape == (2, 8) and torch.isfinite(out[0].latents).all()


def test_damaged_cache_entry_is_encoded_again(pipe, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    _sample(data, "a", _tone(4000))
    ds = AudioLyricsDataset.from_folder(str(data))
    first = prepare(pipe, ds, cache_dir=str(cache))
    for f in cache.rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:20])  # truncated
    with pytest.warns(UserWarning, match="cannot be read .*computing it again"):
        again = prepare(pipe, ds, cache_dir=str(cache))
    assert torch.equal(again[0].latents, first[0].latents)
    assert torch.equal(again[0].encoder_hidden_states, first[0].encoder_hidden_states)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: read without a warning
        prepare(pipe, ds, cache_dir=str(cache))


# ------------------------------------------------------------------------------------------ sample files


def _latents_file(path, tensors=None):
    save_file(tensors or {"latents": torch.randn(6, 8)}, str(path))
    return path


def _meta(folder, *lines):
    (folder / "metadata.jsonl").write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    return folder / "metadata.jsonl"


def _row(**kw):
    return json.dumps({"audio": "a.wav", "lyrics": "hello there", "caption": "pop", **kw})


def case_latents_damaged(d):
    p = _latents_file(d / "a.latents.safetensors")
    p.write_bytes(p.read_bytes()[:-9])
    (d / "a.caption.txt").write_text("pop")
    return rf"{p} is not a readable safetensors file"


def case_latents_random_bytes(d):
    p = d / "a.latents.safetensors"
    p.write_bytes(b"\x07" * 40)
    (d / "a.caption.txt").write_text("pop")
    return rf"{p} is not a readable safetensors file"


def case_latents_pickle(d):
    p = d / "a.latents.safetensors"
    p.write_bytes(pickle.dumps({"latents": np.zeros((4, 8))}))
    (d / "a.caption.txt").write_text("pop")
    return rf"{p} looks like a pickle"


def case_latents_torch_save(d):
    p = d / "a.latents.safetensors"
    torch.save({"latents": torch.zeros(4, 8)}, p)
    (d / "a.caption.txt").write_text("pop")
    return rf"{p} looks like a pickle"


def case_latents_int(d):
    p = _latents_file(d / "a.latents.safetensors", {"latents": torch.zeros(6, 8, dtype=torch.int32)})
    (d / "a.caption.txt").write_text("pop")
    return rf"{p}: 'latents' is torch.int32 of shape \(6, 8\); expected float \[T, C\]"


def case_lyrics_not_utf8(d):
    _sample(d, "a", _tone(100))
    (d / "a.lyrics.txt").write_bytes(b"hello \xff\xfe world")
    return rf"{d / 'a.lyrics.txt'} is not UTF-8 text \(byte 6"


def case_caption_not_utf8(d):
    _sample(d, "a", _tone(100))
    (d / "a.caption.txt").write_bytes(b"\xc3(")
    return rf"{d / 'a.caption.txt'} is not UTF-8 text"


def case_row_is_a_list(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, _row(), '["a.wav", "hello", "pop"]')
    return rf"{m} line 2: expected a JSON object with audio, lyrics, caption; got a list"


def case_lyrics_a_number(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, _row(lyrics=123))
    return rf"{m} line 1: 'lyrics' must be a string or null; got a number 123"


def case_caption_an_object(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, "", _row(caption={"genre": "pop"}))
    return rf"{m} line 2: 'caption' must be a string; got an object"


def case_audio_a_number(d):
    m = _meta(d, _row(audio=7))
    return rf"{m} line 1: 'audio' must be a string \(a path\); got a number 7"


def case_tags_an_object(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, _row(tags={"a": 1}))
    return rf"{m} line 1: 'tags' must be a string or a list of strings"


def case_language_a_list(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, _row(language=["en"]))
    return rf"{m} line 1: 'language' must be a language code"


def case_metadata_not_utf8(d):
    _sample(d, "a", _tone(100))
    m = _meta(d, _row(), b'{"audio": "a.wav", "caption": "caf\xe9"}')
    return rf"{m} line 2 is not UTF-8 text"


def case_metadata_audio_is_a_folder(d):
    (d / "a.wav").mkdir()
    m = _meta(d, _row())
    return rf"{d / 'a.wav'} \(named by {m} line 1\) is not a regular file"


def case_metadata_deeply_nested(d):
    m = _meta(d, "[" * 100_000)
    return rf"{m} line 1: not JSON"


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sample_files(tmp_path, case):
    message = CASES[case](tmp_path)
    with pytest.raises(DatasetError, match=message):
        AudioLyricsDataset.from_folder(str(tmp_path))


def test_gtsinger_json_not_json_or_utf8(tmp_path):
    p = tmp_path / "0000.json"
    p.write_bytes(b'[{"word": "h\xe9"}]')
    with pytest.raises(DatasetError, match=rf"{p} is not UTF-8 text"):
        gtsinger_words(str(p))
    p.write_text('[{"word": "hello", "start_time": 0.1')
    with pytest.raises(DatasetError, match=rf"{p}: not JSON"):
        gtsinger_words(str(p))


# ------------------------------------------------------------------------------------------------ fuzzing

COUNTS: dict[str, list[int]] = {}

_keys = st.sampled_from(["audio", "lyrics", "caption", "tags", "language", "other"])
_field_values = st.one_of(
    json_values, st.sampled_from(["a.wav", "a.latents.safetensors", "missing.wav", "sub", "/dev/null", ""])
)
_rows = st.one_of(
    st.tuples(_keys, _field_values).map(lambda kv: _row(**{kv[0]: kv[1]}).encode()),  # one field changed
    st.dictionaries(_keys, _field_values, max_size=6).map(json.dumps).map(str.encode),
    json_values.map(json.dumps).map(str.encode),
    st.binary(max_size=40),
)


def _valid_folder(d):
    _sample(d, "a", _tone(100))
    _latents_file(d / "b.latents.safetensors")
    (d / "b.caption.txt").write_text("rock")
    (d / "b.lyrics.txt").write_text("la la la")
    (d / "sub").mkdir()


def _check_build(d, key):
    COUNTS.setdefault(key, [0, 0])
    with alarm(10), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = AudioLyricsDataset.from_folder(str(d))
        except DatasetError as e:
            assert str(e), "an error without a message"
            COUNTS[key][1] += 1
            return
    assert len(ds) >= 1
    COUNTS[key][0] += 1


def _fresh(tmp_path_factory, name):
    d = tmp_path_factory.mktemp(name)
    _valid_folder(d)
    return d


def _run_fuzz(n, strategy, tmp_path_factory):
    key = f"dataset:{strategy}"
    base = _fresh(tmp_path_factory, f"fuzz-{strategy}")
    valid_latents = (base / "b.latents.safetensors").read_bytes()
    wav = (base / "a.wav").read_bytes()

    if strategy == "metadata":  # random metadata.jsonl lines beside valid sample files

        @_fuzz(n)
        @given(st.lists(_rows, min_size=1, max_size=4))
        def run(lines):
            (base / "metadata.jsonl").write_bytes(b"\n".join(lines))
            _check_build(base, key)

    elif strategy == "files":  # random or mutated sample files, no metadata.jsonl

        @_fuzz(n)
        @given(
            st.sampled_from(["b.latents.safetensors", "b.lyrics.txt", "b.caption.txt", "a.lyrics.txt", "a.tags.txt"]),
            st.data(),
        )
        def run(name, data):
            old = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
            src = valid_latents if name.endswith(".safetensors") else old.get(name, b"la la")
            how = data.draw(st.sampled_from(["random", "mutate", "pickle"]))
            if how == "random":
                content = data.draw(st.binary(max_size=200))
            elif how == "mutate":
                content = mutate(src, data)
            else:
                content = pickle.dumps(data.draw(json_values))
            (base / name).write_bytes(content)
            try:
                _check_build(base, key)
            finally:
                for p in base.iterdir():
                    if p.is_file() and p.name not in old:
                        p.unlink()
                for k, v in old.items():
                    (base / k).write_bytes(v)

    else:  # mutated float WAV files through load_audio: finite audio or DatasetError

        @_fuzz(n)
        @given(st.data())
        def run(data):
            p = base / "fuzz.wav"
            p.write_bytes(mutate(wav, data))
            COUNTS.setdefault(key, [0, 0])
            with alarm(10):
                try:
                    x = load_audio(str(p), SR, 2)
                except DatasetError as e:
                    assert str(e)
                    COUNTS[key][1] += 1
                    return
            assert torch.isfinite(x).all() and x.shape[0] == 2
            COUNTS[key][0] += 1

    ok0, errors0 = COUNTS.get(key, [0, 0])
    run()
    ok, errors = COUNTS[key][0] - ok0, COUNTS[key][1] - errors0
    print(f"fuzz {key}: {ok + errors} inputs, {ok} ok, {errors} errors")
    assert ok + errors >= 0.9 * n, ok + errors
    return ok, errors


@pytest.mark.parametrize("strategy", ["metadata", "files", "audio"])
def test_fuzz_dataset_folders(strategy, tmp_path_factory):
    ok, errors = _run_fuzz(FUZZ_DEFAULT, strategy, tmp_path_factory)
    assert errors > 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["metadata", "files", "audio"])
def test_fuzz_dataset_folders_long(strategy, tmp_path_factory):
    _run_fuzz(FUZZ_SLOW, strategy, tmp_path_factory)


def test_valid_folder_builds(tmp_path):
    _valid_folder(tmp_path)
    ds = AudioLyricsDataset.from_folder(str(tmp_path))
    assert [s.key for s in ds] == ["a", "b"] and ds[1].latents.shape == (6, 8)
