"""ACE-Step's key layout, unit by unit: the packing order against diffusers' own packer, and the labels of a
hand-made condition (header, tags, sung words, timbre, caption, padding) against a hand count."""

from __future__ import annotations

import pytest
import torch

import attnlens as al
from attnlens.adapters.acestep.layout import build_layout, packed_sources


def _peer_sources(lyric_mask, timbre_mask, text_mask):
    """The packed source index of every key, by diffusers' ``_pack_sequences`` itself (applied to the indices)."""
    from diffusers.pipelines.ace_step.modeling_ace_step import _pack_sequences

    B, Ll = lyric_mask.shape
    Lm, Lt = timbre_mask.shape[1], text_mask.shape[1]
    idx = torch.arange(Ll + Lm + Lt, dtype=torch.float64).expand(B, -1)[..., None]  # [B, L, 1]
    first, m1 = _pack_sequences(idx[:, :Ll], idx[:, Ll : Ll + Lm], lyric_mask, timbre_mask)
    packed, m2 = _pack_sequences(first, idx[:, Ll + Lm :], m1.long(), text_mask)
    return packed[..., 0].long(), m2.sum(1)


@pytest.mark.parametrize("seed", range(6))
def test_packing_order_equals_diffusers_packer(seed):
    g = torch.Generator().manual_seed(seed)
    B, Ll, Lm, Lt = 3, 9, 2, 7
    masks = [(torch.rand(B, n, generator=g) < 0.6).long() for n in (Ll, Lm, Lt)]
    masks[0][0] = 1  # a full lyric row, and a row with nothing valid in one part
    masks[2][1] = 0
    src, valid = packed_sources(*masks)
    want, want_valid = _peer_sources(*masks)
    assert torch.equal(src, want) and torch.equal(valid, want_valid)


def test_a_hand_made_condition_is_labelled_key_by_key():
    tok = al.models.offline_tokenizer()
    lyrics = "[verse]\nwalking down\nthe road"
    text = "# Languages\nen\n\n# Lyric\n" + lyrics + "<|endoftext|>"
    lyric_ids = tok(text, add_special_tokens=False).input_ids
    cap_ids = tok("# Caption\nfolk song\n\n# Metas\nbpm 90", add_special_tokens=False).input_ids
    n_l, n_c = len(lyric_ids), len(cap_ids)
    pad_l, pad_c = 3, 2
    lyric = torch.tensor([lyric_ids + [0] * pad_l])
    lmask = torch.tensor([[1] * n_l + [0] * pad_l])
    caption = torch.tensor([cap_ids + [0] * pad_c])
    cmask = torch.tensor([[1] * n_c + [0] * pad_c])
    timbre = torch.tensor([[1, 0]])  # one valid timbre embedding, one padded
    layout = build_layout(tok, lyric, lmask, caption, cmask, timbre)
    it = layout[0]
    assert it.n_keys == n_l + pad_l + 2 + n_c + pad_c
    # packed order: valid lyric tokens, the valid timbre key, valid caption tokens, then all padding
    segs = it.segments
    n_lyr = segs.count("lyric") + segs.count("lyric_meta")
    assert n_lyr == n_l and segs[n_l] == "timbre" and segs.count("timbre") == 1
    assert segs[n_l + 1 : n_l + 1 + n_c] == ["caption"] * n_c
    assert segs[n_l + 1 + n_c :] == ["padding"] * (pad_l + 1 + pad_c)
    assert it.words == ["walking", "down", "the", "road"] and it.lines == ["walking down", "the road"]
    assert it.word_line == [0, 0, 1, 1]
    assert it.lyrics == lyrics and it.caption.startswith("folk song")
    sung = it.lyric_positions()
    by_word: dict[int, str] = {}
    for k in sung:  # every sung token belongs to a word, and the word's tokens spell it
        by_word[it.word_index[k]] = by_word.get(it.word_index[k], "") + it.tokens[k]
    assert [by_word[w].strip() for w in sorted(by_word)] == it.words
    kinds = {it.kinds[k] for k in range(n_l)}
    assert kinds == {"header", "tag", "space", "sung", "end"}
    tag_text = "".join(it.tokens[k] for k in range(n_l) if it.kinds[k] == "tag")
    assert tag_text == "[verse]"
    for k in sung:  # spans point into the user's lyrics at the token's text
        s, e = it.char_spans[k]
        assert lyrics[s:e] == it.tokens[k]
