"""Append-only, crash-safe CSV of result rows.

Commit protocol for one row: its artifacts (audio/latents) are written atomically first (temp file + ``os.replace``),
then the row is appended as one complete line, flushed and ``fsync``-ed. The row is the commit record: a crash
before the append leaves an orphan artifact that a rerun overwrites; a crash during the append leaves a torn last
record that :class:`RowStore` cuts off when it opens the file (keeping the cut bytes in ``.<name>.torn``, with a
warning). A rerun therefore never duplicates a row and never keeps half a row.

A record ends at a line end outside quotes (:func:`split_torn`): a transcription holding a line end is quoted, and
a kill inside it leaves an unterminated quoted field, which is torn however the file happens to end. Both the
resume (:class:`RowStore`) and :func:`read_results` read through :func:`parse_results`, which refuses anything that
is not such a file with :class:`ResultsFileError` naming the file and the row.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import NotARegularFileError, atomic_write_bytes, atomic_write_text, fsync_dir, open_regular  # noqa: F401

KEY_COLUMNS: tuple[str, ...] = ("prompt_id", "variant", "seed")
TEXT_COLUMNS: tuple[str, ...] = (
    "prompt_id",
    "style",
    "genre",
    "variant",
    "language",
    "transcription",
    "ground_truth",
    "adapter",
    "batch_ids",
    "artifact",
)


def _line(values: Iterable[Any]) -> str:
    """One CSV record ending in ``"\n"``. A field holding a line end of either kind (``"\n"``, ``"\r"``) or a quote
    or comma is quoted: written with ``"\r\n"`` as the terminator, which makes both characters special to the
    writer (with ``"\n"`` alone a bare ``"\r"`` went out unquoted and read back as a line end)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue()[:-2] + "\n"


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (str(row["prompt_id"]), str(row["variant"]), int(row["seed"]))


class ResultsFileError(ValueError):
    """A file that is not a valid results CSV (a pickle, not UTF-8 text, ragged rows, missing or duplicated keys)."""


PROMPT_KEY_COLUMNS: tuple[str, ...] = ("prompt_id", "style", "genre")  # the first present names the prompt


def split_torn(text: str) -> tuple[str, str]:
    """``(committed, torn)``: ``text`` up to its last record end (a line end outside quotes, as the ``csv`` module
    reads it) and what follows it (a record whose write was cut short, or ``""``)."""
    end = 0
    state = 0  # 0 start of a field, 1 in an unquoted field, 2 in a quoted field, 3 a quote inside a quoted field
    for i, c in enumerate(text):
        if state == 2:
            if c == '"':
                state = 3
        elif c == "\n":
            end, state = i + 1, 0
        elif c == ",":
            state = 0
        elif state == 0 and c == '"':
            state = 2
        elif state == 3 and c == '"':
            state = 2  # a doubled quote inside a quoted field
        else:
            state = 1
    return text[:end], text[end:]


def parse_results(path: Path, raw: bytes | None = None) -> tuple[list[str], list[list[str]], bytes]:
    """``(header, rows, torn tail bytes)`` of a results CSV, checked: a regular file of UTF-8 CSV text (no pickle, no NUL),
    a header with ``variant`` and a prompt column (``prompt_id``, ``style`` or ``genre``) and unique names, every
    row as long as the header, an integer ``seed`` and no key (prompt, variant, seed) twice. A torn last record is
    returned apart, never parsed as a row. Anything else is :class:`ResultsFileError` naming the file and row."""
    raw = _read_bytes(path) if raw is None else raw
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise ResultsFileError(
            f"{path} looks like a pickle / zip file; results are CSV text (attnlens never loads pickles)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason != "unexpected end of data" or e.end != len(raw):
            line = raw[: e.start].count(b"\n") + 1
            raise ResultsFileError(
                f"{path} is not a UTF-8 text (CSV) file: line {line}, byte {e.start}: {e.reason}"
            ) from None
        text = raw[: e.start].decode("utf-8")  # a character cut short at the very end: in the torn last record
    if "\x00" in text:
        raise ResultsFileError(f"{path} holds NUL bytes: not a CSV text file (or damaged)")
    text, _ = split_torn(text)
    torn_bytes = raw[len(text.encode("utf-8")) :]  # with a character cut short at the very end
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise ResultsFileError(f"{path}: not a valid CSV file ({e})") from None
    if not records or not records[0]:
        raise ResultsFileError(f"{path} is empty: no header line")
    header, rows = records[0], records[1:]
    prompt_cols = [c for c in PROMPT_KEY_COLUMNS if c in header]
    if "variant" not in header or not prompt_cols:
        raise ResultsFileError(
            f"{path}: not a results file (header {header[:8]}); expected a 'variant' column and one of "
            f"{list(PROMPT_KEY_COLUMNS)}"
        )
    if len(set(header)) != len(header):
        raise ResultsFileError(f"{path}: duplicated column names in the header {header}")
    ragged = [(i, len(r)) for i, r in enumerate(rows, start=1) if len(r) != len(header)]
    if ragged:
        i, n = ragged[0]
        raise ResultsFileError(
            f"{path}: row {i} has {n} fields but the header has {len(header)} ({len(ragged)} such row(s)); "
            "the file is damaged or was edited by hand"
        )
    keys = [header.index(c) for c in (prompt_cols[0], "variant", "seed") if c in header]
    seen: dict[tuple, int] = {}
    for i, r in enumerate(rows, start=1):
        if "seed" in header and not _is_int(r[header.index("seed")]):
            raise ResultsFileError(f"{path}: row {i} has seed {r[header.index('seed')]!r}; a seed is an integer")
        key = tuple(r[k] if header[k] != "seed" else int(r[k]) for k in keys)
        if key in seen:
            names = [header[k] for k in keys]
            raise ResultsFileError(f"{path}: 2 rows share a key {names} (rows {seen[key]} and {i}): {list(key)}")
        seen[key] = i
    return header, rows, torn_bytes


def _read_bytes(path: Path) -> bytes:
    try:
        with open_regular(path) as f:
            return f.read()
    except NotARegularFileError as e:
        raise ResultsFileError(f"{e}; a results file is a regular CSV file") from None


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _torn_warning(path: Path, torn: bytes, kept: str = "", stacklevel: int = 3) -> None:
    warnings.warn(
        f"{path}: the last record was cut short (a write was interrupted: no line end outside quotes); left out"
        f"{kept}: {torn[:80].decode('utf-8', 'replace')!r}",
        stacklevel=stacklevel,
    )


class RowStore:
    """One results CSV. ``add(row)`` appends durably; ``done`` holds the keys already written.

    Opening an existing file reads it with :func:`parse_results` (a damaged file is :class:`ResultsFileError`
    naming the file and row); a torn last record is cut off, its bytes kept in ``.<name>.torn``, with a warning."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        if self.path.exists():
            self._repair_and_load()

    def _repair_and_load(self) -> None:
        raw = _read_bytes(self.path)
        if not raw:
            self.path.unlink()
            return
        header, rows, torn = parse_results(self.path, raw)
        if torn:
            # a crash cut the last append short: the record was never committed; cut it off (keeping its bytes)
            keep = self.path.with_name(f".{self.path.name}.torn")
            atomic_write_bytes(keep, torn)
            _torn_warning(self.path, torn, f" (kept in {keep.name})", stacklevel=4)
            cut = len(raw) - len(torn)
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        missing = [c for c in KEY_COLUMNS if c not in header]
        if missing:
            raise ResultsFileError(f"{self.path}: not a results file of attnlens.eval (missing columns {missing})")
        self.columns = list(header)
        for r in rows:
            rec = dict(zip(header, r))
            self.rows[row_key(rec)] = rec

    @property
    def done(self) -> set[tuple[str, str, int]]:
        return set(self.rows)

    def add(self, row: dict[str, Any]) -> None:
        key = row_key(row)
        if key in self.rows:
            raise ValueError(f"row {key} is already in {self.path}")
        if self.columns is None:
            self.columns = list(row)
            atomic_write_text(self.path, _line(self.columns))
        if set(row) != set(self.columns):
            extra, lost = sorted(set(row) - set(self.columns)), sorted(set(self.columns) - set(row))
            raise ValueError(
                f"row {key} has columns that differ from {self.path}'s header (new {extra}, missing {lost}); "
                "a scorer must return the same keys every time, and a resumed run must use the same scorer"
            )
        line = _line(row[c] for c in self.columns)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.rows[key] = {c: str(row[c]) for c in self.columns}


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV: text columns stay strings (an empty transcription is "", an id "7" stays "7");
    other columns become numeric where every value parses.

    The file is checked by :func:`parse_results` (:class:`ResultsFileError` names what is wrong and where). A torn
    last record (a write cut short; the runner never committed it) is left out with a warning, never read as a half
    row, however its text is quoted.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    header, rows, torn = parse_results(path)
    if torn:
        _torn_warning(path, torn)
    text = _line(header) + "".join(_line(r) for r in rows)
    try:
        df = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise ResultsFileError(f"{path}: not a valid CSV file ({e})") from None
    for c in df.columns:
        if df[c].dtype == object and c not in TEXT_COLUMNS:
            conv = pd.to_numeric(df[c], errors="coerce")
            if conv.notna().all():
                df[c] = conv
    return df


def merge_shards(out_dir: str | os.PathLike, pattern: str = "results.rank*.csv") -> pd.DataFrame:
    """Combine per-rank shard files into ``out_dir/results.csv`` (atomic). Duplicated keys are an error."""
    out_dir = Path(out_dir)
    shards = sorted(out_dir.glob(pattern))
    if not shards:
        raise FileNotFoundError(f"no shard files {pattern!r} in {out_dir}")
    frames = [RowStore(p) for p in shards]
    cols = frames[0].columns
    seen: dict[tuple[str, str, int], Path] = {}
    records: list[dict[str, Any]] = []
    for store, p in zip(frames, shards):
        if store.columns is None:
            continue
        if cols is None:
            cols = store.columns
        if set(store.columns) != set(cols):
            raise ValueError(f"{p} has columns {store.columns}, other shards have {cols}")
        for key, rec in store.rows.items():
            if key in seen:
                raise ValueError(f"row {key} is in both {seen[key]} and {p}")
            seen[key] = p
            records.append(rec)
    if cols is None:
        raise ValueError(f"all shard files in {out_dir} are empty")
    text = _line(cols) + "".join(_line(r[c] for c in cols) for r in records)
    atomic_write_text(out_dir / "results.csv", text)
    return read_results(out_dir / "results.csv")
