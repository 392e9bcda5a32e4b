"""Append-only, crash-safe CSV of result rows.

Commit protocol for one row: its artifacts (audio/latents) are written atomically first (temp file + ``os.replace``),
then the row is appended as one complete line, flushed and ``fsync``-ed. The row is the commit record: a crash
before the append leaves an orphan artifact that a rerun overwrites; a crash during the append leaves a partial
last line (no trailing newline) that :class:`RowStore` cuts off when it opens the file. A rerun therefore never
duplicates a row and never keeps half a row.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)

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
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (str(row["prompt_id"]), str(row["variant"]), int(row["seed"]))


class RowStore:
    """One results CSV. ``add(row)`` appends durably; ``done`` holds the keys already written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        if self.path.exists():
            self._repair_and_load()

    def _repair_and_load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # a crash cut the last append short: drop the partial line (it was never committed)
            cut = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            raw = raw[:cut]
        if not raw:
            self.path.unlink()
            return
        df = pd.read_csv(self.path, keep_default_na=False, dtype=str)
        missing = [c for c in KEY_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{self.path}: not a results file of attnlens.eval (missing columns {missing})")
        self.columns = list(df.columns)
        for rec in df.to_dict("records"):
            key = row_key(rec)
            if key in self.rows:
                raise ValueError(f"{self.path}: duplicated row for {key}; the file was edited or merged by hand")
            self.rows[key] = rec

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


class ResultsFileError(ValueError):
    """A file that is not a valid results CSV (a pickle, not UTF-8 text, ragged rows, missing or duplicated keys)."""


PROMPT_KEY_COLUMNS: tuple[str, ...] = ("prompt_id", "style", "genre")  # the first present names the prompt


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV: text columns stay strings (an empty transcription is "", an id "7" stays "7");
    other columns become numeric where every value parses.

    The file must be UTF-8 CSV with a ``variant`` column and a prompt column (``prompt_id``, ``style`` or
    ``genre``), every row as long as the header, and no key (prompt, variant, seed) twice; otherwise
    :class:`ResultsFileError` says what is wrong. An unterminated last line (a write cut short; the runner never
    committed it) is left out with a warning, never read as a half row.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    raw = path.read_bytes()
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise ResultsFileError(
            f"{path} looks like a pickle / zip file; results are CSV text (attnlens never loads pickles)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsFileError(f"{path} is not a UTF-8 text (CSV) file: {e}") from None
    if "\x00" in text:
        raise ResultsFileError(f"{path} holds NUL bytes: not a CSV text file (or damaged)")
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        warnings.warn(
            f"{path}: the last line has no line end (a write was cut short); left out: {text[cut:][:80]!r}",
            stacklevel=2,
        )
        text = text[:cut]
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise ResultsFileError(f"{path}: not a valid CSV file ({e})") from None
    if not records or not records[0]:
        raise ResultsFileError(f"{path} is empty: no header line")
    header = records[0]
    prompt_cols = [c for c in PROMPT_KEY_COLUMNS if c in header]
    if "variant" not in header or not prompt_cols:
        raise ResultsFileError(
            f"{path}: not a results file (header {header[:8]}); expected a 'variant' column and one of "
            f"{list(PROMPT_KEY_COLUMNS)}"
        )
    ragged = [(i, len(r)) for i, r in enumerate(records[1:], start=1) if len(r) != len(header)]
    if ragged:
        i, n = ragged[0]
        raise ResultsFileError(
            f"{path}: row {i} has {n} fields but the header has {len(header)} ({len(ragged)} such row(s)); "
            "the file is damaged or was edited by hand"
        )
    if len(set(header)) != len(header):
        raise ResultsFileError(f"{path}: duplicated column names in the header {header}")
    try:
        df = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise ResultsFileError(f"{path}: not a valid CSV file ({e})") from None
    keys = [prompt_cols[0], "variant"] + (["seed"] if "seed" in df.columns else [])
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0].tolist()
        raise ResultsFileError(f"{path}: {int(dup.sum())} rows share a key {keys}, e.g. {first}")
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
