"""Compare two runs of ``profile_fused.py`` (e.g. the kernel of an earlier commit and the current one, run one after
the other on one machine): GPU time per layer of every configuration and shape the two runs share, and the ratio
``after / before`` (below 1: faster). Configurations are matched by their fields; a label's ``v2_`` prefix (the
naming of the time when the library held two kernels) is dropped.

    python benchmarks/compare_fused.py before.json after.json [--out ratios.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _key(config: dict) -> tuple:
    """A configuration's fields, without ``kernel`` (the field that named the kernel when there were two)."""
    return tuple(sorted((k, v) for k, v in config.items() if k != "kernel"))


def compare(before: dict, after: dict) -> list[dict]:
    """Rows ``{config, shape, before_ms, after_ms, ratio}`` for the configurations and shapes of both runs."""

    def v2(run: dict) -> dict:
        return {label: r for label, r in run["results"].items() if r["config"].get("kernel", "v2") == "v2"}

    old = {_key(r["config"]): r for r in v2(before).values()}
    rows = []
    for label, rec in v2(after).items():
        prev = old.get(_key(rec["config"]))
        if prev is None:
            continue
        for shape, cur in rec["shapes"].items():
            ms0 = prev["shapes"].get(shape, {}).get("ms_per_layer")
            ms1 = cur.get("ms_per_layer")
            if ms0 and ms1:
                rows.append(dict(config=label.removeprefix("v2_"), shape=shape, before_ms=ms0, after_ms=ms1,
                                 ratio=ms1 / ms0))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, help="JSON file for the rows")
    args = ap.parse_args()
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    print(f"before: {before['device']}, Triton {before['triton']}; after: {after['device']}, Triton {after['triton']}")
    rows = compare(before, after)
    for r in rows:
        print(
            f"  {r['config']:52s} {r['shape']:14s} {r['before_ms']:8.4f} -> {r['after_ms']:8.4f} ms  {r['ratio']:.3f}"
        )
    if args.out:
        args.out.write_text(json.dumps({"before": str(args.before), "after": str(args.after), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
