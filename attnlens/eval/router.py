"""A router: which variant (adapter) to use for a prompt, learned from an evaluation table.

For each variant ``v`` the router predicts the prompt's metric (WER) with a ridge regression on the prompt's
features (:mod:`attnlens.eval.router_features`) and picks the variant with the lowest prediction::

    x       = [words present (0/1) ..., (numeric feature - training mean) / training std ...]
    ŷ_v(x)  = b_v + x · w_v,   (b, W) = argmin Σ_p ||y_p − b − x_p W||² + λ ||W||²   (y_p: the prompt's metric
                                                                                         per variant, mean of seeds)
    choice  = argmin_v ŷ_v(x)

The intercept is not penalized, so with ``λ = ∞`` every prediction is the variant's training mean and the router is
the best single variant. ``λ`` is chosen from a small grid (``∞`` included) by leave-one-prompt-out routed metric on
the training prompts (equal losses: the larger ``λ``). Words seen in fewer than ``min_count`` training prompts and
numeric features constant over them are left out.

A router is saved as JSON (:meth:`Router.save`, never pickle) with what it needs to route a new prompt: its words,
the feature means and scales, the weights, and how to read the attention features.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .router_features import (
    AttentionSpec,
    PromptInfo,
    attention_features,
    finite,
    lyric_facts,
    prompt_infos,
    words,
)
from .stats import _check, prompt_column
from .suite import Suite

FORMAT = "attnlens.router"
VERSION = 1
DEFAULT_LAMBDAS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)

Raw = tuple[frozenset[str], dict[str, float]]
"""A prompt's features before the router's design: the words present and the numeric values."""


@dataclass
class Problem:
    """An evaluation table as a routing problem: prompts, the metric per (prompt, variant), raw features."""

    ids: list[str]
    variants: list[str]
    y: np.ndarray  # [prompt, variant], mean over seeds
    raw: list[Raw]
    groups: list[dict[str, Any]]
    metric: str
    adapters: dict[str, Any] = field(default_factory=dict)


def raw_features(info: PromptInfo, groups: Sequence[Mapping[str, Any]], extra: Mapping[str, float] | None) -> Raw:
    """The words and numbers a router reads from ``info``; ``extra`` holds attention / table columns."""
    tokens: set[str] = set()
    numeric: dict[str, float] = {}
    for g in groups:
        if g["kind"] == "text":
            tokens.update(f"w:{w}" for w in words(info.text))
        elif g["kind"] == "facts":
            numeric.update(lyric_facts(info))
            tokens.add(f"language={info.language}")
        else:  # attention or table columns, computed elsewhere
            cols = g["columns"]
            missing = [c for c in cols if extra is None or c not in extra]
            if missing:
                raise KeyError(f"prompt {info.id!r}: no value for feature column(s) {missing}")
            numeric.update({c: finite(extra[c]) for c in cols})
    return frozenset(tokens), numeric


def metric_grid(results: pd.DataFrame, variants: Sequence[str], metric: str) -> pd.DataFrame:
    """``[prompt (as str), variant]``: each variant's mean ``metric`` over the seeds of each prompt; every variant
    must have every prompt."""
    pcol = prompt_column(results)
    rows = results[results["variant"].isin(variants)]
    grid = rows.pivot_table(
        index=rows[pcol].astype(str), columns="variant", values=metric, aggfunc="mean", sort=False
    ).reindex(columns=list(variants))
    if grid.isna().any().any():
        raise ValueError(f"some of the variants {list(variants)} lack some prompts; every one needs every prompt")
    return grid


def build_problem(
    results: pd.DataFrame,
    features: Sequence[Any],
    *,
    prompts: Any = None,
    pipe: Any = None,
    metric: str = "wer",
    variants: Sequence[str] | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> Problem:
    """Prompts, metric grid and raw features of ``results`` (attention features computed here when asked)."""
    _check(results, [metric])
    pcol = prompt_column(results)
    df = results.assign(**{pcol: results[pcol].astype(str)})
    known = list(pd.unique(df["variant"]))
    variants = known if variants is None else list(variants)
    unknown = [v for v in variants if v not in known]
    if unknown or len(variants) < 2:
        raise ValueError(f"a router needs at least two variants of the table {known}; got {variants}")
    grid = metric_grid(df, variants, metric)
    infos = prompt_infos(df, prompts)
    ids = [str(p) for p in grid.index]
    groups: list[dict[str, Any]] = []
    extra: dict[str, dict[str, float]] = {p: {} for p in ids}
    for f in [features] if isinstance(features, (str, pd.DataFrame)) else list(features):
        if isinstance(f, str) and f in ("text", "facts"):
            groups.append({"kind": f})
            continue
        if isinstance(f, str) and f == "attention":
            if pipe is None:
                raise ValueError("features 'attention' need pipe= (the base model to read one sampling step of)")
            given = [prompts[p] if isinstance(prompts, Suite) else infos[p] for p in ids]  # entries keep their seeds
            f = attention_features(pipe, given, generate_kwargs=generate_kwargs)
        if not isinstance(f, pd.DataFrame):
            raise ValueError(f"unknown feature {f!r}: expected 'text', 'facts', 'attention' or a DataFrame by prompt")
        table = f.set_axis(f.index.astype(str))
        lacking = [p for p in ids if p not in table.index]
        if lacking:
            raise KeyError(f"feature table lacks prompts {lacking[:5]}")
        cols = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        spec = table.attrs.get("attnlens_feature") or {"kind": "table"}
        groups.append({**spec, "columns": cols})
        for p in ids:
            extra[p].update({c: float(table.loc[p, c]) for c in cols})
    if not groups:
        raise ValueError("a router needs at least one feature: 'text', 'facts', 'attention' or a table")
    adapters = {}
    if "adapter" in df.columns:
        for v in variants:
            row = df[df["variant"] == v].iloc[0]
            path = str(row["adapter"]) if str(row["adapter"]) not in ("", "nan") else None
            scale = row.get("adapter_scale", 1.0)
            adapters[v] = None if path is None else {"path": path, "scale": float(scale) if scale != "" else 1.0}
    raw = [raw_features(infos[p], groups, extra[p]) for p in ids]
    return Problem(ids, list(variants), grid.to_numpy(dtype=np.float64), raw, groups, metric, adapters)


def design(raw: Sequence[Raw], min_count: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Words kept (seen in at least ``min_count`` prompts), numeric columns kept (present everywhere, not constant),
    their means and scales."""
    counts: dict[str, int] = {}
    for tokens, _ in raw:
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
    vocab = sorted(t for t, c in counts.items() if c >= min_count and c < len(raw))
    names = [c for c in raw[0][1] if all(c in r[1] for r in raw)] if raw else []
    vals = np.array([[r[1][c] for c in names] for r in raw], dtype=np.float64).reshape(len(raw), len(names))
    mean, std = vals.mean(axis=0), vals.std(axis=0)
    keep = std > 1e-12
    return vocab, [c for c, k in zip(names, keep) if k], mean[keep], std[keep]


def matrix(raw: Sequence[Raw], vocab: Sequence[str], numeric: Sequence[str], mean, std) -> np.ndarray:
    """``[prompt, feature]``: words present (0/1), then standardized numeric features."""
    X = np.zeros((len(raw), len(vocab) + len(numeric)))
    col = {t: i for i, t in enumerate(vocab)}
    for i, (tokens, values) in enumerate(raw):
        for t in tokens:
            if t in col:
                X[i, col[t]] = 1.0
        if numeric:
            X[i, len(vocab) :] = (np.array([values[c] for c in numeric]) - mean) / std
    return X


def ridge(X: np.ndarray, Y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Intercept ``[V]`` and weights ``[d, V]`` of a ridge regression with an unpenalized intercept."""
    xm, ym = X.mean(axis=0), Y.mean(axis=0)
    n, d = X.shape
    if math.isinf(lam) or d == 0:
        W = np.zeros((d, Y.shape[1]))
    else:
        Xc, Yc = X - xm, Y - ym
        if d <= n:
            W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(d), Xc.T @ Yc)
        else:  # the dual form: n x n
            W = Xc.T @ np.linalg.solve(Xc @ Xc.T + lam * np.eye(n), Yc)
    return ym - xm @ W, W


def loo_routed_loss(X: np.ndarray, Y: np.ndarray, lam: float) -> float:
    """Mean metric of the variant a ridge fit on the other prompts picks for each prompt."""
    n = X.shape[0]
    total = 0.0
    for i in range(n):
        keep = np.arange(n) != i
        b, W = ridge(X[keep], Y[keep], lam)
        total += Y[i, int(np.argmin(b + X[i] @ W))]
    return total / n


def select_lambda(X: np.ndarray, Y: np.ndarray, lambdas: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The ``λ`` with the lowest leave-one-prompt-out routed loss (the largest among equal ones) and every loss."""
    if X.shape[0] < 3 or X.shape[1] == 0:
        return math.inf, {}
    losses = {float(lam): loo_routed_loss(X, Y, float(lam)) for lam in lambdas}
    best = min(losses.values())
    return max(lam for lam, v in losses.items() if v <= best + 1e-12), losses


def fit_on(problem: Problem, rows: Sequence[int], lambdas: Sequence[float], min_count: int) -> Router:
    """A router fitted on the prompts ``rows`` of ``problem`` (feature design, λ and weights from those alone)."""
    raw = [problem.raw[i] for i in rows]
    vocab, numeric, mean, std = design(raw, min_count)
    X, Y = matrix(raw, vocab, numeric, mean, std), problem.y[list(rows)]
    lam, losses = select_lambda(X, Y, lambdas)
    b, W = ridge(X, Y, lam)
    return Router(
        variants=list(problem.variants),
        features=[dict(g) for g in problem.groups],
        vocabulary=vocab,
        numeric=numeric,
        mean=mean,
        scale=std,
        intercept=b,
        weights=W,
        lam=lam,
        metric=problem.metric,
        adapters=dict(problem.adapters),
        fit={"prompts": len(rows), "loo_loss": {("inf" if math.isinf(k) else k): v for k, v in losses.items()}},
    )


class Router:
    """Picks a variant per prompt (see the module docstring). Build with :func:`fit_router`; save as JSON."""

    def __init__(
        self,
        variants: list[str],
        features: list[dict[str, Any]],
        vocabulary: list[str],
        numeric: list[str],
        mean: Any,
        scale: Any,
        intercept: Any,
        weights: Any,
        lam: float,
        metric: str = "wer",
        adapters: dict[str, Any] | None = None,
        fit: dict[str, Any] | None = None,
    ) -> None:
        self.variants = list(variants)
        self.features = features
        self.vocabulary = list(vocabulary)
        self.numeric = list(numeric)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(len(self.numeric))
        self.scale = np.asarray(scale, dtype=np.float64).reshape(len(self.numeric))
        self.intercept = np.asarray(intercept, dtype=np.float64).reshape(len(self.variants))
        d = len(self.vocabulary) + len(self.numeric)
        self.weights = np.asarray(weights, dtype=np.float64).reshape(d, len(self.variants))
        self.lam = float(lam)
        self.metric = metric
        self.adapters = dict(adapters or {})
        self.fit = dict(fit or {})

    @property
    def attention(self) -> AttentionSpec | None:
        """How to read the attention features, or None when the router reads none."""
        for g in self.features:
            if g["kind"] == "attention":
                return AttentionSpec.from_dict(g)
        return None

    def predict(self, infos: Sequence[PromptInfo], extra: Sequence[Mapping[str, float]] | None = None) -> pd.DataFrame:
        """Predicted metric ``[prompt, variant]``; ``extra[i]`` holds prompt ``i``'s attention / table columns."""
        tables = [g for g in self.features if g["kind"] == "table"]
        if tables and extra is None:
            raise ValueError(f"this router reads feature table columns {tables[0]['columns'][:3]}...: pass extra=")
        raw = [raw_features(info, self.features, None if extra is None else extra[i]) for i, info in enumerate(infos)]
        return pd.DataFrame(self.scores(raw), index=[i.id for i in infos], columns=self.variants)

    def scores(self, raw: Sequence[Raw]) -> np.ndarray:
        """Predicted metric ``[prompt, variant]`` of prompts' raw features (:func:`raw_features`)."""
        X = matrix(raw, self.vocabulary, self.numeric, self.mean, self.scale)
        return self.intercept + X @ self.weights

    def choose(self, info: PromptInfo, extra: Mapping[str, float] | None = None) -> str:
        """The variant with the lowest predicted metric for one prompt (the first of equal ones)."""
        scores = self.predict([info], None if extra is None else [extra]).iloc[0].to_numpy()
        return self.variants[int(np.argmin(scores))]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (a copy: changing it leaves the router as it is)."""
        d = {
            "format": FORMAT,
            "version": VERSION,
            "metric": self.metric,
            "variants": self.variants,
            "features": self.features,
            "vocabulary": self.vocabulary,
            "numeric": self.numeric,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "intercept": self.intercept.tolist(),
            "weights": self.weights.tolist(),
            "lambda": None if math.isinf(self.lam) else self.lam,
            "adapters": self.adapters,
            "fit": self.fit,
        }
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Router:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an attnlens router (format {d.get('format')!r}, expected {FORMAT!r})")
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"router version {d['version']} is newer than this attnlens reads ({VERSION})")
        lam = d["lambda"]
        return cls(
            variants=d["variants"],
            features=d["features"],
            vocabulary=d["vocabulary"],
            numeric=d["numeric"],
            mean=d["mean"],
            scale=d["scale"],
            intercept=d["intercept"],
            weights=d["weights"],
            lam=math.inf if lam is None else float(lam),
            metric=d.get("metric", "wer"),
            adapters=d.get("adapters") or {},
            fit=d.get("fit") or {},
        )

    def save(self, path: str | os.PathLike) -> str:
        """Write the router as JSON (atomically); returns the path."""
        from .store import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Router:
        """Read a router saved by :meth:`save` (JSON only)."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a JSON router file: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} holds a JSON {type(d).__name__}, not a router")
        return cls.from_dict(d)

    def __repr__(self) -> str:
        lam = "inf" if math.isinf(self.lam) else f"{self.lam:g}"
        kinds = "+".join(g["kind"] for g in self.features)
        return (
            f"Router({len(self.variants)} variants, features {kinds}: {len(self.vocabulary)} words, "
            f"{len(self.numeric)} numeric; lambda {lam})"
        )


def fit_router(
    results: pd.DataFrame,
    features: Any = ("text",),
    *,
    prompts: Any = None,
    pipe: Any = None,
    metric: str = "wer",
    variants: Sequence[str] | None = None,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    min_count: int = 2,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> Router:
    """Learn which variant to use per prompt from an evaluation table (lower ``metric`` is better).

    Args:
        results: rows of (prompt, variant, seed, metric), e.g. :func:`attnlens.eval.run`'s output; every variant
            scored on every prompt.
        features: any of ``"text"`` (the prompt's words), ``"facts"`` (lyric length, language, duration),
            ``"attention"`` (one sampling step of ``pipe``, see :func:`attention_features`), a table from
            :func:`attention_features`, or any DataFrame of numeric columns indexed by prompt id (such a router can
            only route prompts whose columns are given).
        prompts: the prompts' texts and lyrics: a :class:`~attnlens.eval.Suite` or a mapping; default the table's
            own columns (see :func:`~attnlens.eval.router_features.prompt_infos`).
        pipe: the base pipeline, for ``"attention"``.
        variants: the variants to choose among (default: all in the table).
        lambdas: the ridge penalties to choose from (``math.inf``: the best single variant).
        min_count: words seen in fewer training prompts are left out.
        generate_kwargs: pipeline arguments for the attention pass (as given to :func:`attnlens.eval.run`).

    The router records each variant's adapter (``adapter``, ``adapter_scale`` columns) when the table has them.
    Measure it before trusting it: :func:`attnlens.eval.evaluate_router`.
    """
    problem = build_problem(
        results, features, prompts=prompts, pipe=pipe, metric=metric, variants=variants, generate_kwargs=generate_kwargs
    )
    return fit_on(problem, range(len(problem.ids)), lambdas, min_count)
