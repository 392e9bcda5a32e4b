"""An offline T5-style tokenizer (and a tiny T5 encoder) for the tiny Stable Audio and PixArt pipelines.

Stable Audio conditions on T5, whose tokenizer is a SentencePiece unigram model: words are split on whitespace, each
word's first piece carries a leading ``▁``, rare words break into pieces (often a lone ``▁`` then characters), and
the ids start with ``<pad>`` 0, ``</s>`` 1 (closing every prompt) and ``<unk>`` 2. This tokenizer is the same kind
of model with the same conventions, built in-process from the built-in word list
(:func:`attnlens.models.tokenizer.corpus_words`): each listed word is one ``▁word`` piece, then common word endings
and single characters. Offsets point at the word's characters (the ``▁`` marks the space before them), so the
tokens of a prompt can be labelled with its words.
"""

from __future__ import annotations

import string
from functools import lru_cache

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as in T5
SPACE = "▁"  # SentencePiece's word-boundary mark
# endings and fragments, so that unlisted words split into a few pieces rather than characters
_PIECES = (
    "s es ed d ing er ers est ly y ie ies ness ful less ment tion ion al ic ical on an en in or ar th st ch sh "
    "ght ous ive able 's n't 'm 're 'll 've"
).split()
_SCORES = {"word": -8.0, "space": -9.0, "piece": -10.0, "char": -11.0}  # log-probabilities of the unigram model


def t5_vocab() -> list[tuple[str, float]]:
    """The unigram model's ``(piece, log-probability)`` list: the three special tokens, the built-in words as
    ``▁word``, a lone ``▁``, word endings, then printable ASCII characters."""
    from .tokenizer import corpus_words

    vocab = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    seen = {PAD, EOS, UNK}

    def add(piece: str, kind: str) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, _SCORES[kind]))

    for w in corpus_words():
        add(SPACE + w, "word")
    add(SPACE, "space")
    for p in _PIECES:
        add(p, "piece")
    for ch in string.ascii_letters + string.digits + string.punctuation:
        add(ch, "char")
    return vocab


@lru_cache(maxsize=1)
def _t5_json() -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(t5_vocab(), unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
    )
    tok.add_special_tokens([PAD, EOS, UNK])
    return tok.to_str()


def t5_style_tokenizer(max_tokens: int = 16):
    """A ``transformers.PreTrainedTokenizerFast`` with T5's conventions: ``<pad>`` 0, ``</s>`` 1 appended to every
    prompt, ``<unk>`` 2, padding on the right to ``model_max_length`` ``max_tokens`` (the real pipeline's is 128).
    Offsets are supported (``return_offsets_mapping=True``). A new object per call, built offline in milliseconds."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_t5_json()),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=max_tokens,
        padding_side="right",
    )


def tiny_t5_encoder(tokenizer, width: int, layers: int):
    """A ``transformers.T5EncoderModel`` with random weights (drawn from the global RNG) over ``tokenizer``'s ids:
    ``width`` wide, ``layers`` deep, heads of 8, a feed-forward twice as wide; pad and end ids from the tokenizer."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=layers,
            num_heads=max(1, width // 8),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
