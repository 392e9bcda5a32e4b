"""Units of timing by script (attnlens.text.units): hand-split lines in every script ACE-Step sings."""

import pytest

from attnlens.text.units import Unit, merge_units_by_tokens, unit_kind, unit_separators, unit_spans, units_name


def _split(text):
    return [(text[u.start : u.end], u.kind) for u in unit_spans(text)]


W, C = "word", "char"


@pytest.mark.parametrize(
    "text, want",
    [
        ("walking down the road", [("walking", W), ("down", W), ("the", W), ("road", W)]),
        ("don't stop...", [("don't", W), ("stop...", W)]),
        ("Привет мир", [("Привет", W), ("мир", W)]),
        ("我爱你中国", [("我", C), ("爱", C), ("你", C), ("中", C), ("国", C)]),
        (
            "我爱你中国 hello world",
            [("我", C), ("爱", C), ("你", C), ("中", C), ("国", C), ("hello", W), ("world", W)],
        ),
        ("hello世界", [("hello", W), ("世", C), ("界", C)]),
        ("Hello, 世界。", [("Hello,", W), ("世", C), ("界。", C)]),
        ("「我」です", [("「我」", C), ("で", C), ("す", C)]),
        ("きょうはラーメン", [("きょ", C), ("う", C), ("は", C), ("ラー", C), ("メ", C), ("ン", C)]),
        ("사랑해 너를", [("사", C), ("랑", C), ("해", C), ("너", C), ("를", C)]),
        ("歌声 みんな 😀", [("歌", C), ("声", C), ("み", C), ("ん", C), ("な", C), ("😀", W)]),
        ("e\u0301te 👍🏽 ok", [("e\u0301te", W), ("👍🏽", W), ("ok", W)]),
        ("  ", []),
    ],
)
def test_units_by_hand(text, want):
    assert _split(text) == want
    # units are disjoint, in order, and cover every non-space character
    us = unit_spans(text)
    assert all(a.end <= b.start for a, b in zip(us, us[1:]))
    assert "".join(text[u.start : u.end] for u in us) == "".join(text.split())


def test_unit_counts_of_mixed_lines():
    # hand counts: 5 Han + 2 words; 3 kana + 2 kanji + 1 word; 6 Hangul syllables
    assert len(unit_spans("我爱你中国 hello world")) == 7
    assert len(unit_spans("みんなで東京 tonight")) == 7
    assert len(unit_spans("보고 싶어요 사랑")) == 7


def test_merge_units_covered_by_one_token():
    text = "我爱你中国 hi"
    units = unit_spans(text)  # 我 爱 你 中 国 hi
    # tokens: "我爱你" (0, 3), "中国" (3, 5), " hi" (5, 8)
    merged = merge_units_by_tokens(units, [(0, 3), (3, 5), (5, 8)])
    assert [(text[u.start : u.end], u.kind) for u in merged] == [("我爱你", C), ("中国", C), ("hi", W)]
    # a byte piece spanning the end of one character and the start of the next joins them
    assert [text[u.start : u.end] for u in merge_units_by_tokens(units, [(0, 1), (1, 3), None, (3, 3)])] == [
        "我",
        "爱你",
        "中",
        "国",
        "hi",
    ]
    # a token touching a word and a character (no space between) merges them into one unit of characters
    t2 = "ok世界"
    m2 = merge_units_by_tokens(unit_spans(t2), [(0, 3), (3, 4)])
    assert m2 == [Unit(0, 3, C), Unit(3, 4, C)]
    assert merge_units_by_tokens([], [(0, 1)]) == []


def test_kinds_names_and_separators():
    assert unit_kind("中国") == C and unit_kind("hello") == W and unit_kind("😀") == W and unit_kind("ラー") == C
    assert units_name([W, W]) == "words" and units_name([C]) == "characters"
    assert units_name([W, C]) == "words and characters" and units_name([]) == "words"
    text = "我爱 你 hello world"
    spans = [(u.start, u.end) for u in unit_spans(text)]
    assert unit_separators(text, spans) == ["", "", " ", " ", " "]
