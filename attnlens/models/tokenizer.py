"""An offline byte-level BPE tokenizer with the special tokens the ACE-Step pipeline uses.

Real ACE-Step checkpoints ship Qwen3's tokenizer; it cannot be downloaded here. This tokenizer has the same kind
(byte-level BPE, so any text round-trips and offsets are exact) and the same ``<|endoftext|>`` special token, and
was trained in-process on a small built-in word list, so common English words are one token with their leading
space while rarer words split into pieces — which is what lyric plots and word grouping must handle.

The trained file ships as ``attnlens/models/data/tokenizer.json``; :func:`train_tokenizer` rebuilds it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"

# Built-in corpus: common English words, music words and the demo model's vocabulary. Each word is one merge
# target; byte fallback covers everything else.
_WORDS = """
a about above across after again against air all alone along always am an and another any are around as at away
baby back bad be beat because bed been before begin behind being bell below best better between big bird black
blue body bone both boy break breath bright bring broken brother burn but by call came can candle car care carry
cat change child city clear close cloud cold come could country cry cut dance dark day deep did do does dog done
door down dream drink drive drop dry dust each early earth easy eat edge else end even ever every eye face fall far
fast father feel fell few field fight find fine fire first fish fly follow for forever free friend from full game
gave get girl give glass go gold gone good got grass gray green ground grow had hair half hand hang happy hard has
have he head hear heart heavy held hello help her here high hill him his hold home hope horse hot house how i if
in inside into is it just keep kind king kiss know lake land last late laugh lay lead learn leave left let lie life
light like line lion little live long look lost love low made make man many may me mean meet mind miss moon more
morning mother mountain move much music must my name near need never new next night no north not nothing now ocean
of off old on once one only open or other our out over own paper part party past people piano place play please
poor power rain ran reach read ready red remember rest ride right ring rise river road rock roll room rose round
run said same sand sang saw say sea season see seen send set shadow shake she shine ship short should show side
sign silver simple sing sister sit sky sleep slow small smile snow so soft some song soon sound south speak stand
star start stay step still stone stop storm story street strong summer sun sweet take talk tear tell than that the
their them then there these they thing think this those though through time tired to today together told tomorrow
tonight too took touch town train tree true try turn two under until up us use very voice wait wake walk wall want
war warm was watch water wave way we wear weather well went were west what when where which while white who why
wild will wind window winter wish with without woman wonder wood word work world would write year yellow yes yet
you young your verse chorus bridge intro outro hook pre guitar drum drums bass folk pop rock jazz soul blues metal
country electronic ambient vocals vocal male female warm airy bright dark gentle tempo bpm key major minor
walking morning road soft notes lift joy
"""


def corpus_words() -> list[str]:
    """The built-in training word list (lowercase and capitalized forms), the demo model's words included."""
    from attnlens.demo.vocab import DEMO_WORDS

    words = sorted(set(_WORDS.split()) | set(DEMO_WORDS))
    return words + [w.capitalize() for w in words]


def train_tokenizer(path: str | Path | None = None, vocab_size: int = 4096):
    """Train the byte-level BPE on the built-in word list; write it to ``path`` if given. Returns a
    ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = corpus_words()
    # every word with and without a leading space, several times, so that whole words become merges
    lines = [" ".join(words)] * 4 + ["\n".join(words)] * 4 + [f"[{w}]" for w in ("verse", "chorus", "bridge")]
    tok.train_from_iterator(lines, trainer=trainer)
    if path is not None:
        tok.save(str(path))
    return tok


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return resources.files("attnlens.models").joinpath("data", TOKENIZER_FILE).read_text(encoding="utf-8")


def offline_tokenizer():
    """A ``transformers.PreTrainedTokenizerFast`` from the shipped file (pad token ``<|endoftext|>``, as Qwen3)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT, unk_token=None, padding_side="right"
    )


if __name__ == "__main__":  # rebuild the shipped file
    out = Path(__file__).parent / "data" / TOKENIZER_FILE
    train_tokenizer(out)
    print(f"wrote {out}")
