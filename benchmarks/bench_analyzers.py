"""Analyzer timings on CPU: the head table from statistics, and DTW candidates on a 3000 x 512 cost matrix.

    python benchmarks/bench_analyzers.py [--repeat 5]

DTW candidates: attnlens (numba, exact), whisper.timing.dtw_cpu (if installed), fastdtw (approximate; run on the two
feature sequences the cost matrix is built from, its path cost compared with the exact minimum).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import attnlens as al
from attnlens.analyzers.synthetic import synthetic_layout
from attnlens.captures.result import Capture


def best_of(fn, repeat):
    ts = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts)), out


def table_capture(S=8, L=24, H=16, F=250, n=29):
    it = synthetic_layout(lines=[["w"] * 14, ["v"] * 15], tokens_per_word=1)
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    return Capture(
        layers=list(range(L)),
        heads=list(range(H)),
        steps=list(range(S)),
        timesteps=[1.0 - s / S for s in range(S)],
        layout=al.Layout([it]),
        batch_labels=["cond:0"],
        stats={
            "entropy": torch.rand(S, L, 1, H, F, generator=g),
            "mass": torch.from_numpy(rng.dirichlet(np.ones(5), size=(S, L, 1, H, F)).astype(np.float32)),
            "argmax": torch.randint(0, it.n_keys, (S, L, 1, H, F), generator=g, dtype=torch.int32),
            "entropy_lyric": torch.rand(S, L, 1, H, F, generator=g),
            "lyric_argmax": torch.randint(0, n, (S, L, 1, H, F), generator=g, dtype=torch.int32),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cap = table_capture()
    al.analyze(cap)
    mn, med, df = best_of(lambda: al.analyze(cap), args.repeat)
    print(
        f"analyze 8 steps x 24 layers x 16 heads x 250 frames ({len(df)} rows): best {mn * 1e3:.0f} ms, median {med * 1e3:.0f} ms"
    )

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3000, 8))
    b = rng.standard_normal((512, 8))
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # [3000, 512]
    al.metrics.dtw(cost[:5, :5])
    al.metrics.dtw(cost[:5, :5], rule="whisper")
    mn, med, (r, c, exact) = best_of(lambda: al.metrics.dtw(cost, return_cost=True), args.repeat)
    print(
        f"attnlens dtw exact   3000x512: best {mn * 1e3:.1f} ms, median {med * 1e3:.1f} ms, cost {exact:.4f}, path {len(r)}"
    )
    mn, med, (rw, cw) = best_of(lambda: al.metrics.dtw(cost, rule="whisper"), args.repeat)
    print(f"attnlens dtw whisper 3000x512: best {mn * 1e3:.1f} ms, median {med * 1e3:.1f} ms")
    try:
        import whisper.timing as wt

        wt.dtw_cpu(cost[:5, :5].copy())
        mn, med, wp = best_of(lambda: wt.dtw_cpu(cost.copy()), args.repeat)
        same = np.array_equal(wp, np.stack([rw, cw]))
        print(
            f"whisper dtw_cpu      3000x512: best {mn * 1e3:.1f} ms, median {med * 1e3:.1f} ms, path equal to ours: {same}"
        )
    except ImportError:
        print("whisper not installed: skipped")
    try:
        from fastdtw import fastdtw

        for radius in (1, 10):
            mn, med, (d, path) = best_of(lambda radius=radius: fastdtw(a, b, radius=radius, dist=2), 1)
            p = np.array(path)
            pc = cost[p[:, 0], p[:, 1]].sum()
            same = len(p) == len(r) and np.array_equal(p.T, np.stack([r, c]))
            print(
                f"fastdtw radius {radius:2d}     3000x512: {mn * 1e3:.0f} ms, path cost {pc:.4f} "
                f"(+{100 * (pc / exact - 1):.2f}% over exact), same path: {same}"
            )
    except ImportError:
        print("fastdtw not installed: skipped")


if __name__ == "__main__":
    main()
