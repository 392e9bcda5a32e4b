"""The example notebooks: in sync with their ``.py`` twins, committed without outputs, and they run.

Each notebook is executed top to bottom with nbclient in a fresh Python kernel, in a temporary working directory,
on the CPU, in the default test run (80 s for all four on 2 idle CPU cores, 2026-11-26); the checks that they
match their twins and carry no outputs run too.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

NOTEBOOKS = ["01_quickstart", "02_heads", "03_training", "04_evaluation"]
SLOW: set[str] = set()  # each starts a kernel and builds a pipeline: about 20 s apiece on 2 idle CPU cores
# cells that must show a figure (index into the code cells, in order) — a plot that silently shows nothing fails
FIGURE_CELLS = {"01_quickstart": 5, "02_heads": 1}


def _nbformat():
    if importlib.util.find_spec("nbformat") is None:
        pytest.skip("nbformat not installed (pip install nbformat nbclient ipykernel)")
    import nbformat

    return nbformat


def test_every_twin_has_a_notebook_and_back():
    twins = {p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py")}
    notebooks = {p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.ipynb")}
    assert twins == notebooks == set(NOTEBOOKS), (twins, notebooks)


def test_notebooks_match_their_py_twins():
    _nbformat()
    from build_notebooks import render

    stale = [n for n in NOTEBOOKS if render(EXAMPLES / f"{n}.py") != (EXAMPLES / f"{n}.ipynb").read_text("utf-8")]
    assert not stale, f"rebuild with `python examples/build_notebooks.py`: {stale}"


def test_split_cells():
    _nbformat()
    from build_notebooks import split_cells

    src = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\n# %matplotlib inline\nx = 1  # %matplotlib\n\n\n# %%\ny = x\n"
    assert split_cells(src) == [
        ("markdown", "# Title\n\ntext"),
        ("code", "%matplotlib inline\nx = 1  # %matplotlib"),
        ("code", "y = x"),
    ]
    with pytest.raises(ValueError, match="start with '# '"):
        split_cells("# %% [markdown]\nnot a comment\n")
    with pytest.raises(ValueError, match="before the first"):
        split_cells("x = 1\n# %%\ny = 2\n")


def _outputs(text: str) -> list[str]:
    """Names of cells that carry outputs or execution counts."""
    nb = json.loads(text)
    return [
        c.get("id", str(i))
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]


def test_notebooks_are_stripped_in_the_tree_and_in_git():
    for n in NOTEBOOKS:
        assert not _outputs((EXAMPLES / f"{n}.ipynb").read_text("utf-8")), f"{n}.ipynb has outputs"
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: only the working tree was checked")
    for n in NOTEBOOKS:
        rel = f"examples/{n}.ipynb"
        for rev in (":", "HEAD:"):  # the staged and the committed version
            proc = subprocess.run([git, "show", f"{rev}{rel}"], cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                continue  # not staged / not committed yet
            assert not _outputs(proc.stdout), f"{rel} ({rev or 'index'}) was committed with outputs"


def _run(name: str, tmp_path: Path):
    nbformat = _nbformat()
    if importlib.util.find_spec("nbclient") is None or importlib.util.find_spec("ipykernel") is None:
        pytest.skip("nbclient / ipykernel not installed (pip install nbclient ipykernel)")
    from nbclient import NotebookClient

    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}, allow_errors=False
    )
    client.execute(cwd=str(tmp_path))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    if name in FIGURE_CELLS:
        cell = code[FIGURE_CELLS[name]]
        kinds = {k for o in cell.outputs for k in o.get("data", {})}
        assert "image/png" in kinds, f"{name}: code cell {FIGURE_CELLS[name]} showed no figure ({kinds})"
    return nb


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in NOTEBOOKS])
def test_notebook_runs(name, tmp_path):
    _run(name, tmp_path)
    if name == "01_quickstart":
        assert (tmp_path / "quickstart.attn").is_file()
    if name == "03_training":
        for run in ("plain", "entropy"):
            assert (tmp_path / "runs" / run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    if name == "04_evaluation":
        import pandas as pd

        for variant in ("baseline", "nudged"):
            res = pd.read_csv(tmp_path / "eval-demo" / variant / "results.csv")
            assert len(res) == 2 * 2 and set(res.variant) == {variant}  # prompts x seeds
        assert (tmp_path / "eval-demo" / "report.md").is_file()
