"""WER/CER: hand-computed cases, normalization modes, non-speech rule, and the seed's published table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from attnlens.eval import cer, error_rates, is_non_speech, lyrics_to_reference, normalize_text, wer

SEED = Path(__file__).parent / "data" / "seed5way"


def test_hand_computed_wer_cer():
    # 1 substitution (cat->hat) + 1 deletion (the) over 6 words
    assert wer("the cat sat on the mat", "the hat sat on mat", normalize="none") == pytest.approx(2 / 6)
    # "abcd" -> "abxd": 1 substitution over 4 characters
    assert cer("abcd", "abxd", normalize="none") == pytest.approx(1 / 4)
    # insertions can push WER above 1
    assert wer("yes", "no no no", normalize="none") == pytest.approx(3.0)


def test_lower_keeps_punctuation_whisper_removes_it():
    ref, hyp = "Lift your voice and sing with me", "lift your voice and sing with me."
    assert wer(ref, hyp, normalize="lower") == pytest.approx(1 / 7)  # "me." != "me"
    assert wer(ref, hyp) == 0.0  # whisper normalizer drops the period
    assert normalize_text("Hello, World! I'm here.") == "hello world i am here"


@pytest.mark.parametrize("hyp", ["", "   ", "🎵", "♪ ♪", "[Music]", "(music)", "*instrumental*", "..."])
@pytest.mark.parametrize("mode", ["whisper", "lower", "none"])
def test_non_speech_is_full_error(hyp, mode):
    assert is_non_speech(hyp)
    assert wer("one two three", hyp, normalize=mode) == 1.0
    assert cer("one two three", hyp, normalize=mode) == 1.0


def test_words_are_not_non_speech():
    assert not is_non_speech("Thank you.")
    assert not is_non_speech("2-期煎零ı")
    # a hallucinated "thank you" is scored like any words: 2 substitutions + 1 deletion over 3
    assert wer("red green blue", "Thank you.", normalize="whisper") == pytest.approx(1.0)
    # the whisper normalizer rewrites spelled numbers: "one two three" -> "123" (one word)
    assert normalize_text("one two three") == "123"
    assert cer("ab", "Thank you.", normalize="lower") > 1.0


def test_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="reference is empty"):
        wer("", "hello")
    with pytest.raises(ValueError, match="reference is empty"):
        cer("[Music]", "hello")  # empty after whisper normalization
    with pytest.raises(ValueError, match="normalize must be one of"):
        wer("a", "a", normalize="upper")
    with pytest.raises(TypeError):
        wer("a", None)


def test_lyrics_to_reference():
    assert lyrics_to_reference("[verse]\nLine one\n  line two \n[chorus]\nthree") == "Line one line two three"


def test_seed_table_reproduced_with_lower():
    df = pd.read_csv(SEED / "results.csv", keep_default_na=False)
    assert len(df) == 150
    for row in df.itertuples():
        r = error_rates(row.ground_truth, row.transcription, normalize="lower")
        assert round(r["wer"], 4) == row.wer, (row.variant, row.style, row.transcription)
        assert round(r["cer"], 4) == row.cer, (row.variant, row.style, row.transcription)


def test_seed_table_whisper_normalization_differs_only_by_normalization():
    # the default normalizer forgives punctuation and case, so the same transcripts score better overall
    df = pd.read_csv(SEED / "results.csv", keep_default_na=False)
    w_lower = [wer(r.ground_truth, r.transcription, "lower") for r in df.itertuples()]
    w_whisper = [wer(r.ground_truth, r.transcription) for r in df.itertuples()]
    assert sum(w_whisper) < sum(w_lower)
    assert round(sum(w_lower) / 150, 4) == round(df.wer.mean(), 4)


# ------------------------------------------------------------------------------------- languages other than English
def test_auto_normalization_by_language():
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    en, basic = EnglishTextNormalizer(), BasicTextNormalizer()
    for text, lang in [("Don't stop, baby!", "en"), ("Don't stop, baby!", None), ("¡Hola, señor! [Music]", "es")]:
        want = " ".join((en if lang in ("en", None) else basic)(text).split())
        assert normalize_text(text, "auto", lang) == want
    # the English normalizer strips diacritics: Japanese voicing marks would be lost (で -> て, señor -> senor)
    assert normalize_text("ですね", "whisper") == "てすね" and normalize_text("ですね", "auto", "ja") == "ですね"
    assert normalize_text("señor", "auto", "es") == "señor"
    assert normalize_text("Hello, World! I'm here.") == "hello world i am here"  # default: English as before


def test_cjk_cer_ignores_spaces_and_is_the_headline():
    from attnlens.eval import headline_metric, is_cjk_language

    ref = "今日は良い天気ですね"
    # one character substituted (で -> て) out of 10; the transcriber's spaces are not errors
    assert cer(ref, "今日は 良い 天気 てすね", language="ja") == pytest.approx(1 / 10)
    assert cer(ref, "今日は良い天気ですね", normalize="whisper") == 0.0  # the English normalizer hides the error
    assert cer("我爱你，中国！", "我爱你 中国", language="zh") == 0.0
    assert cer("我爱你中国", "我爱他中国", language="zh") == pytest.approx(1 / 5)
    assert cer("사랑해 너를", "사랑해너를", language="ko") == 0.0
    r = error_rates("我爱你中国", "我 爱 你 中 国", language="zh")
    assert r["cer"] == 0.0 and r["wer"] == 5.0  # a word error rate of unspaced text measures spacing
    assert [headline_metric(x) for x in ("zh", "ja", "ko", "yue", "zh-TW", "en", "es", None)] == ["cer"] * 5 + [
        "wer"
    ] * 3
    assert is_cjk_language("JA") and not is_cjk_language("") and not is_cjk_language(None)
    assert cer("abc", "", language="zh") == 1.0


def test_multilingual_builtin_suite():
    from attnlens.eval import Suite
    from attnlens.eval.suite import SuiteError

    s = Suite.builtin("multilingual")
    assert [e.language for e in s] == ["zh", "ja", "ko", "es", "fr", "de", "pt", "en"]
    assert all(e.reference and "[" not in e.reference for e in s)
    assert [len(e.reference.split()) for e in s][:3] == [4, 4, 4 + 4 + 5 + 4]  # Chinese and Japanese: no spaces
    for e in s:  # every reference normalizes to something in its own language's normalizer
        assert normalize_text(e.reference, "auto", e.language)
    assert len(Suite.builtin()) == 30
    with pytest.raises(SuiteError, match="multilingual"):
        Suite.builtin("klingon")
