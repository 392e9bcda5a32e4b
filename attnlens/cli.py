"""The ``attnlens`` command line. Each area registers its own subcommand (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines ``register(subparsers)``
SUBCOMMANDS: dict[str, str] = {
    "demo": "attnlens.demo.cli",
    "plot": "attnlens.plot.cli",
    "train": "attnlens.train.cli",
    "eval": "attnlens.eval.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlens", description="Look inside the cross-attention of ACE-Step.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
