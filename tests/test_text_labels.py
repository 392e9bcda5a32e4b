"""Readable token labels (attnlens.text.labels): byte pieces that split a character are labelled with it, for a
hand-made piece list, the offline tokenizer (bytes for every non-English character) and Qwen's real vocabulary."""

import pytest

import attnlens as al
from attnlens.text.labels import byte_alphabet, readable_labels, token_bytes, token_char_spans, token_labels

LYRICS = [
    "walking down the morning road",
    "我爱你中国 hello world",
    "歌声 みんな 😀",
    "今日は良い天気ですね",
    "사랑해 너를 보고 싶어요",
    "I love 東京 tonight 👍🏽",
]


def test_split_character_labelled_whole():
    ge = "歌".encode()  # three bytes
    pieces = [b" " + ge[:2], ge[2:], "声".encode(), b" ok"]
    text, spans = token_char_spans(pieces)
    assert text == " 歌声 ok"
    assert spans == [(0, 2), (1, 2), (2, 3), (3, 6)]
    assert readable_labels(pieces) == [" 歌", "歌", "声", " ok"]
    # an empty piece spans nothing where it stands; invalid bytes read as one '\ufffd' each
    assert token_char_spans([b"a", b"", b"b"]) == ("ab", [(0, 1), (1, 1), (1, 2)])
    assert readable_labels([b"\xff", b"x"]) == ["\ufffd", "x"]


def test_byte_alphabet_is_gpt2s():
    alpha = byte_alphabet()
    assert len(alpha) == 256 and sorted(alpha.values()) == list(range(256))
    assert alpha["Ġ"] == 32 and alpha["Ċ"] == 10 and alpha["!"] == 33


class _PieceTokenizer:
    """A SentencePiece-like tokenizer: ▁ word marks and <0xHH> byte-fallback pieces."""

    pieces = {0: "▁hi", 1: "<0xE6>", 2: "<0xAD>", 3: "<0x8C>", 4: "▁there"}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def decode(self, ids, **kw):
        data = b"".join(
            bytes([int(p[3:5], 16)]) if p.startswith("<0x") else p.replace("▁", " ").encode()
            for p in self.convert_ids_to_tokens(ids)
        )
        return data.decode("utf-8", errors="replace").removeprefix(" ")


def test_token_bytes_of_byte_fallback_and_word_marks():
    tok = _PieceTokenizer()
    ids = [0, 1, 2, 3, 4]
    assert token_bytes(tok, ids) == [b"hi", b"\xe6", b"\xad", b"\x8c", b" there"]
    text, labels, spans = token_labels(tok, ids)
    assert text == "hi歌 there" and labels == ["hi", "歌", "歌", "歌", " there"]


@pytest.mark.parametrize("line", LYRICS)
def test_offline_tokenizer_labels_read_as_the_users_characters(line):
    tok = al.models.offline_tokenizer()
    ids = tok(line, add_special_tokens=False).input_ids
    text, labels, spans = token_labels(tok, ids)
    assert text == line
    assert not any("\ufffd" in lab for lab in labels)
    assert all(line[s:e] == lab for lab, (s, e) in zip(labels, spans))
    # round trip: each character given to the first token that touches it spells the line
    own, pos = [], 0
    for s, e in spans:
        own.append(line[max(s, pos) : e])
        pos = max(pos, e)
    assert "".join(own) == line


def test_qwen_vocabulary_is_qwens(qwen_tokenizer):
    # ids published with Qwen2/Qwen3's tokenizer.json: "Hello" 9707, "Ġworld" 1879, "!" 0, <|endoftext|> 151643
    tok = qwen_tokenizer
    assert tok("Hello world!", add_special_tokens=False).input_ids == [9707, 1879, 0]
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert len(tok) == 151643 + 3


@pytest.mark.parametrize("line", LYRICS)
def test_qwen_labels_read_as_the_users_characters(qwen_tokenizer, line):
    tok = qwen_tokenizer
    text_in = "# Languages\nzh\n\n# Lyric\n" + line + "<|endoftext|>"
    ids = tok(text_in, add_special_tokens=False).input_ids
    text, labels, spans = token_labels(tok, ids)
    assert text == text_in == tok.decode(ids)
    assert not any("\ufffd" in lab for lab in labels)
    assert all(text[s:e] == lab for lab, (s, e) in zip(labels, spans))
    assert labels[-1] == "<|endoftext|>"
    # the spans agree with the tokenizer's own offsets (a fast tokenizer reports them for the same pieces)
    enc = tok(text_in, add_special_tokens=False, return_offsets_mapping=True)
    assert [tuple(o) for o in enc["offset_mapping"]] == spans


def test_qwen_splits_some_characters_and_labels_them_whole(qwen_tokenizer):
    tok = qwen_tokenizer
    ids = tok(" 東京 我", add_special_tokens=False).input_ids
    naive = [tok.decode([i]) for i in ids]
    assert "\ufffd" in "".join(naive)  # decoding token by token garbles the split characters
    _, labels, _ = token_labels(tok, ids)
    assert labels == [" 東", "東", "京", " 我", "我"]
