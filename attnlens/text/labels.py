"""Readable labels for tokens, in every script.

A byte-level BPE (GPT-2's, Qwen's: the tokenizer of ACE-Step 1.5) may split one character between tokens: ``歌`` is
three UTF-8 bytes, and the Qwen vocabulary holds ``" " + 歌[:2]`` and ``歌[2:]`` as two tokens. Decoding each token
alone gives ``'�'`` for both. Here every token is labelled with the characters its bytes belong to, read from the
whole text: the two tokens above are ``" 歌"`` and ``"歌"``. A label is always ``text[start:end]`` of the token's
character span, so labels are the user's own characters; spans of neighbouring tokens overlap only on a split
character.

``token_bytes(tokenizer, ids)`` reads each token's bytes from a Hugging Face tokenizer (byte-level alphabets,
``<0xHH>`` byte-fallback pieces, ``▁`` word marks); :func:`token_char_spans` maps bytes to character spans;
:func:`token_labels` does both and checks the result against the tokenizer's own decoding.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for every byte (the alphabet of byte-level BPE vocabularies), inverted:
    character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _piece_bytes(piece: str, alphabet: dict[str, int]) -> bytes | None:
    """Bytes of one vocabulary entry, or None where the entry is in no known form."""
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    if all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return None


def _vocabulary_pieces(tokenizer: Any, ids: list[int]) -> list[str] | None:
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))]
    if hasattr(tokenizer, "id_to_token"):
        return [str(tokenizer.id_to_token(int(i))) for i in ids]
    return None


def _decode(tokenizer: Any, ids: list[int]) -> str:
    try:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except TypeError:  # a tokenizers.Tokenizer
        return tokenizer.decode(list(ids), skip_special_tokens=False)


def token_bytes(tokenizer: Any, ids: list[int]) -> list[bytes]:
    """The bytes of every token of ``ids``, as the tokenizer's decoder joins them.

    Byte-level vocabularies (GPT-2, Qwen, the offline tokenizer) map through the byte alphabet; ``<0xHH>`` pieces
    are one byte; ``▁`` (a SentencePiece word mark) is a space. Special and added tokens are their text. When the
    bytes do not decode to the tokenizer's own text (another kind of tokenizer), each token's own decoding is used.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return []
    full = _decode(tokenizer, ids)
    pieces = _vocabulary_pieces(tokenizer, ids)
    if pieces is not None:
        alphabet = byte_alphabet()
        out: list[bytes] = []
        for i, p in zip(ids, pieces):
            b = _piece_bytes(p, alphabet)
            if b is None:
                b = p.replace(_METASPACE, " ").encode("utf-8") if _METASPACE in p else _decode(tokenizer, [i]).encode()
            out.append(b)
        joined = b"".join(out).decode("utf-8", errors="replace")
        if joined == full:
            return out
        if joined.startswith(" ") and joined[1:] == full and out[0].startswith(b" "):
            return [out[0][1:]] + out[1:]  # SentencePiece drops the first word mark's space
    return [_decode(tokenizer, [i]).encode("utf-8") for i in ids]


def token_char_spans(pieces: list[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """The text of the joined ``pieces`` and each piece's character span in it: the characters any of its bytes
    belong to (a piece holding part of a character spans that whole character; an empty piece spans nothing at its
    position). Invalid UTF-8 bytes are one ``'�'`` character each."""
    data = b"".join(pieces)
    text = data.decode("utf-8", errors="surrogateescape")
    char_of_byte: list[int] = []
    for k, ch in enumerate(text):
        n = 1 if 0xDC80 <= ord(ch) <= 0xDCFF else len(ch.encode("utf-8"))
        char_of_byte.extend([k] * n)
    spans: list[tuple[int, int]] = []
    pos = 0
    for p in pieces:
        if not p:
            at = char_of_byte[pos] if pos < len(char_of_byte) else len(text)
            spans.append((at, at))
            continue
        spans.append((char_of_byte[pos], char_of_byte[pos + len(p) - 1] + 1))
        pos += len(p)
    clean = "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    return clean, spans


def readable_labels(pieces: list[bytes]) -> list[str]:
    """One label per piece: the characters its bytes belong to (see the module docstring)."""
    text, spans = token_char_spans(pieces)
    return [text[s:e] for s, e in spans]


def token_labels(tokenizer: Any, ids: list[int]) -> tuple[str, list[str], list[tuple[int, int]]]:
    """``(text, labels, spans)`` for token ids: the decoded text, each token's readable label and its character span
    in that text (``labels[k] == text[s:e]``)."""
    text, spans = token_char_spans(token_bytes(tokenizer, ids))
    return text, [text[s:e] for s, e in spans], spans
