"""Evaluation suites: prompts with captions, tags and lyrics, loaded from YAML/JSON and validated up front.

File format (YAML or JSON)::

    prompts:                      # or a top-level list
      - id: folk                  # unique, non-empty
        genre: folk               # optional (defaults to id)
        caption: "acoustic folk song, warm male vocals, fingerpicked guitar"
        tags: [acoustic, folk]    # optional list of strings
        lyrics: |                 # required; [tags] are structure, not sung words
          [verse]
          line one
          line two
        duration: 30              # seconds, 0 < duration <= 600
        seed: 42                  # optional default seed
        language: en              # optional, default "en"

Every problem is reported with the entry's position and id before any generation starts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .text import lyrics_to_reference

MAX_DURATION_S = 600.0
_KNOWN_KEYS = {"id", "genre", "caption", "tags", "lyrics", "duration", "seed", "language"}


class SuiteError(ValueError):
    """A suite file or entry is invalid."""


@dataclass(frozen=True)
class PromptEntry:
    """One evaluation prompt."""

    id: str
    caption: str
    lyrics: str
    duration: float
    genre: str = ""
    tags: tuple[str, ...] = ()
    seed: int | None = None
    language: str = "en"
    reference: str = field(default="", compare=False)
    """the sung words (lyrics without ``[tags]``), used as the WER/CER reference."""

    @property
    def prompt(self) -> str:
        """Text prompt given to the pipeline: the caption, then the tags, comma-separated."""
        return ", ".join([self.caption, *self.tags]) if self.tags else self.caption

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tags"] = list(self.tags)
        d.pop("reference")
        return d


def _entry_from_mapping(raw: Any, index: int) -> PromptEntry:
    where = f"entry {index}"
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping with id/caption/lyrics/duration, got {type(raw).__name__}")
    ident = raw.get("id")
    if ident is None or not str(ident).strip():
        raise SuiteError(f"{where}: missing or empty 'id'")
    ident = str(ident).strip()
    where = f"entry {index} (id={ident!r})"
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_KNOWN_KEYS)}")
    caption = raw.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SuiteError(f"{where}: 'caption' must be a non-empty string, got {caption!r}")
    lyrics = raw.get("lyrics")
    if not isinstance(lyrics, str) or not lyrics.strip():
        raise SuiteError(f"{where}: missing lyrics ('lyrics' must be a non-empty string)")
    reference = lyrics_to_reference(lyrics)
    if not reference:
        raise SuiteError(f"{where}: lyrics contain only [structure] tags, no sung words: {lyrics!r}")
    duration = raw.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        raise SuiteError(f"{where}: 'duration' must be a number of seconds, got {duration!r}")
    if not 0 < duration <= MAX_DURATION_S:
        raise SuiteError(f"{where}: 'duration' must be in (0, {MAX_DURATION_S:g}] seconds, got {duration!r}")
    tags = raw.get("tags", ()) or ()
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise SuiteError(f"{where}: 'tags' must be a list of non-empty strings, got {tags!r}")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise SuiteError(f"{where}: 'seed' must be a non-negative integer, got {seed!r}")
    language = raw.get("language", "en")
    if not isinstance(language, str) or not language.strip():
        raise SuiteError(f"{where}: 'language' must be a language code like 'en', got {language!r}")
    genre = raw.get("genre") or ident
    return PromptEntry(
        id=ident,
        caption=caption.strip(),
        lyrics=lyrics.strip("\n"),
        duration=float(duration),
        genre=str(genre),
        tags=tuple(t.strip() for t in tags),
        seed=seed,
        language=language.strip(),
        reference=reference,
    )


@dataclass(frozen=True)
class Suite:
    """An ordered, validated collection of :class:`PromptEntry`."""

    entries: tuple[PromptEntry, ...]
    name: str = "suite"

    def __post_init__(self) -> None:
        if not self.entries:
            raise SuiteError(f"suite {self.name!r} has no entries")
        seen: dict[str, int] = {}
        for i, e in enumerate(self.entries):
            if e.id in seen:
                raise SuiteError(f"suite {self.name!r}: duplicate id {e.id!r} (entries {seen[e.id]} and {i})")
            seen[e.id] = i

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], name: str = "suite") -> Suite:
        """Build and validate a suite from a list of mappings."""
        if not isinstance(records, list):
            raise SuiteError(f"suite {name!r}: expected a list of entries, got {type(records).__name__}")
        return cls(tuple(_entry_from_mapping(r, i) for i, r in enumerate(records)), name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Suite:
        """Load a suite from ``.yaml``/``.yml``/``.json``: a list of entries or ``{"prompts": [...]}``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"suite file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise SuiteError(f"{path}: unknown suite format {path.suffix!r}; expected .yaml, .yml or .json")
        if isinstance(data, dict):
            if "prompts" not in data:
                raise SuiteError(f"{path}: a mapping at top level must have a 'prompts' list")
            data = data["prompts"]
        try:
            return cls.from_records(data, name=path.stem)
        except SuiteError as e:
            raise SuiteError(f"{path}: {e}") from None

    @classmethod
    def builtin(cls, name: str = "default") -> Suite:
        """A suite shipped with attnlens: ``"default"``, 30 genres in English, or ``"multilingual"``, eight prompts in
        Chinese, Japanese, Korean, Spanish, French, German, Portuguese and English (captions, tags and four lines of
        original lyrics each, ``language`` set)."""
        files = {"default": "prompts.yaml", "multilingual": "prompts_multilingual.yaml"}
        if name not in files:
            raise SuiteError(f"no built-in suite {name!r}; the built-in suites are {sorted(files)}")
        ref = resources.files("attnlens.eval").joinpath(f"data/{files[name]}")
        import yaml

        data = yaml.safe_load(ref.read_text(encoding="utf-8"))
        return cls.from_records(data["prompts"], name="builtin" if name == "default" else f"builtin-{name}")

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PromptEntry]:
        return iter(self.entries)

    def __getitem__(self, key: int | str) -> PromptEntry:
        if isinstance(key, str):
            for e in self.entries:
                if e.id == key:
                    return e
            raise KeyError(f"no entry with id {key!r} in suite {self.name!r}")
        return self.entries[key]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def subset(self, ids: list[str]) -> Suite:
        """A suite with only the given ids, in the given order."""
        return Suite(tuple(self[i] for i in ids), name=self.name)

    def to_records(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.entries]
