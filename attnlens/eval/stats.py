"""Summaries of an evaluation table: means with bootstrap CIs, per-prompt winners, paired comparisons.

All functions take the results table (one row per prompt x variant x seed) as a pandas DataFrame: the output of
:func:`attnlens.eval.run`, a ``results.csv`` read back, or any table with a ``variant`` column, a prompt column
(``prompt_id``, else ``style`` or ``genre``), optionally ``seed``, and numeric metric columns (``wer``, ``cer``,
``aas_*``).

Uncertainty is a percentile bootstrap over *prompts* (clusters): all seeds of a prompt are resampled together,
because seeds of one prompt are not independent samples of the genre space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PROMPT_COLUMNS: tuple[str, ...] = ("prompt_id", "style", "genre")
DEFAULT_RESAMPLES = 10_000


def prompt_column(df: pd.DataFrame, by: str | None = None) -> str:
    """The column naming the prompt: ``by`` if given, else the first of ``prompt_id``, ``style``, ``genre``."""
    if by is not None:
        if by not in df.columns:
            raise KeyError(f"column {by!r} not in results (columns: {list(df.columns)})")
        return by
    for c in PROMPT_COLUMNS:
        if c in df.columns:
            return c
    raise KeyError(f"results need a prompt column (one of {PROMPT_COLUMNS}); columns: {list(df.columns)}")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Default metrics: ``wer``, ``cer`` and every numeric column named ``aas*`` or ``score_*``."""
    cols = [c for c in ("wer", "cer") if c in df.columns]
    extra = [
        c
        for c in df.columns
        if (c.startswith("aas") or c.startswith("score_")) and pd.api.types.is_numeric_dtype(df[c])
    ]
    return cols + extra


def _check(df: pd.DataFrame, metrics: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of results, got {type(df).__name__}")
    if "variant" not in df.columns:
        raise KeyError(f"results need a 'variant' column; columns: {list(df.columns)}")
    if df.empty:
        raise ValueError("results table is empty")
    for m in metrics:
        if m not in df.columns:
            raise KeyError(f"metric column {m!r} not in results (columns: {list(df.columns)})")
        bad = df[m].isna()
        if bad.any():
            raise ValueError(f"metric {m!r} has {int(bad.sum())} missing values (rows {list(df.index[bad][:5])} ...)")


def bootstrap_mean_ci(
    values: np.ndarray,
    clusters: np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile bootstrap CI, resampling whole clusters when given.

    mean = Σ x / n. Each resample draws C clusters with replacement and takes Σ_{c} sum_c / Σ_{c} count_c;
    the CI is the ((1-confidence)/2, (1+confidence)/2) quantiles of the resampled means. numpy ``default_rng(seed)``.
    """
    x = np.asarray(values, dtype=np.float64)  # [n]
    if x.size == 0:
        raise ValueError("no values to summarize")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if clusters is None:
        sums, counts = x, np.ones_like(x)
    else:
        _, inv = np.unique(np.asarray(clusters), return_inverse=True)
        sums = np.bincount(inv, weights=x)  # [C]
        counts = np.bincount(inv).astype(np.float64)  # [C]
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sums.size, size=(n_resamples, sums.size))  # [B, C]
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)  # [B]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)


def summarize(
    results: pd.DataFrame,
    metrics: list[str] | None = None,
    by: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per variant: n, and for each metric its mean with a bootstrap CI (over prompts).

    Returns a DataFrame indexed by variant (in first-appearance order) with columns ``n``, ``n_prompts`` and
    ``{metric}_mean``, ``{metric}_lo``, ``{metric}_hi`` for every metric.
    """
    metrics = metric_columns(results) if metrics is None else list(metrics)
    _check(results, metrics)
    pcol = prompt_column(results, by)
    rows = []
    for variant, g in results.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "n": len(g), "n_prompts": g[pcol].nunique()}
        for m in metrics:
            mean, lo, hi = bootstrap_mean_ci(g[m].to_numpy(), g[pcol].to_numpy(), n_resamples, confidence, seed)
            row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = mean, lo, hi
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


@dataclass
class Winners:
    """Per-prompt winners of one metric (lower is better unless ``higher_is_better``)."""

    per_prompt: pd.DataFrame
    """index prompt; columns ``best`` (list of winning variants), ``value`` (their score), ``tie`` (bool)."""
    tally: pd.DataFrame
    """index variant; columns ``unique_wins``, ``ties``, ``mean`` (the variant's mean of per-prompt scores)."""
    oracle: float
    """mean over prompts of the best variant's score: the best-of-variants ("oracle") result."""
    metric: str

    def __repr__(self) -> str:
        return f"Winners({self.metric}, oracle={self.oracle:.4f})\n{self.tally.to_string()}"


def winners(
    results: pd.DataFrame,
    metric: str = "wer",
    by: str | None = None,
    higher_is_better: bool = False,
    atol: float = 1e-9,
) -> Winners:
    """Which variant is best on each prompt.

    Each (prompt, variant) is scored by its mean over seeds. A prompt's winners are the variants within ``atol``
    of the best score: one winner is a *unique win*, several are a *tie* (each tied variant gets one tie).
    Only prompts that every variant has are counted (an error lists the gaps otherwise).
    The oracle is the mean over prompts of the best score.
    """
    _check(results, [metric])
    pcol = prompt_column(results, by)
    table = results.pivot_table(index=pcol, columns="variant", values=metric, aggfunc="mean", sort=False)
    missing = table.isna()
    if missing.any().any():
        gaps = [(p, v) for p, v in zip(*np.nonzero(missing.to_numpy()))][:5]
        named = [(table.index[p], table.columns[v]) for p, v in gaps]
        raise ValueError(f"some variants lack some prompts, e.g. {named}; winners need a complete grid")
    vals = table.to_numpy()  # [prompt, variant]
    best = vals.max(axis=1) if higher_is_better else vals.min(axis=1)  # [prompt]
    is_best = np.abs(vals - best[:, None]) <= atol  # [prompt, variant]
    variants = list(table.columns)
    per_prompt = pd.DataFrame(
        {
            "best": [[v for v, b in zip(variants, row) if b] for row in is_best],
            "value": best,
            "tie": is_best.sum(axis=1) > 1,
        },
        index=table.index,
    )
    unique = (is_best & (is_best.sum(axis=1) == 1)[:, None]).sum(axis=0)
    ties = (is_best & (is_best.sum(axis=1) > 1)[:, None]).sum(axis=0)
    tally = pd.DataFrame(
        {"unique_wins": unique.astype(int), "ties": ties.astype(int), "mean": vals.mean(axis=0)},
        index=pd.Index(variants, name="variant"),
    )
    return Winners(per_prompt=per_prompt, tally=tally, oracle=float(best.mean()), metric=metric)


def compare(
    results: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "wer",
    by: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.Series:
    """Paired comparison of variant ``a`` against ``b`` on the (prompt, seed) pairs both have.

    d_i = metric(a)_i − metric(b)_i. Reports mean_a, mean_b, mean_diff with a bootstrap CI (clusters = prompts),
    counts of a better / b better / equal (lower is better), and the Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``, two-sided, zero differences dropped; p = 1.0 when every difference is zero).
    """
    from scipy.stats import wilcoxon

    _check(results, [metric])
    pcol = prompt_column(results, by)
    for v in (a, b):
        if v not in set(results["variant"]):
            raise KeyError(f"variant {v!r} not in results (variants: {sorted(set(results['variant']))})")
    keys = [pcol] + (["seed"] if "seed" in results.columns else [])
    ra = results[results["variant"] == a].set_index(keys)[metric]
    rb = results[results["variant"] == b].set_index(keys)[metric]
    for name, r in ((a, ra), (b, rb)):
        if r.index.duplicated().any():
            raise ValueError(f"variant {name!r} has duplicated {keys} rows: {list(r.index[r.index.duplicated()][:3])}")
    common = ra.index.intersection(rb.index)
    if len(common) == 0:
        raise ValueError(f"variants {a!r} and {b!r} share no {keys} pairs")
    xa = ra.loc[common].to_numpy(dtype=np.float64)
    xb = rb.loc[common].to_numpy(dtype=np.float64)
    d = xa - xb
    prompts = common.get_level_values(0) if isinstance(common, pd.MultiIndex) else common
    mean_d, lo, hi = bootstrap_mean_ci(d, np.asarray(prompts), n_resamples, confidence, seed)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(xa, xb, zero_method="wilcox", alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
    return pd.Series(
        {
            "a": a,
            "b": b,
            "metric": metric,
            "n_pairs": int(d.size),
            "n_unpaired": int(len(ra) + len(rb) - 2 * len(common)),
            "mean_a": float(xa.mean()),
            "mean_b": float(xb.mean()),
            "mean_diff": mean_d,
            "ci_lo": lo,
            "ci_hi": hi,
            "a_better": int((d < 0).sum()),
            "b_better": int((d > 0).sum()),
            "equal": int((d == 0).sum()),
            "wilcoxon_statistic": stat,
            "p_value": p,
        }
    )


_HEADLINE_METRICS: tuple[tuple[str, str, bool, str], ...] = (
    # (column, header, higher_is_better, format)
    ("wer", "WER (%) ↓", False, "pct"),
    ("cer", "CER (%) ↓", False, "pct"),
    ("aas_dit", "AAS (DiT) ↑", True, "3f"),
    ("aas_lm", "AAS (LM) ↑", True, "3f"),
)


def headline_table(
    summary: pd.DataFrame,
    labels: dict[str, str] | None = None,
    ci: bool = False,
) -> str:
    """The study's headline Markdown table: one row per variant, WER/CER in percent (2 decimals), alignment scores
    to 3 decimals, the best value of each column in bold. ``summary`` is the output of :func:`summarize`.
    With ``ci=True`` each cell also shows its 95% interval in brackets.
    """
    labels = labels or {}
    cols = [c for c in _HEADLINE_METRICS if f"{c[0]}_mean" in summary.columns]
    if not cols:
        raise ValueError("summary has none of wer/cer/aas_dit/aas_lm; pass the output of summarize()")

    def fmt(x: float, kind: str) -> str:
        return f"{100 * x:.2f}" if kind == "pct" else f"{x:.3f}"

    header = "| Model | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    lines = [header, sep]
    best = {}
    for col, _, hib, kind in cols:
        shown = [fmt(v, kind) for v in summary[f"{col}_mean"]]
        best[col] = max(shown, key=float) if hib else min(shown, key=float)
    for variant, row in summary.iterrows():
        cells = []
        for col, _, _, kind in cols:
            s = fmt(row[f"{col}_mean"], kind)
            if ci:
                s += f" [{fmt(row[f'{col}_lo'], kind)}, {fmt(row[f'{col}_hi'], kind)}]"
            cells.append(f"**{s}**" if fmt(row[f"{col}_mean"], kind) == best[col] else s)
        lines.append(f"| {labels.get(variant, variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
