"""Heads chosen by evidence: al.find_alignment_heads(captures, reference=...) ranks heads by word-start error against
reference timings pooled over captures; without references it falls back to the monotonic heuristic and says so;
head sets round-trip through JSON into al.align. The demo model's guided head is found from 8 captures."""

from __future__ import annotations

import numpy as np
import pytest

import attnlens as al
from attnlens.analyzers.heads import RANKED_BY_MONOTONIC, RANKED_BY_REFERENCE
from attnlens.analyzers.synthetic import capture_from_maps, staircase_maps, synthetic_layout

FR = 12.5


def _caps(n=4):
    """Captures with three heads: 0 a clean staircase 4 frames late (perfectly monotonic, wrong times), 1 the true
    staircase with its argmax flickering back to the previous word (right times, less monotonic), 2 flat."""
    caps, refs = [], []
    rng = np.random.default_rng(0)
    for _ in range(n):
        it = synthetic_layout()
        frames = np.concatenate([[0], np.cumsum(rng.integers(6, 10, size=len(it.words)))]).tolist()
        true = staircase_maps(it, frames)
        late = staircase_maps(it, [0] + [min(f + 4, frames[-1] - 1) for f in frames[1:-1]] + [frames[-1]])
        flick = true.copy()
        L = it.lyric_positions()
        for f in range(2, frames[-1], 3):  # every third frame the argmax jumps back one token
            row = flick[f, L].copy()
            k = int(np.argmax(row))
            if k > 0:
                row[k - 1], row[k] = row[k], row[k - 1]  # a swap keeps the row a distribution
                flick[f, L] = row
        flat = np.full_like(true, 1 / true.shape[1])
        caps.append(capture_from_maps(np.stack([late, flick, flat])[None, None, None], [it], layers=[2]))
        refs.append([(w, frames[j] / FR, frames[j + 1] / FR) for j, w in enumerate(it.words)])
    return caps, refs


def test_reference_ranking_beats_the_heuristic():
    caps, refs = _caps()
    heur = al.find_alignment_heads(caps, top_k=3)
    assert heur.attrs["ranked_by"] == RANKED_BY_MONOTONIC and heur.attrs["heads"][0] == (2, 0)  # the late head
    ev = al.find_alignment_heads(caps, reference=refs, top_k=3)
    assert ev.attrs["ranked_by"] == RANKED_BY_REFERENCE
    assert ev.attrs["heads"] == [(2, 1), (2, 0), (2, 2)]
    # the numbers, recomputed head by head with al.align and al.metrics.timing_error
    for _, row in ev.iterrows():
        err = np.abs(
            np.concatenate(
                [
                    al.metrics.timing_error(al.align(c, heads=[(2, int(row["head"]))], recipe="song").words, r).error_ms
                    for c, r in zip(caps, refs)
                ]
            )
        )
        assert row["median_abs_ms"] == pytest.approx(np.median(err))
        assert row["within_tol"] == pytest.approx(np.mean(err <= 160 + 1e-6))
        assert row["n_words"] == 5 * len(caps) and row["n_captures"] == len(caps)
    assert ev.loc[0, "median_abs_ms"] <= 80 and ev.loc[1, "median_abs_ms"] >= 240


def test_captures_from_files_and_folders_and_head_sets(tmp_path):
    caps, refs = _caps(3)
    for i, c in enumerate(caps):
        c.save(str(tmp_path / f"run{i}.attn"))
    a = al.find_alignment_heads(caps, reference=refs, top_k=2)
    b = al.find_alignment_heads(tmp_path, reference=refs, top_k=2)
    c = al.find_alignment_heads([tmp_path / f"run{i}.attn" for i in range(3)], reference=refs, top_k=2)
    assert a.equals(b) and a.equals(c)
    # one capture takes its word list directly, or a callable gives each capture's
    one = al.find_alignment_heads(caps[0], reference=refs[0], top_k=1)
    assert one.attrs["heads"] == al.find_alignment_heads(caps[0], reference=[refs[0]], top_k=1).attrs["heads"]
    starts = {id(cc): [t for _, t, _ in r] for cc, r in zip(caps, refs)}
    assert al.find_alignment_heads(caps, reference=lambda cc: starts[id(cc)], top_k=2).equals(a)
    # a head set: JSON that al.align reads
    path = al.save_head_set(a, tmp_path / "heads.json", model="synthetic")
    assert al.load_head_set(path) == a.attrs["heads"] == [(2, 1), (2, 0)]
    assert al.align(caps[0], heads=str(path)).words == al.align(caps[0], heads=a.attrs["heads"]).words
    import json

    doc = json.loads(path.read_text())
    assert doc["ranked_by"] == RANKED_BY_REFERENCE and doc["model"] == "synthetic" and len(doc["scores"]) == 2
    with pytest.raises(ValueError, match="one word list per capture"):
        al.find_alignment_heads(caps, reference=refs[:2])
    with pytest.raises(ValueError, match="not a head set"):
        (tmp_path / "bad.json").write_text("[1, 2]")
        al.load_head_set(tmp_path / "bad.json")
    stats_only = capture_from_maps(np.zeros((1, 1, 1, 1, 4, caps[0].layout[0].n_keys)) + 0.1, caps[0].layout,
                                   keep_maps=False)  # fmt: skip
    with pytest.raises(ValueError, match="maps=True"):
        al.find_alignment_heads(stats_only, reference=refs[0])


@pytest.mark.slow  # about 40 s on two CPU cores (run with -m slow): keeps the default run under its budget
def test_demo_guided_head_ranked_first_from_eight_captures():
    from attnlens.demo.check import captured_runs
    from attnlens.models.demo import demo_task, read_demo_config

    runs = captured_runs(al.models.demo_pipeline(), demo_task(), 8, seed=2026)
    refs = [list(r.forced.starts_s) for r in runs]
    ranked = al.find_alignment_heads([r.cap for r in runs], reference=refs, top_k=3)
    assert ranked.attrs["heads"][0] == tuple(read_demo_config()["training"]["guide_head"])
    assert ranked.loc[0, "within_tol"] >= 0.8
