"""The demo model's bar, measured: decoded WER and whether its cross-attention aligns the sung words.

Ground truth for a generated clip is the decoder's forced alignment of the generated latents
(:meth:`~attnlens.demo.decoder.WordDecoder.align` with the line's words): the model chooses its own timing, so the
render's timings of the same line are not the reference. Used by ``tests/test_demo_model.py`` and by
``scripts/train_demo.py`` (which reports these numbers for every trained model).

Two alignment figures::

    best_monotonic   max over (layer, head) of the mean (over steps and lines) of monotonic_alignment_sung
    start_hits       word starts from al.align (last step; heads from al.find_alignment_heads, top_k)
                     within 2 DiT frames (160 ms) of the forced alignment's starts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRAME_S = 0.08  # one DiT frame (12.5 Hz)


@dataclass
class Run:
    """One captured held-out line: the example, the capture, decoder output and forced alignment, the table."""

    ex: dict[str, Any]
    cap: Any
    decoded: Any
    forced: Any
    table: Any


def captured_runs(pipe: Any, task: Any, n: int, seed: int = 2026, seed_base: int = 10_000) -> list[Run]:
    """``n`` held-out lines (``split="test"``), batch 1, 8 steps, captured with full maps; decoded, forced-aligned."""
    import attnlens as al

    from .decoder import WordDecoder
    from .training import generate

    dec = WordDecoder(task)
    out = []
    for i, ex in enumerate(task.make_dataset(n, seed=seed, split="test")):
        with al.capture(pipe, maps=True, reducer="reference") as cap:
            lat = generate(pipe, [ex["caption"]], [ex["lyrics"]], [seed_base + i])[0]
        out.append(Run(ex, cap, dec.decode(lat), dec.align(lat, ex["words"]), al.analyze(cap)))
    return out


def best_monotonic(runs: list[Run]) -> tuple[float, tuple[int, int]]:
    """Best (layer, head) by the mean ``monotonic_alignment_sung`` over all steps and lines, and its value."""
    import pandas as pd

    df = pd.concat([r.table for r in runs])
    m = df.groupby(["layer", "head"])["monotonic_alignment_sung"].mean()
    return float(m.max()), tuple(int(x) for x in m.idxmax())


def start_hits(runs: list[Run], top_k: int = 4, tolerance_s: float = 2 * FRAME_S) -> tuple[int, int]:
    """(word starts within ``tolerance_s`` of the forced alignment, words), from ``al.align(..., recipe="song")`` at
    the last step."""
    import attnlens as al

    hits = total = 0
    for r in runs:
        heads = al.find_alignment_heads(r.cap, top_k=top_k, table=r.table)
        got = [w.start for w in al.align(r.cap, heads, step=-1, recipe="song").words]
        ref = r.forced.starts_s
        hits += sum(abs(g - t) <= tolerance_s + 1e-9 for g, t in zip(got, ref))
        total += len(ref)
    return hits, total


def alignment_report(pipe: Any, task: Any, n: int = 24, seed: int = 2026, top_k: int = 4) -> dict[str, Any]:
    """The two alignment figures and per-layer lyric mass / entropy on ``n`` held-out lines."""
    import pandas as pd

    runs = captured_runs(pipe, task, n, seed=seed)
    best, head = best_monotonic(runs)
    hits, total = start_hits(runs, top_k=top_k)
    df = pd.concat([r.table for r in runs])
    per_layer = df.groupby("layer")[["lyric_mass", "entropy"]].mean()
    return {
        "lines": n,
        "best_monotonic_sung": round(best, 4),
        "best_head": list(head),
        "start_hits": hits,
        "words": total,
        "start_hit_rate": round(hits / max(1, total), 4),
        "lyric_mass_per_layer": [round(float(x), 4) for x in per_layer["lyric_mass"]],
        "entropy_per_layer": [round(float(x), 4) for x in per_layer["entropy"]],
    }
