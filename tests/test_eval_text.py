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
