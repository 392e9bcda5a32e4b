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
    "align": "attnlens.analyzers.align_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only`` imports just that subcommand's module (a run needs none of the others' dependencies)."""
    parser = argparse.ArgumentParser(prog="attnlens", description="Look inside the cross-attention of ACE-Step.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:  # an optional dependency of that area is missing: say which
            if e.name == module_name:
                raise
            missing = e.name
            stub = sub.add_parser(name, help=f"(unavailable: needs the package {missing!r})")
            stub.set_defaults(func=lambda args, m=missing, n=name: _unavailable(n, m))
            continue
        module.register(sub)
    return parser


def _unavailable(command: str, package: str) -> int:
    print(f"attnlens {command}: needs the Python package {package!r}, which is not installed", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
