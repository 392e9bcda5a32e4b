"""``attnlens plot``: the figures of :mod:`attnlens.plot` from a saved capture."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KINDS = ("heads", "map", "scores", "explore")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _step(text: str) -> int | str:
    if text == "mean":
        return "mean"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--step takes an integer or 'mean', got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a saved capture (per-head grid, one map, layer × head scores, interactive explorer)",
        description="Make the figures of attnlens.plot from a capture saved with cap.save(path).",
    )
    p.add_argument("capture", help="capture file written by cap.save(...)")
    p.add_argument("--kind", choices=KINDS, default="heads", help="figure to draw (default: heads)")
    p.add_argument("--step", type=_step, default=-1, help="generation step (negative: from the end; 'mean')")
    p.add_argument("--layer", type=_ints, default=None, help="layer(s), comma-separated (default: all, averaged)")
    p.add_argument("--head", type=_ints, default=None, help="head(s), comma-separated (default: all)")
    p.add_argument("--batch", type=int, default=0, help="batch item (default 0)")
    p.add_argument("--keys", choices=("words", "lyrics", "all"), default="words", help="rows to show")
    p.add_argument("--pieces", action="store_true", help="show BPE pieces instead of merged words")
    p.add_argument("--lyric-norm", action="store_true", help="lyric-only renormalized map A = P[:, L] / sum")
    p.add_argument("--column", default="diagonal_score", help="analyzer column for --kind scores")
    p.add_argument("--out", default=None, help="output file (.png .svg .pdf .html); default next to the capture")
    p.add_argument("--dpi", type=float, default=None, help="raster resolution")
    p.set_defaults(func=run)


def _one(xs: list[int] | None) -> int | list[int] | None:
    return xs[0] if xs is not None and len(xs) == 1 else xs


def run(args: argparse.Namespace) -> int:
    from .. import plot
    from ..captures.io import load_capture
    from ..captures.result import NotCapturedError

    out = args.out or str(Path(args.capture).with_suffix("")) + f".{args.kind}" + (
        ".html" if args.kind == "explore" else ".png"
    )
    try:
        cap = load_capture(args.capture)
        norm = "lyric" if args.lyric_norm else None
        common = {"keys": args.keys, "merge": not args.pieces, "normalize": norm}
        if args.kind == "heads":
            fig = plot.heads(cap, args.step, layers=_one(args.layer), heads=args.head, batch=args.batch, **common)
        elif args.kind == "map":
            fig = plot.map(cap, args.step, _one(args.layer), _one(args.head), args.batch, **common)
        elif args.kind == "scores":
            from ..analyzers.table import analyze

            df = analyze(cap)
            step = None if args.step == "mean" else args.step
            fig = plot.scores(df, args.column, step=step, batch=args.batch)
        else:
            steps = None if args.step == "mean" else [args.step]
            fig = plot.explore(cap, steps=steps, layers=args.layer, heads=args.head, batch=args.batch, **common)
        path = plot.save(fig, out, dpi=args.dpi)
    except (NotCapturedError, ValueError, IndexError, TypeError, OSError, RuntimeError) as e:
        print(f"attnlens plot: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
