"""Write each ``examples/NN_*.py`` (cells separated by ``# %%`` lines) as ``examples/NN_*.ipynb``, outputs empty.

    python examples/build_notebooks.py            # rewrite the notebooks from their .py twins
    python examples/build_notebooks.py --check    # exit 1 if a notebook differs from its twin

``# %% [markdown]`` starts a Markdown cell whose lines are written as comments (``# text``); in a code cell, a
commented IPython line magic (``# %matplotlib inline``) becomes the magic itself. The ``.py`` file is the source;
edit it and rebuild. ``tests/test_notebooks.py`` checks that both agree and that the notebooks carry
no outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
TWIN = re.compile(r"^\d\d_[a-z0-9_]+\.py$")
_CELL = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")
_MAGIC = re.compile(r"^# (?P<magic>%matplotlib\b.*)$")


def twins(folder: Path = HERE) -> list[Path]:
    """The ``NN_name.py`` scripts of ``folder`` in order."""
    return sorted(p for p in folder.iterdir() if TWIN.match(p.name))


def split_cells(source: str) -> list[tuple[str, str]]:
    """``[(kind, text)]`` with kind ``"code"`` or ``"markdown"``; Markdown lines lose their leading ``# ``."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        m = _CELL.match(line)
        if m:
            cells.append(("markdown" if m.group("md") else "code", []))
            continue
        if not cells:
            if line.strip() and not line.startswith("# ruff: "):
                raise ValueError(f"text before the first '# %%' line: {line!r}")
            continue  # a leading lint directive (bare expressions display in notebooks) stays in the .py
        cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not (ln == "#" or ln.startswith("# "))]
            if bad:
                raise ValueError(f"a markdown cell line must start with '# ': {bad[0]!r}")
            lines = [ln[2:] for ln in lines]
        else:
            lines = [m.group("magic") if (m := _MAGIC.match(ln)) else ln for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook(script: Path) -> nbformat.NotebookNode:
    """The notebook of one ``.py`` twin (no outputs, no execution counts, Python 3 kernel)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, text) in enumerate(split_cells(script.read_text(encoding="utf-8"))):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(text)
        cell["id"] = f"{script.stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(script: Path) -> str:
    return nbformat.writes(notebook(script)) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the notebooks match their twins")
    args = ap.parse_args(argv)
    stale = []
    for script in twins():
        nb_path = script.with_suffix(".ipynb")
        text = render(script)
        current = nb_path.read_text(encoding="utf-8") if nb_path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(nb_path.name)
        else:
            write_atomic(nb_path, text)
            print(f"wrote {nb_path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python examples/build_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
