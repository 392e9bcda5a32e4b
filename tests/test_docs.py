"""The documentation builds and its code runs.

- ``mkdocs build --strict`` (API reference from the docstrings included) builds without a warning;
- every ```` ```python ```` block of README.md, docs/guide.md, docs/families.md and docs/interventions.md runs, in order, one namespace per file, in a
  temporary working directory; a block whose first line is ``# not run: <reason>`` is skipped (and must give a
  reason);
- README's relative links point at files that exist.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = re.compile(r"^#\s*not run:\s*(?P<reason>.*)$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


def code_blocks(text: str, lang: str = "python") -> list[tuple[int, str]]:
    """``[(line number of the opening fence, code)]`` of the fenced blocks of ``lang`` (top-level fences only)."""
    blocks, current, start, open_lang = [], [], 0, None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if open_lang is None:
            if m and m.group("lang"):
                open_lang, start, current = m.group("lang"), i, []
            elif m:
                raise ValueError(f"line {i}: a code fence without a language; write ```python, ```bash, ...")
        elif line.strip() == "```":
            if open_lang == lang:
                blocks.append((start, "\n".join(current)))
            open_lang = None
        else:
            current.append(line)
    if open_lang is not None:
        raise ValueError(f"line {start}: code fence never closed")
    return blocks


def skip_reason(code: str) -> str | None:
    """The reason of a ``# not run: ...`` first line, else None (a marker without a reason raises)."""
    first = code.strip().splitlines()[0] if code.strip() else ""
    m = SKIP_MARK.match(first.strip())
    if m is None:
        return None
    if not m.group("reason").strip():
        raise ValueError("'# not run:' must say why, e.g. '# not run: needs real weights'")
    return m.group("reason").strip()


# ----------------------------------------------------------------------------------------------- the extractor
def test_code_blocks_extracts_python_only_and_line_numbers():
    text = "intro\n```python\na = 1\n```\n\n```bash\nls\n```\n    ```python\n    indented\n    ```\n```python\nb = a\n```\n"
    assert code_blocks(text) == [(2, "a = 1"), (12, "b = a")]
    assert code_blocks(text, "bash") == [(6, "ls")]
    with pytest.raises(ValueError, match="never closed"):
        code_blocks("```python\nx = 1\n")
    with pytest.raises(ValueError, match="without a language"):
        code_blocks("```\nx\n```\n")


def test_skip_marker_needs_a_reason():
    assert skip_reason("# not run: needs real weights\nimport torch") == "needs real weights"
    assert skip_reason("import torch\n# not run: late marker is code") is None
    with pytest.raises(ValueError, match="must say why"):
        skip_reason("# not run:\nx = 1")


# ----------------------------------------------------------------------------------------------- running blocks
def run_blocks(path: Path, tmp_path: Path, monkeypatch) -> list[str]:
    """Execute the python blocks of ``path`` in order in one namespace; returns the skip reasons."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns: dict = {"__name__": "__docs__"}
    skipped = []
    blocks = code_blocks(path.read_text(encoding="utf-8"))
    assert blocks, f"{path.name} has no python blocks"
    for line, code in blocks:
        reason = skip_reason(code)
        if reason is not None:
            skipped.append(reason)
            continue
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), ns)
        except Exception as e:  # name the block that failed
            raise AssertionError(
                f"{path.relative_to(ROOT)}, block at line {line} failed: {type(e).__name__}: {e}"
            ) from e
    return skipped


def test_readme_blocks_run(tmp_path, monkeypatch):
    skipped = run_blocks(ROOT / "README.md", tmp_path, monkeypatch)
    assert len(skipped) <= 1, f"README skips {len(skipped)} blocks: {skipped}"
    assert (tmp_path / "run.attn").is_file()  # the README example saved its capture where we ran it


def test_interventions_blocks_run(tmp_path, monkeypatch):
    assert run_blocks(ROOT / "docs" / "interventions.md", tmp_path, monkeypatch) == []


def test_families_blocks_run(tmp_path, monkeypatch):
    assert run_blocks(ROOT / "docs" / "families.md", tmp_path, monkeypatch) == []


def test_guide_blocks_run(tmp_path, monkeypatch):
    skipped = run_blocks(ROOT / "docs" / "guide.md", tmp_path, monkeypatch)
    assert skipped == ["needs real weights"], skipped
    # what the guide's blocks wrote, in the temporary directory
    for name in (
        "run.attn",
        "head_report.json",
        "lyric_mass.png",
        "explore.html",
        "eval/results.csv",
        "eval/report.md",
        "runs/guide/adapter/pytorch_lora_weights.safetensors",
    ):
        assert (tmp_path / name).is_file(), name


# ----------------------------------------------------------------------------------------------- links
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [m.group("target") for m in LINK.finditer(text)]
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+://|^mailto:|^#", t)]
    assert local, "README links into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


# ----------------------------------------------------------------------------------------------- mkdocs
def _have(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def test_mkdocs_build_strict(tmp_path):
    missing = _have("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install mkdocs mkdocstrings mkdocstrings-python)")
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--clean",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-4000:]}"
    assert "WARNING" not in log, log[-4000:]
    # the API reference was generated from the docstrings, not left empty
    api = (site / "api" / "capture" / "index.html").read_text(encoding="utf-8")
    assert "Capture cross-attention from a pipeline" in api  # first line of attnlens.capture's docstring
    metrics = (site / "api" / "metrics" / "index.html").read_text(encoding="utf-8")
    assert "switch_rate" in metrics and "monotonic_alignment" in metrics
    for page in ("guide", "performance", "install", "metrics/entropy", "plotting", "evaluation", "training"):
        assert (site / page / "index.html").is_file(), page
