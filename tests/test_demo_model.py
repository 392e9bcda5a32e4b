"""The shipped demo model: loads offline, sings held-out lines, and (the bar) aligns its words in attention.

Ground truth for a generated clip is the decoder's forced alignment of the generated latents
(``WordDecoder.align`` with the line's words): the model chooses its own timing, so the render's timings of the
same line are not the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.demo.check import best_monotonic, captured_runs, start_hits
from attnlens.demo.decoder import WordDecoder, corpus_wer
from attnlens.demo.training import generate, word_errors
from attnlens.models.demo import demo_task, read_demo_config

N_LINES = 40  # WER test (generation only)
N_ALIGN = 24  # alignment tests (captured with full maps; slow on a CPU)


@pytest.fixture(scope="module")
def model():
    pipe = al.models.demo_pipeline()
    task = demo_task()
    return pipe, task, WordDecoder(task)


def _runs(model, n: int) -> list:
    """``n`` held-out lines, batch 1, 8 steps, captured with full maps; decoded and forced-aligned."""
    pipe, task, _ = model
    return captured_runs(pipe, task, n, seed=2026)


@pytest.fixture(scope="module")
def runs(model):
    return _runs(model, N_ALIGN)


def test_config_and_task_fingerprint():
    doc = read_demo_config()
    assert doc["model"]["dit_layers"] == 4 and doc["model"]["heads"] == 8 and doc["model"]["kv_heads"] == 4
    assert demo_task().fingerprint() == doc["task_fingerprint"]
    assert doc["training"]["steps_done"] > 0


def test_pipeline_is_gqa_turbo_and_deterministic(model):
    pipe, task, _ = model
    cfg = pipe.transformer.config
    assert cfg.num_attention_heads == 8 and cfg.num_key_value_heads == 4 and cfg.head_dim == 16
    assert pipe.is_turbo
    ex = task.make_dataset(1, seed=5, split="test")[0]
    a = generate(pipe, [ex["caption"]], [ex["lyrics"]], [3])
    b = generate(pipe, [ex["caption"]], [ex["lyrics"]], [3])
    assert a.shape == (1, 100, 8)
    np.testing.assert_array_equal(a, b)


def test_word_errors_matches_jiwer():
    import jiwer

    pairs = [("a b c d", "a c d e"), ("sun moon", "sun sun moon moon"), ("x y z", "z y x"), ("p q", "p q")]
    for ref, hyp in pairs:
        assert word_errors(ref.split(), hyp.split()) / len(ref.split()) == pytest.approx(jiwer.wer(ref, hyp))
    assert word_errors(["x", "y", "z"], []) == 3


def test_heldout_wer(model):
    pipe, task, dec = model
    exs = task.make_dataset(N_LINES, seed=2026, split="test")
    decoded = [dec.decode(generate(pipe, [e["caption"]], [e["lyrics"]], [10_000 + i])[0]) for i, e in enumerate(exs)]
    wer = corpus_wer([" ".join(e["words"]) for e in exs], [d.text for d in decoded])
    assert wer <= 0.10, f"held-out WER {wer:.3f} > 0.10"
    # the voice named in the caption is the one sung
    assert np.mean([d.voice == e["voice"] for d, e in zip(decoded, exs)]) >= 0.9


def test_sung_words_follow_the_lyrics(model):
    """Control: the decoded words follow the lyrics, not a memorised line (two lines, same seed)."""
    pipe, task, dec = model
    a, b = task.make_dataset(2, seed=77, split="test")
    la = generate(pipe, [a["caption"]], [a["lyrics"]], [1])[0]
    lb = generate(pipe, [a["caption"]], [b["lyrics"]], [1])[0]
    assert word_errors(a["words"], dec.decode(la).words) < word_errors(a["words"], dec.decode(lb).words)


def _best_monotonic(runs) -> tuple[float, tuple[int, int]]:
    return best_monotonic(runs)


def _start_hits(runs, top_k: int = 4) -> tuple[int, int]:
    return start_hits(runs, top_k=top_k)


@pytest.mark.slow
def test_some_head_is_monotonic_on_sung_frames(runs):
    best, head = _best_monotonic(runs)
    assert best >= 0.6, f"best head {head}: monotonic_alignment_sung {best:.3f} < 0.6"


@pytest.mark.slow
def test_align_word_starts_within_two_frames(runs):
    hits, total = _start_hits(runs)
    assert hits / total >= 0.9, f"{hits}/{total} word starts within 160 ms"


@pytest.mark.slow
def test_analyzers_find_the_guided_head(runs):
    """The model was trained with one guided head (config: training.guide_head); the analyzers must rank it first."""
    want = tuple(read_demo_config()["training"]["guide_head"])
    firsts = [tuple(int(x) for x in al.find_alignment_heads(r.cap, top_k=1, table=r.table)[["layer", "head"]].iloc[0])
              for r in runs]  # fmt: skip
    assert sum(f == want for f in firsts) >= 0.9 * len(runs), firsts


def test_alignment_pipeline_runs_and_is_scored(model):
    """The alignment machinery runs on this model's captures (whatever its accuracy): numbers in range."""
    runs = _runs(model, 2)
    best, _ = _best_monotonic(runs)
    hits, total = _start_hits(runs)
    assert 0.0 <= best <= 1.0 and 0 <= hits <= total and total == sum(len(r.ex["words"]) for r in runs)
    assert torch.isfinite(torch.as_tensor(runs[0].cap.stats["entropy"])).all()
