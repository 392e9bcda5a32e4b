"""The evaluation runner with a fake, fast pipeline: rows, resume after interruption, crash safety, batches,
sharding, latent decoding, adapter switching, scorer hook."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from attnlens.eval import Suite, merge, run, summarize
from attnlens.eval.store import RowStore, read_results

SR = 8000


def make_suite(n: int = 3) -> Suite:
    words = ["alpha beta gamma delta", "red green blue", "one small step", "sun moon stars sky", "river stone"]
    return Suite.from_records(
        [
            {"id": f"p{i}", "caption": f"genre {i}", "lyrics": f"[verse]\n{words[i]}", "duration": 0.5, "seed": 10 + i}
            for i in range(n)
        ]
    )


class FakeTransformer:
    def __init__(self):
        self.calls: list[tuple] = []
        self.active: str | None = None
        self.enabled = True
        self.names: set[str] = set()

    def load_lora_adapter(self, path, adapter_name, use_safetensors=None):
        if adapter_name in self.names:  # as diffusers refuses a name in use
            raise ValueError(f"Adapter name {adapter_name} already in use in the model")
        self.names.add(adapter_name)
        self.calls.append(("load", adapter_name))

    def set_adapters(self, names, weights):
        self.calls.append(("set", tuple(names), tuple(weights)))
        self.active = names[0]

    def enable_lora(self):
        self.enabled = True

    def disable_lora(self):
        self.enabled = False
        self.active = None

    def delete_adapters(self, names):
        self.calls.append(("delete", tuple(names)))
        self.names -= set(names)
        self.active = None


class FakePipe:
    """Audio [B, 2, T]: channel noise from the generator, first sample encodes the lyrics index."""

    sample_rate = SR

    def __init__(self, suite: Suite):
        self.lyrics = [e.lyrics for e in suite]
        self.transformer = FakeTransformer()
        self.calls: list[dict] = []

    def __call__(self, prompt, lyrics, audio_duration, vocal_language, generator, output_type, **kw):
        lyrics = [lyrics] if isinstance(lyrics, str) else lyrics
        gens = generator if isinstance(generator, list) else [generator]
        self.calls.append({"lyrics": list(lyrics), "active": self.transformer.active, "kw": kw})
        t = int(audio_duration * SR)
        items = []
        for ly, g in zip(lyrics, gens):
            x = 0.01 * torch.randn(2, t, generator=g)
            x[:, 0] = (self.lyrics.index(ly) + 1) / 10
            x[:, 1] = 0.5 if self.transformer.active else 0.0
            items.append(x if output_type != "latent" else x.T[:, :1])
        return types.SimpleNamespace(audios=torch.stack(items))


class FakeASR:
    """Hears the lyrics back; with the adapter active it hears them perfectly, else it misses the first word."""

    def __init__(self, suite: Suite, fail_at: int | None = None):
        self.refs = [e.reference for e in suite]
        self.n = 0
        self.fail_at = fail_at

    def transcribe(self, audio, sr):
        self.n += 1
        if self.fail_at is not None and self.n == self.fail_at:
            raise RuntimeError("ASR crashed")
        assert sr == SR and audio.ndim == 1
        ref = self.refs[int(round(float(audio[0]) * 10)) - 1]
        return ref if audio[1] > 0.2 else " ".join(ref.split()[1:])


def strip_timing(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in df.columns if c not in ("gen_seconds", "asr_seconds")]
    return df[cols].sort_values(["variant", "seed", "prompt_id"]).reset_index(drop=True)


@pytest.fixture
def adapter(tmp_path):
    p = tmp_path / "adapter"
    p.mkdir()
    return str(p)


def test_full_run_rows_scores_audio_and_adapters(tmp_path, adapter):
    suite = make_suite(3)
    pipe = FakePipe(suite)
    res = run(
        pipe,
        suite,
        {"baseline": None, "lora": adapter},
        seeds=[0, 1],
        transcriber=FakeASR(suite),
        out_dir=tmp_path / "out",
        progress=False,
        generate_kwargs={"num_inference_steps": 2},
    )
    assert len(res) == 3 * 2 * 2 and not res.duplicated(["prompt_id", "variant", "seed"]).any()
    assert len(pipe.calls) == 12 and pipe.calls[0]["kw"] == {"num_inference_steps": 2}
    # baseline misses the first word of each line: WER = 1 / n_words; the adapter is perfect
    n_words = {e.id: len(e.reference.split()) for e in suite}
    for r in res.itertuples():
        expected = 0.0 if r.variant == "lora" else 1 / n_words[r.prompt_id]
        assert r.wer == pytest.approx(expected, abs=1e-6)
    assert (res.batch_size == 1).all() and (res.batch_ids == res.prompt_id).all()
    # adapter loaded once, baseline calls ran with no active adapter; deleted at the end (a later run may load it)
    assert [c for c in pipe.transformer.calls if c[0] == "load"] == [("load", "lora")]
    assert pipe.transformer.calls[-1] == ("delete", ("lora",)) and not pipe.transformer.names
    assert {c["active"] for c in pipe.calls[:6]} == {None} and {c["active"] for c in pipe.calls[6:]} == {"lora"}
    audio, sr = sf.read(tmp_path / "out" / res.artifact[0])
    assert sr == SR and audio.shape == (int(0.5 * SR), 2)
    s = summarize(res, n_resamples=100)
    assert s.loc["lora", "wer_mean"] == 0.0


def test_resume_after_interrupt_no_recompute_no_duplicates(tmp_path, adapter):
    suite = make_suite(3)
    variants = {"baseline": None, "lora": adapter}
    clean = run(
        FakePipe(suite),
        suite,
        variants,
        seeds=[0, 1],
        transcriber=FakeASR(suite),
        out_dir=tmp_path / "clean",
        progress=False,
    )

    class Stop(Exception):
        pass

    seen = []

    def stop_after_5(row):
        seen.append(row)
        if len(seen) == 5:
            raise Stop

    pipe = FakePipe(suite)
    with pytest.raises(Stop):
        run(
            pipe,
            suite,
            variants,
            seeds=[0, 1],
            transcriber=FakeASR(suite),
            out_dir=tmp_path / "r",
            progress=False,
            on_row=stop_after_5,
        )
    assert len(pd.read_csv(tmp_path / "r" / "results.csv")) == 5
    pipe2 = FakePipe(suite)
    res = run(pipe2, suite, variants, seeds=[0, 1], transcriber=FakeASR(suite), out_dir=tmp_path / "r", progress=False)
    assert len(pipe2.calls) == 12 - 5  # only the missing rows were generated
    assert len(res) == 12 and not res.duplicated(["prompt_id", "variant", "seed"]).any()
    pd.testing.assert_frame_equal(strip_timing(res), strip_timing(clean))
    pipe3 = FakePipe(suite)
    run(pipe3, suite, variants, seeds=[0, 1], transcriber=FakeASR(suite), out_dir=tmp_path / "r", progress=False)
    assert pipe3.calls == []


def test_crash_between_audio_and_row_and_partial_line(tmp_path):
    suite = make_suite(3)
    out = tmp_path / "c"
    with pytest.raises(RuntimeError, match="ASR crashed"):
        run(FakePipe(suite), suite, seeds=[0], transcriber=FakeASR(suite, fail_at=2), out_dir=out, progress=False)
    # audio of the 2nd row was written, its row was not
    assert (out / "audio" / "baseline" / "p1__seed0.flac").exists()
    assert len(pd.read_csv(out / "results.csv")) == 1
    # simulate a crash in the middle of appending a row: a partial line with no newline
    with open(out / "results.csv", "a") as f:
        f.write("p1,p1,baseline,0,0.5,0.")
    assert len(RowStore(out / "results.csv").rows) == 1  # the partial line is cut off
    pipe = FakePipe(suite)
    res = run(pipe, suite, seeds=[0], transcriber=FakeASR(suite), out_dir=out, progress=False)
    assert len(pipe.calls) == 2 and len(res) == 3
    assert sorted(res.prompt_id) == ["p0", "p1", "p2"]
    assert (out / "results.csv").read_text().endswith("\n")


def test_batches_recorded_and_partial_batch_regenerated_whole(tmp_path):
    suite = make_suite(5)
    out = tmp_path / "b"

    seen = []

    def stop_at_3(row):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            FakePipe(suite),
            suite,
            seeds=[0],
            transcriber=FakeASR(suite),
            out_dir=out,
            batch_size=2,
            progress=False,
            on_row=stop_at_3,
        )
    pipe = FakePipe(suite)
    res = run(pipe, suite, seeds=[0], transcriber=FakeASR(suite), out_dir=out, batch_size=2, progress=False)
    # row 3 (p2) was committed inside batch [p2, p3]; that batch is regenerated whole, with the same mates
    assert [c["lyrics"] for c in pipe.calls] == [[suite["p2"].lyrics, suite["p3"].lyrics], [suite["p4"].lyrics]]
    assert len(res) == 5
    by_id = res.set_index("prompt_id")
    assert by_id.loc["p3", "batch_ids"] == "p2|p3" and by_id.loc["p4", "batch_ids"] == "p4"
    assert by_id.loc["p0", "batch_index"] == 0 and by_id.loc["p4", "batch_index"] == 2
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        run(pipe, suite, seeds=[0], transcriber=FakeASR(suite), out_dir=out, batch_size=1, progress=False)


def test_sharded_run_and_merge(tmp_path, monkeypatch, adapter):
    suite = make_suite(3)
    variants = {"baseline": None, "lora": adapter}
    single = run(
        FakePipe(suite),
        suite,
        variants,
        seeds=[0, 1],
        transcriber=FakeASR(suite),
        out_dir=tmp_path / "one",
        progress=False,
    )
    out = tmp_path / "sh"
    counts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipe = FakePipe(suite)
        part = run(pipe, suite, variants, seeds=[0, 1], transcriber=FakeASR(suite), out_dir=out, progress=False)
        counts.append(len(pipe.calls))
        assert (part["rank"] == rank).all()
    assert counts == [6, 6] and not (out / "results.csv").exists()
    merged = merge(out)
    assert len(merged) == 12
    drop = ["rank", "world_size"]
    pd.testing.assert_frame_equal(strip_timing(merged).drop(columns=drop), strip_timing(single).drop(columns=drop))


def test_latent_output_with_decoder_callable(tmp_path):
    suite = make_suite(2)
    pipe = FakePipe(suite)
    refs = [e.reference for e in suite]

    def decode(latents):  # a stand-in decoder in latent space
        assert isinstance(latents, torch.Tensor) and latents.ndim == 2
        return refs[int(round(float(latents[0, 0]) * 10)) - 1]

    res = run(pipe, suite, seeds=[3], transcriber=decode, out_dir=tmp_path / "l", output="latent", progress=False)
    assert (res.wer == 0).all() and res.artifact.str.endswith(".safetensors").all()
    from safetensors.torch import load_file

    assert load_file(tmp_path / "l" / res.artifact[0])["latents"].shape == (int(0.5 * SR), 1)


def test_scorer_hook_columns(tmp_path):
    suite = make_suite(2)

    def scorer(pipe, entry, seed):
        return {"aas_dit": 0.1 * (int(entry.id[1:]) + 1), "aas_lm": 0.5}

    res = run(
        FakePipe(suite),
        suite,
        seeds=[0],
        transcriber=FakeASR(suite),
        out_dir=tmp_path / "s",
        scorer=scorer,
        progress=False,
    )
    assert res.aas_dit.tolist() == pytest.approx([0.1, 0.2])
    assert summarize(res, n_resamples=50).loc["baseline", "aas_dit_mean"] == pytest.approx(0.15)


def test_errors_before_generation(tmp_path):
    suite = make_suite(2)
    pipe = FakePipe(suite)
    with pytest.raises(FileNotFoundError, match="variant 'lora': adapter path 'no/such/dir' does not exist"):
        run(pipe, suite, {"lora": "no/such/dir"}, transcriber=FakeASR(suite), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="may not set"):
        run(pipe, suite, transcriber=FakeASR(suite), out_dir=tmp_path, generate_kwargs={"lyrics": "x"})
    with pytest.raises(ValueError, match="needs a transcriber"):
        run(pipe, suite, out_dir=tmp_path)
    assert pipe.calls == [] and not np.any([p.suffix == ".csv" for p in tmp_path.iterdir()])


@pytest.mark.slow  # builds the offline tiny AceStepPipeline (~20 s) and generates 4 clips
def test_tiny_pipeline_end_to_end(tmp_path):
    models = pytest.importorskip("attnlens.models")
    if not hasattr(models, "tiny_pipeline"):
        pytest.skip("attnlens.models.tiny_pipeline is not available")
    pipe = models.tiny_pipeline(seed=0)
    suite = Suite.from_records(
        [{"id": f"t{i}", "caption": "folk", "lyrics": "[verse]\nhello world", "duration": 1.0} for i in range(2)]
    )
    heard = []

    def decode(audio):
        heard.append(audio.shape)
        return "hello"

    kw = {"num_inference_steps": 2, "guidance_scale": 1.0}
    res = run(pipe, suite, seeds=[0, 1], transcriber=decode, out_dir=tmp_path, generate_kwargs=kw, progress=False)
    assert len(res) == 4 and res.wer.tolist() == [0.5] * 4
    assert heard[0] == (48_000,)  # 1 s at 48 kHz, downmixed to mono
    a0, a1, a2 = (sf.read(tmp_path / res.artifact[i])[0] for i in range(3))
    assert a0.shape == (48_000, 2)
    assert np.array_equal(a0, a1)  # same prompt text, same seed, batch 1: identical audio
    assert not np.allclose(a0, a2)  # another seed


def test_alignment_score_column_from_a_capture(tmp_path):
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0)
    suite = Suite.from_records(
        [{"id": "a", "caption": "folk", "lyrics": "[verse]\nhello world again", "duration": 0.8}]
    )
    kw = {"num_inference_steps": 2, "guidance_scale": 1.0}
    res = run(
        pipe, suite, seeds=[0], transcriber=lambda x: "hello world again", out_dir=tmp_path, generate_kwargs=kw,
        output="latent", progress=False, alignment_heads="default",
    )  # fmt: skip
    # the same score computed independently from a capture of the same generation
    with al.capture(pipe, layers=[2, 3, 4, 5, 6], heads=[3, 6, 8, 9, 10, 11], steps=[-1], maps=True) as cap:
        pipe(prompt="folk", lyrics="[verse]\nhello world again", audio_duration=0.8, output_type="latent",
             generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
    expected = al.lyrics_alignment_score(cap, step=-1).score
    assert res.aas.tolist() == [expected] and 0.0 <= expected <= 1.0
    assert read_results(tmp_path / "results.csv").aas.tolist() == [expected]
