"""Side-by-side timing for the benchmarks: cases interleaved in shuffled order, ratios paired round by round.

A loop bound by kernel launches on the host moves by several percent from one second to the next (other
processes, clock changes, the Python garbage collector). Timing each case in its own block of repeats lets such a
drift land on one case only. Here every round runs every case once, in an order shuffled per round, with the
garbage collector paused inside the timed call (collected between calls instead), and the ratio of a case to the
baseline is taken within each round::

    r_i = t_case,i / t_base,i            (t_base,i: the baseline's time in the same round i)
    ratio = median_i r_i                  95 % interval: percentiles 2.5 / 97.5 of the median of r
                                          over rounds resampled with replacement (bootstrap, 2000 draws)
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def interleaved_times(
    cases: Sequence[str],
    run: Callable[[str], object],
    rounds: int,
    sync: Callable[[], None] = lambda: None,
    before: Callable[[str], None] = lambda case: None,
    after: Callable[[str], None] = lambda case: None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Wall seconds of ``run(case)`` for every case in every round (``[case] -> [round]``).

    ``sync`` is called right before the clock starts and right before it stops (e.g. ``torch.cuda.synchronize``);
    ``before`` / ``after`` run outside the timed span (e.g. resetting and reading peak memory).
    """
    rng = random.Random(seed)
    times: dict[str, list[float]] = {c: [] for c in cases}
    order = list(cases)
    was_enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for case in order:
                gc.collect()
                before(case)
                sync()
                gc.disable()
                t0 = time.perf_counter()
                out = run(case)
                sync()
                dt = time.perf_counter() - t0
                if was_enabled:
                    gc.enable()
                del out
                after(case)
                times[case].append(dt)
    finally:
        if was_enabled:
            gc.enable()
    return times


def paired_ratio(case: Sequence[float], base: Sequence[float], draws: int = 2000, seed: int = 0) -> dict:
    """Median over rounds of ``case[i] / base[i]`` and its bootstrap 95 % interval (see the module docstring)."""
    if len(case) != len(base) or not case:
        raise ValueError(f"paired timings need the same, nonzero number of rounds; got {len(case)} and {len(base)}")
    r = np.asarray(case, dtype=np.float64) / np.asarray(base, dtype=np.float64)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), size=(draws, len(r)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return {
        "time_ratio": round(float(np.median(r)), 4),
        "ratio_ci95": [round(float(lo), 4), round(float(hi), 4)],
        "rounds": len(r),
    }


def baseline(times: dict[str, list[float]], names: Sequence[str] = ("plain", "plain_again")) -> list[float]:
    """Per-round baseline: the mean of the baseline cases that ran (two timings of the same loop halve its noise).

    The baseline cases themselves are reported against each other, not against this mean (which contains them).
    A ratio of one timing to another varies a little more than a case's ratio to the mean of two (variance
    2σ² against 1.5σ² for independent timings), so the noise floor printed that way is a conservative one."""
    cols = [times[n] for n in names if n in times]
    if not cols:
        raise ValueError(f"no baseline case among {list(names)}")
    return [statistics.fmean(vals) for vals in zip(*cols)]


def paired_ratios(times: dict[str, list[float]], names: Sequence[str] = ("plain", "plain_again")) -> dict[str, dict]:
    """:func:`paired_ratio` of every case against the per-round :func:`baseline` of ``names``; when both baseline
    cases ran, each of them against the other instead (against their own mean they would look steadier than they
    are)."""
    base = baseline(times, names)
    present = [n for n in names if n in times]
    out = {}
    for case, t in times.items():
        if case in present and len(present) == 2:
            out[case] = paired_ratio(t, times[present[1 - present.index(case)]])
        else:
            out[case] = paired_ratio(t, base)
    return out
