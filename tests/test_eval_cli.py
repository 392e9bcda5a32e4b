"""`attnlens eval` command line: report from an existing table, merge of shards, variant parsing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attnlens.eval.cli import _parse_variant, main, register

SEED = Path(__file__).parent / "data" / "seed5way"


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_report_only_on_seed_table(tmp_path, capsys):
    shutil.copy(SEED / "results.csv", tmp_path / "results.csv")
    assert main(parse(["--report-only", "--out", str(tmp_path)])) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert round(summary["variants"]["lora"]["wer_mean"], 4) == 0.4651
    assert summary["winners"]["tally"]["lora"] == {"unique_wins": 10, "ties": 3, "mean": pytest.approx(0.46506)}
    md = (tmp_path / "report.md").read_text()
    assert "| lora | **46.51 [" in md and "Oracle (best variant per prompt) WER: 18.19%" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("<table>") == 4 and "<b>46.51" in html


def test_merge_via_cli(tmp_path):
    lines = (SEED / "results.csv").read_text().splitlines(keepends=True)
    header = lines[0].replace("style", "prompt_id")
    (tmp_path / "results.rank0.csv").write_text(header + "".join(lines[1:76]))
    (tmp_path / "results.rank1.csv").write_text(header + "".join(lines[76:]))
    assert main(parse(["--merge", "--out", str(tmp_path)])) == 0
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 151
    (tmp_path / "results.rank2.csv").write_text(header + lines[5])
    with pytest.raises(ValueError, match="is in both"):
        main(parse(["--merge", "--out", str(tmp_path)]))


def test_variant_syntax_and_missing_adapter(tmp_path):
    assert _parse_variant("baseline") == ("baseline", None)
    assert _parse_variant("lora=runs/x") == ("lora", "runs/x")
    assert _parse_variant("half=runs/x@0.5") == ("half", {"path": "runs/x", "scale": 0.5})
    with pytest.raises(FileNotFoundError, match="variant 'lora'"):
        main(parse(["--variant", "lora=" + str(tmp_path / "nope"), "--out", str(tmp_path), "--asr-model", "x"]))
