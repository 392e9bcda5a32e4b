"""Write ``summary.json`` and a Markdown + simple HTML report from a results table."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .stats import compare, headline_table, prompt_column, summarize, winners
from .store import atomic_write_text


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return _clean(x.item())
    return x


def build_summary(results: pd.DataFrame, baseline: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data."""
    summ = summarize(results, seed=seed)
    variants = list(summ.index)
    if baseline is None:
        baseline = "baseline" if "baseline" in variants else variants[0]
    out: dict[str, Any] = {
        "variants": {v: {k: _clean(val) for k, val in summ.loc[v].items()} for v in variants},
        "baseline": baseline,
        "comparisons": {},
    }
    if "wer" in results.columns:
        try:
            w = winners(results, "wer")
        except ValueError as e:  # incomplete grid: report it rather than guess
            out["winners"] = {"error": str(e)}
        else:
            out["winners"] = {
                "oracle_wer": w.oracle,
                "tally": {
                    str(v): {"unique_wins": int(r["unique_wins"]), "ties": int(r["ties"]), "mean": float(r["mean"])}
                    for v, r in w.tally.iterrows()
                },
                "per_prompt": {str(p): {"best": r["best"], "wer": r["value"]} for p, r in w.per_prompt.iterrows()},
            }
        for v in variants:
            if v != baseline:
                c = compare(results, v, baseline, "wer", seed=seed)
                out["comparisons"][f"{v} vs {baseline}"] = {k: _clean(x) for k, x in c.items()}
    return out


def markdown_report(results: pd.DataFrame, summary: dict[str, Any], title: str = "attnlens evaluation") -> str:
    summ = pd.DataFrame(summary["variants"]).T
    lines = [f"# {title}", "", f"{len(results)} rows; mean with 95% bootstrap interval over prompts.", ""]
    lines += [headline_table(summ, ci=True), ""]
    win = summary.get("winners", {})
    if "tally" in win:
        lines += ["## Per-prompt winners (lowest WER; equal lowest = tie)", ""]
        lines += ["| Variant | Unique wins | Ties | Mean WER (%) |", "|---|---|---|---|"]
        for v, r in win["tally"].items():
            lines.append(f"| {v} | {r['unique_wins']} | {r['ties']} | {100 * r['mean']:.2f} |")
        lines += ["", f"Oracle (best variant per prompt) WER: {100 * win['oracle_wer']:.2f}%", ""]
    elif "error" in win:
        lines += ["## Per-prompt winners", "", f"Not computed: {win['error']}", ""]
    if summary["comparisons"]:
        lines += ["## Paired comparisons (WER, variant minus baseline; Wilcoxon signed-rank)", ""]
        lines += [
            "| Pair | n | Mean diff (pp) | 95% CI (pp) | better / worse / equal | p |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in summary["comparisons"].items():
            lines.append(
                f"| {name} | {c['n_pairs']} | {100 * c['mean_diff']:+.2f} | "
                f"[{100 * c['ci_lo']:+.2f}, {100 * c['ci_hi']:+.2f}] | "
                f"{c['a_better']} / {c['b_better']} / {c['equal']} | {c['p_value']:.4f} |"
            )
        lines.append("")
    if "wer" in results.columns:
        pcol = prompt_column(results)
        grid = results.pivot_table(index=pcol, columns="variant", values="wer", aggfunc="mean", sort=False)
        lines += ["## WER per prompt (mean over seeds)", ""]
        lines += ["| Prompt | " + " | ".join(map(str, grid.columns)) + " |", "|---" * (len(grid.columns) + 1) + "|"]
        for p, r in grid.iterrows():
            lines.append(f"| {p} | " + " | ".join("" if pd.isna(x) else f"{x:.4f}" for x in r) + " |")
    return "\n".join(lines) + "\n"


def html_report(markdown: str, title: str = "attnlens evaluation") -> str:
    """A dependency-free HTML page: Markdown tables become HTML tables, other lines paragraphs/headings."""
    body: list[str] = []
    table: list[list[str]] = []
    pre = False

    def flush() -> None:
        if table:
            head, rows = table[0], table[2:]
            body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>")
            body.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            body.append("</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            body.append("</pre>" if pre else "<pre>")
            pre = not pre
            continue
        if pre:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
            cells = [f"<b>{c[2:-2]}</b>" if c.startswith("**") and c.endswith("**") else c for c in cells]
            table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    results: pd.DataFrame, out_dir: str | os.PathLike, title: str = "attnlens evaluation", baseline: str | None = None
) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` and ``report.html`` into ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(results, baseline=baseline)
    md = markdown_report(results, summary, title)
    paths = {"summary": out / "summary.json", "markdown": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=_clean))
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["html"], html_report(md, title))
    return paths
