"""``attnlens align``: word (or character) timings of a saved capture, written as enhanced LRC, SRT, WebVTT or
JSON (:mod:`attnlens.analyzers.lyric_files`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..plot.cli import _step  # --step: an integer or "mean", read as `attnlens plot` reads it
from .lyric_files import FORMATS


def _heads(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(
            f"--heads takes LAYER:HEAD pairs, comma-separated (e.g. 1:0,2:3); got {text!r}"
        )
    return [(int(a), int(b)) for a, b in pairs]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="word timings of a saved capture as LRC, SRT, WebVTT or JSON",
        description=(
            "Time the sung words (characters in Chinese, Japanese and Korean) of a capture saved with cap.save(path) "
            "from the maps of alignment heads (al.align), and write them for a player."
        ),
    )
    p.add_argument("capture", help="capture file written by cap.save(...), with the maps of the heads used")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from --out, else lrc)")
    p.add_argument(
        "--out", "-o", default=None, help="output file; '-' for standard output (default: beside the capture)"
    )
    p.add_argument(
        "--heads",
        type=_heads,
        default=None,
        help="LAYER:HEAD pairs, comma-separated (default: the top --top-k of al.find_alignment_heads)",
    )
    p.add_argument("--top-k", type=int, default=4, help="heads chosen when --heads is not given (default 4)")
    p.add_argument("--step", type=_step, default=-1, help="generation step (negative: from the end; 'mean')")
    p.add_argument("--batch", type=int, default=0, help="batch item (default 0)")
    p.add_argument("--recipe", choices=("whisper", "song"), default="whisper", help="alignment recipe")
    p.add_argument("--level", choices=("line", "word"), default="line", help="SRT/WebVTT: a cue per line or per unit")
    p.add_argument("--lines-only", action="store_true", help="LRC: one stamp per line, no word stamps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..captures.io import load_capture
    from ..captures.result import NotCapturedError
    from . import lyric_files
    from .align import align
    from .heads import find_alignment_heads

    try:
        fmt = lyric_files.format_of(args.out, args.format) if args.out not in (None, "-") else args.format or "lrc"
        cap = load_capture(args.capture)
        heads = args.heads
        if heads is None:
            heads = find_alignment_heads(cap, top_k=args.top_k).attrs["heads"]
        aln = align(cap, heads=heads, step=args.step, batch=args.batch, recipe=args.recipe)
    except (NotCapturedError, ValueError) as e:
        print(f"attnlens align: {e}", file=sys.stderr)
        return 2
    kw = {"words": not args.lines_only} if fmt == "lrc" else {"level": args.level} if fmt in ("srt", "vtt") else {}
    heads_txt = ",".join(f"{a}:{b}" for a, b in aln.heads)
    info = f"{len(aln.words)} {aln.units} in {len(aln.lines)} lines, heads {heads_txt}"
    if args.out == "-":
        text = lyric_files.render(aln, fmt, **kw)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        print(f"attnlens align: {info}", file=sys.stderr)
        return 0
    out = Path(args.out) if args.out else Path(args.capture).with_suffix(f".{fmt}")
    lyric_files.write(aln, out, format=fmt, **kw)
    print(f"wrote {out} ({fmt}): {info}")
    return 0
