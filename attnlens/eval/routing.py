"""Held-out evaluation of a router, beside the best single variant, the oracle, a random choice and merging.

Folds are by prompt: ``folds="loo"`` leaves one prompt out at a time, an integer ``k`` cuts the prompts (shuffled
with ``default_rng(seed)``) into ``k`` folds. For each fold a router is fitted on the other prompts alone (feature
design, penalty and weights, see :mod:`attnlens.eval.router`) and picks a variant for each held-out prompt. Every
system below is then a pseudo-variant of one results table (all seeds of the chosen variant's rows for a prompt),
so :func:`~attnlens.eval.summarize` gives its mean with a bootstrap interval over prompts and
:func:`~attnlens.eval.compare` the paired difference — the same code as for any two variants:

- ``routed``: the held-out router's choice;
- ``best single``: the one variant with the lowest mean over all prompts (chosen knowing every prompt: a bar the
  router has to clear, slightly optimistic);
- ``single (train)``: per fold, the variant with the lowest mean on the training prompts (what the router falls back
  to when its features say nothing);
- ``oracle``: the best variant of each prompt, chosen knowing its result (the best any router could do);
- ``random``: the expected metric of a uniformly random variant (mean over variants, per prompt and seed);
- ``merged (train)``: with ``merged=[...]``, per fold the merged adapter (see :func:`merge_grid`) with the lowest
  mean on the training prompts.

The verdict compares ``routed`` with ``best single``: ``better`` only if the whole interval of the paired difference
is below zero, ``worse`` if it is above, else ``not distinguishable``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .router import DEFAULT_LAMBDAS, build_problem, fit_on, metric_grid
from .stats import DEFAULT_RESAMPLES, compare, prompt_column, summarize, winners

SYSTEMS = ("routed", "best single", "single (train)", "oracle", "random", "merged (train)")


@dataclass
class RoutingReport:
    """The held-out evaluation of a router (see the module docstring)."""

    summary: pd.DataFrame
    """index system; ``n_prompts``, ``{metric}_mean/_lo/_hi``, ``chosen`` (the variant(s) a system used)."""
    per_prompt: pd.DataFrame
    """index prompt; ``fold``, ``routed`` (held-out choice), ``best`` (the oracle's variants), ``routed_value``,
    ``oracle_value``, ``correct`` (the choice is among the best)."""
    comparison: pd.Series
    """:func:`~attnlens.eval.compare` of ``routed`` against ``best single``."""
    results: pd.DataFrame
    """the systems as variants of one results table."""
    accuracy: float
    """share of held-out prompts whose routed variant is among their best ones."""
    verdict: str
    best_single: str
    metric: str
    folds: Any

    def to_markdown(self) -> str:
        m = self.metric
        lines = [f"| System | {m.upper()} | 95% CI | variant(s) |", "|---|---|---|---|"]
        for name, r in self.summary.iterrows():
            lines.append(
                f"| {name} | {r[f'{m}_mean']:.3f} | [{r[f'{m}_lo']:.3f}, {r[f'{m}_hi']:.3f}] | {r['chosen']} |"
            )
        c = self.comparison
        lines += [
            "",
            f"Held-out accuracy {self.accuracy:.3f} ({self.folds} folds by prompt). Routed minus best single: "
            f"{c['mean_diff']:+.3f} [{c['ci_lo']:+.3f}, {c['ci_hi']:+.3f}], better on {c['a_better']} prompt-seeds, "
            f"worse on {c['b_better']}, equal on {c['equal']}: {self.verdict}.",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_markdown()


def prompt_folds(n: int, folds: Any, seed: int) -> list[np.ndarray]:
    """Index arrays of the held-out prompts of each fold."""
    if folds == "loo":
        return [np.array([i]) for i in range(n)]
    k = int(folds)
    if not 2 <= k <= n:
        raise ValueError(f"folds must be 'loo' or an integer in [2, {n}] (the number of prompts); got {folds!r}")
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), k)]


def evaluate_router(
    results: pd.DataFrame,
    features: Any = ("text",),
    *,
    prompts: Any = None,
    pipe: Any = None,
    metric: str = "wer",
    variants: Sequence[str] | None = None,
    merged: Sequence[str] | None = None,
    folds: Any = "loo",
    seed: int = 0,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    min_count: int = 2,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> RoutingReport:
    """Held-out (by prompt) evaluation of :func:`attnlens.eval.fit_router` with ``features`` on ``results``.

    ``variants`` are the router's choices (default: every variant not in ``merged``); ``merged`` names merged
    adapters evaluated in the same table (:func:`merge_grid`), reported as ``merged (train)``. Other arguments as
    for :func:`~attnlens.eval.fit_router` and :func:`~attnlens.eval.summarize`. Lower ``metric`` is better.
    """
    merged = list(merged or [])
    if variants is None:
        variants = [v for v in pd.unique(results["variant"]) if v not in merged]
    problem = build_problem(
        results, features, prompts=prompts, pipe=pipe, metric=metric, variants=variants, generate_kwargs=generate_kwargs
    )
    n, n_variants = problem.y.shape
    fold_of = np.empty(n, dtype=int)
    routed = np.empty(n, dtype=int)
    single = np.empty(n, dtype=int)
    merge_pick: list[str] = [""] * n
    pcol = prompt_column(results)
    ids = results[pcol].astype(str)
    mgrid = metric_grid(results, merged, metric).reindex(index=problem.ids).to_numpy() if merged else None
    for f, test in enumerate(prompt_folds(n, folds, seed)):
        train = np.setdiff1d(np.arange(n), test)
        router = fit_on(problem, train, lambdas, min_count)
        pred = router.scores([problem.raw[i] for i in test])
        fold_of[test], routed[test] = f, np.argmin(pred, axis=1)
        single[test] = int(np.argmin(problem.y[train].mean(axis=0)))
        if mgrid is not None:
            best_merge = merged[int(np.argmin(mgrid[train].mean(axis=0)))]
            for i in test:
                merge_pick[i] = best_merge
    won = winners(results[results["variant"].isin(problem.variants)], metric).per_prompt
    won = won.set_axis(won.index.astype(str)).loc[problem.ids]  # each prompt's best variants and their value
    overall = int(np.argmin(problem.y.mean(axis=0)))
    choices = {
        "routed": [problem.variants[j] for j in routed],
        "best single": [problem.variants[overall]] * n,
        "single (train)": [problem.variants[j] for j in single],
        "oracle": [b[0] for b in won["best"]],
    }
    if mgrid is not None:
        choices["merged (train)"] = merge_pick
    frames = []
    for name, chosen in choices.items():
        pick = dict(zip(problem.ids, chosen))
        rows = results[[pick.get(p) == v for p, v in zip(ids, results["variant"])]]
        frames.append(rows.assign(variant=name))
    cand = results[results["variant"].isin(problem.variants)]
    keys = [pcol] + (["seed"] if "seed" in results.columns else [])
    frames.append(cand.groupby(keys, sort=False, as_index=False)[metric].mean().assign(variant="random"))
    table = pd.concat(frames, ignore_index=True)[keys + ["variant", metric]]
    summary = summarize(table, metrics=[metric], by=pcol, n_resamples=n_resamples, confidence=confidence, seed=seed)
    summary["chosen"] = [
        ", ".join(sorted(set(choices[s]))) if s in choices else f"uniform over {n_variants}" for s in summary.index
    ]
    order = [s for s in SYSTEMS if s in summary.index]
    summary = summary.loc[order]
    comparison = compare(table, "routed", "best single", metric, by=pcol, n_resamples=n_resamples, seed=seed)
    if comparison["ci_hi"] < 0:
        verdict = "better than the best single variant"
    elif comparison["ci_lo"] > 0:
        verdict = "worse than the best single variant"
    else:
        verdict = "not distinguishable from the best single variant"
    correct = np.array([v in b for v, b in zip(choices["routed"], won["best"])])
    per_prompt = pd.DataFrame(
        {
            "fold": fold_of,
            "routed": choices["routed"],
            "best": list(won["best"]),
            "routed_value": problem.y[np.arange(n), routed],
            "oracle_value": won["value"].to_numpy(),
            "correct": correct,
        },
        index=pd.Index(problem.ids, name=pcol),
    )
    return RoutingReport(
        summary=summary,
        per_prompt=per_prompt,
        comparison=comparison,
        results=table,
        accuracy=float(correct.mean()),
        verdict=verdict,
        best_single=problem.variants[overall],
        metric=metric,
        folds=n if folds == "loo" else int(folds),
    )


def merge_grid(
    adapters: Mapping[str, str], out_dir: str | os.PathLike, step: float = 0.5, min_adapters: int = 2
) -> dict[str, str]:
    """Weighted combinations of LoRA adapters on a grid, written with :func:`attnlens.train.combine_adapters`.

    Every weight vector with entries in multiples of ``step`` that sum to 1 and with at least ``min_adapters``
    non-zero entries (``step=0.5``: every pair averaged; ``0.25`` adds 1:3 mixtures and triples). Returns variant
    name -> adapter folder, ``"merge[a@0.5;b@0.5]"`` -> ``out_dir/merge_a0.5_b0.5``, to pass to
    :func:`attnlens.eval.run` and then as ``merged=`` to :func:`evaluate_router`.
    """
    from ..train.lora import combine_adapters

    names = list(adapters)
    units = round(1 / step)
    if units < 1 or abs(units * step - 1) > 1e-9:
        raise ValueError(f"step must divide 1 (0.5, 0.25, ...); got {step}")
    out: dict[str, str] = {}
    for combo in itertools.product(range(units + 1), repeat=len(names)):
        if sum(combo) != units or sum(c > 0 for c in combo) < min_adapters:
            continue
        w = {n: c / units for n, c in zip(names, combo) if c > 0}
        name = "merge[" + ";".join(f"{n}@{x:g}" for n, x in w.items()) + "]"
        folder = os.path.join(os.fspath(out_dir), "merge_" + "_".join(f"{n}{x:g}" for n, x in w.items()))
        combine_adapters({n: adapters[n] for n in w}, weights=w, out=folder)
        out[name] = folder
    return out
