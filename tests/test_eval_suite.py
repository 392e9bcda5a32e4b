"""Suite loading and validation."""

from __future__ import annotations

import json

import pytest

from attnlens.eval import Suite, SuiteError
from attnlens.eval.text import normalize_text

GOOD = {"id": "a", "caption": "folk song", "lyrics": "[verse]\nhello there\nfriend", "duration": 10, "seed": 1}


def test_builtin_suite():
    s = Suite.builtin()
    assert len(s) == 30 and len(set(s.ids)) == 30
    assert len({e.genre for e in s}) == 30
    for e in s:
        lines = [ln for ln in e.lyrics.splitlines() if ln.strip() and not ln.startswith("[")]
        assert len(lines) == 4, e.id
        assert e.caption and e.tags and e.seed is not None and e.duration == 30.0
        assert normalize_text(e.reference)  # scorable under the default normalizer
    assert s["folk"].reference.startswith("Carry the lantern")
    assert s["pop"].prompt.startswith(s["pop"].caption + ", ")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_from_file_roundtrip(tmp_path, suffix):
    p = tmp_path / f"s{suffix}"
    recs = [GOOD, {**GOOD, "id": "b", "tags": "x, y"}]
    if suffix == ".json":
        p.write_text(json.dumps({"prompts": recs}))
    else:
        import yaml

        p.write_text(yaml.safe_dump(recs))
    s = Suite.from_file(p)
    assert s.ids == ["a", "b"] and s["b"].tags == ("x", "y") and s["a"].reference == "hello there friend"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({**GOOD, "lyrics": ""}, r"entry 1 \(id='b'\): missing lyrics"),
        ({k: v for k, v in GOOD.items() if k != "lyrics"}, r"id='b'.*missing lyrics"),
        ({**GOOD, "lyrics": "[verse]\n[chorus]"}, r"id='b'.*only \[structure\] tags"),
        ({**GOOD, "caption": "  "}, r"id='b'.*'caption' must be a non-empty"),
        ({**GOOD, "duration": 0}, r"id='b'.*'duration' must be in"),
        ({**GOOD, "duration": "long"}, r"id='b'.*'duration' must be a number"),
        ({**GOOD, "duration": float("nan")}, r"id='b'.*'duration' must be a number"),
        ({**GOOD, "seed": -1}, r"id='b'.*'seed'"),
        ({**GOOD, "tempo": 120}, r"id='b'.*unknown keys \['tempo'\]"),
        ({**GOOD, "id": ""}, r"entry 1: missing or empty 'id'"),
    ],
)
def test_validation_names_the_entry(bad, match):
    if bad.get("id") == "a":
        bad = {**bad, "id": "b"}
    with pytest.raises(SuiteError, match=match):
        Suite.from_records([GOOD, bad])


def test_duplicate_ids(tmp_path):
    p = tmp_path / "dup.json"
    p.write_text(json.dumps([GOOD, GOOD]))
    with pytest.raises(SuiteError, match=r"dup.json.*duplicate id 'a' \(entries 0 and 1\)"):
        Suite.from_file(p)
    with pytest.raises(FileNotFoundError):
        Suite.from_file(tmp_path / "missing.yaml")
