"""Evaluation results files: torn records of multi-line transcriptions, and resuming over a damaged file.

- a transcription holding line ends (quoted by the CSV writer) torn by a kill at any byte of its row: the committed
  rows read exactly, the torn record left out with a warning (``read_results``) or cut off and kept in
  ``.results.csv.torn`` (the resume), however the file happens to end (inside the quotes right after a line end,
  inside a multi-byte character);
- a resumed ``attnlens.eval.run`` over a damaged ``results.csv`` (a seed that is not an integer, a short row in the
  middle, non-UTF-8 bytes, a pickle, a FIFO) raises ``ResultsFileError`` naming the file and the row, as
  ``read_results`` does;
- fuzzing (hypothesis, derandomized, ``max_examples`` explicit: 100 by default, 2000 with ``-m slow``): random rows
  (text with line ends, quotes, commas, non-ASCII) appended by the store, the file cut at a random byte; reading it
  must give exactly the rows committed before the cut, never an error.
"""

from __future__ import annotations

import os
import pickle
import warnings

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_eval_runner import FakeASR, FakePipe, make_suite, strip_timing
from test_reliability_files import _fuzz, alarm

from attnlens.eval import run
from attnlens.eval.store import ResultsFileError, RowStore, read_results

FUZZ_DEFAULT, FUZZ_SLOW = 100, 2000
COLUMNS = ["prompt_id", "variant", "seed", "wer", "transcription"]


def _rows(texts):
    return [{"prompt_id": f"p{i}", "variant": "base", "seed": i, "wer": i / 4, "transcription": t} for i, t in
            enumerate(texts)]  # fmt: skip


def _write(path, rows):
    store = RowStore(path)
    for r in rows:
        store.add(r)
    return path.read_bytes()


def _committed_rows(rows, raw, cut):
    """The rows whose complete line lies before byte ``cut`` of ``raw`` (the file written row by row)."""
    header = len(raw) - sum(len(_line_bytes(r)) for r in rows)
    n, end = 0, header
    for r in rows:
        end += len(_line_bytes(r))
        if end <= cut:
            n += 1
    return rows[:n], header


def _line_bytes(row):
    from attnlens.eval.store import _line

    return _line(row[c] for c in COLUMNS).encode("utf-8")


def _check_cut(path, rows, raw, cut):
    """Cut the file at ``cut``: read_results and RowStore see exactly the committed rows; nothing raises."""
    path.write_bytes(raw[:cut])
    want, header = _committed_rows(rows, raw, cut)
    if cut < header:
        return  # the header itself was cut: covered by the header tests
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_results(path)
    assert list(df.prompt_id) == [r["prompt_id"] for r in want]
    assert list(df.transcription) == [r["transcription"] for r in want]
    torn = cut > header + sum(len(_line_bytes(r)) for r in want)
    assert any("cut short" in str(w.message) for w in caught) == torn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = RowStore(path)
    assert sorted(store.rows) == sorted((r["prompt_id"], "base", r["seed"]) for r in want)
    assert path.read_bytes() == raw[: header + sum(len(_line_bytes(r)) for r in want)]
    keep = path.with_name(".results.csv.torn")
    if torn:
        assert keep.read_bytes() == raw[len(path.read_bytes()) : cut]
        keep.unlink()
    for r in rows[len(want) :]:  # the rerun appends the rest: the file is whole again
        store.add(r)
    assert path.read_bytes() == raw


LAST = 'one\ntwo, "three"\nfour café で\n'


def test_torn_multiline_transcription_at_every_byte(tmp_path):
    path = tmp_path / "results.csv"
    rows = _rows(["la la", 'he said "hi"', LAST])
    raw = _write(path, rows)
    start = len(raw) - len(_line_bytes(rows[-1]))
    assert raw[start:].count(b"\n") == 4  # three quoted line ends and the record's own
    for cut in range(start, len(raw) + 1):
        _check_cut(path, rows, raw, cut)


def test_issue_case_cut_right_after_a_line_end_inside_quotes(tmp_path):
    path = tmp_path / "results.csv"
    rows = _rows(["la la", LAST])
    raw = _write(path, rows)
    cut = raw.index(b"one\n") + 4  # the file ends with "\n", inside the quoted transcription
    path.write_bytes(raw[:cut])
    with pytest.warns(UserWarning, match=r"results.csv: the last record was cut short.*'p1,base,1,0.25,\"one\\n'"):
        df = read_results(path)
    assert list(df.prompt_id) == ["p0"]


def test_resume_over_torn_multiline_row_equals_uninterrupted_run(tmp_path):
    suite = make_suite(3)

    class LinesASR(FakeASR):
        def transcribe(self, audio, sr):
            return super().transcribe(audio, sr).replace(" ", '\n"')  # a line end and a quote between words

    ref = run(FakePipe(suite), suite, seeds=[0], transcriber=LinesASR(suite), out_dir=tmp_path / "ref", progress=False)
    out = tmp_path / "cut"
    run(FakePipe(suite), suite, seeds=[0], transcriber=LinesASR(suite), out_dir=out, progress=False)
    raw = (out / "results.csv").read_bytes()
    inside = raw.rindex(b"\n", 0, len(raw) - 1)  # a line end inside the last row's quoted transcription
    assert raw[inside - 5 : inside] == b"small"
    (out / "results.csv").write_bytes(raw[: inside + 1])
    with pytest.warns(UserWarning, match="cut short"):
        res = run(FakePipe(suite), suite, seeds=[0], transcriber=LinesASR(suite), out_dir=out, progress=False)
    pd.testing.assert_frame_equal(strip_timing(res), strip_timing(ref))
    assert "\n" in res.transcription[0] and '"' in res.transcription[0]


def test_carriage_returns_in_a_transcription_round_trip(tmp_path):
    """A bare "\r" went out unquoted (the writer's terminator was "\n") and read back as a line end."""
    path = tmp_path / "results.csv"
    texts = ["a\rb", "\r", "x\r\ny", "plain"]
    _write(path, _rows(texts))
    assert list(read_results(path).transcription) == texts
    assert [RowStore(path).rows[(f"p{i}", "base", i)]["transcription"] for i in range(4)] == texts


# ------------------------------------------------------------------------------------ resume over damage


def _damage_seed(text):
    return text.replace(
        "\np1,p1,baseline,0,", "\np1,p1,baseline,zero,", 1
    ), r"row 2 has seed 'zero'; a seed is an integer"


def _damage_short_row(text):
    lines = text.splitlines(keepends=True)
    return lines[0] + "p0,p0\n" + "".join(lines[1:]), r"row 1 has 2 fields but the header has \d+"


def _damage_utf8(text):
    lines = text.encode().splitlines(keepends=True)
    return lines[0] + lines[1] + b"p9,\xff\xfe,baseline\n" + b"".join(
        lines[2:]
    ), r"not a UTF-8 text \(CSV\) file: line 3"


def _damage_pickle(text):
    return pickle.dumps({"rows": text}), "looks like a pickle"


def _damage_duplicate(text):
    lines = text.splitlines(keepends=True)
    return "".join(lines + [lines[1]]), r"2 rows share a key .*\(rows 1 and 4\)"


DAMAGE = {"seed": _damage_seed, "short-row": _damage_short_row, "utf8": _damage_utf8, "pickle": _damage_pickle,
          "duplicate": _damage_duplicate}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    suite = make_suite(3)
    out = tmp_path_factory.mktemp("done")
    run(FakePipe(suite), suite, seeds=[0], transcriber=FakeASR(suite), out_dir=out, progress=False)
    return suite, (out / "results.csv").read_text()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_over_damaged_results_names_file_and_row(tmp_path, finished, damage):
    suite, text = finished
    content, message = DAMAGE[damage](text)
    path = tmp_path / "results.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ResultsFileError, match=message) as e:
        run(FakePipe(suite), suite, seeds=[0], transcriber=FakeASR(suite), out_dir=tmp_path, progress=False)
    assert str(path) in str(e.value)
    with pytest.raises(ResultsFileError, match=message):
        read_results(path)


def test_resume_refuses_a_fifo(tmp_path, finished):
    suite, _ = finished
    os.mkfifo(tmp_path / "results.csv")
    with alarm(5):  # reading a FIFO blocked until a writer came
        with pytest.raises(ResultsFileError, match=r"results.csv is a FIFO \(named pipe\), not a regular file"):
            run(FakePipe(suite), suite, seeds=[0], transcriber=FakeASR(suite), out_dir=tmp_path, progress=False)
        with pytest.raises(ResultsFileError, match="FIFO"):
            read_results(tmp_path / "results.csv")


# ------------------------------------------------------------------------------------------------ fuzzing

_text = st.text(alphabet=st.sampled_from(list('ab \n\r",;é で\t')), max_size=30)
_COUNT = {"cases": 0}


def _run_fuzz(n, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-results")
    path = d / "results.csv"
    start = _COUNT["cases"]

    @_fuzz(n)
    @given(st.lists(_text, min_size=1, max_size=4), st.floats(0, 1))
    def check(texts, where):
        for p in d.iterdir():
            p.unlink()
        rows = _rows(texts)
        raw = _write(path, rows)
        header = raw.index(b"\n") + 1
        _check_cut(path, rows, raw, header + int(where * (len(raw) - header)))
        _COUNT["cases"] += 1

    check()
    tried = _COUNT["cases"] - start
    print(f"fuzz results:torn: {tried} files cut at a random byte, all read as their committed rows")
    assert tried >= 0.9 * n


def test_fuzz_torn_results(tmp_path_factory):
    _run_fuzz(FUZZ_DEFAULT, tmp_path_factory)


@pytest.mark.slow
def test_fuzz_torn_results_long(tmp_path_factory):
    _run_fuzz(FUZZ_SLOW, tmp_path_factory)
