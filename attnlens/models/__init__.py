"""Model builders: the tiny offline pipelines (random weights: ACE-Step, Stable Audio, PixArt) and the embedded demo
model."""

from .pixart import TinyPixArtConfig, plant_word_region, tiny_pixart_pipeline
from .stable_audio import TinyStableAudioConfig, stable_audio_transformer, tiny_stable_audio_pipeline
from .tiny import TinyConfig, tiny_pipeline
from .tokenizer import offline_tokenizer

__all__ = [
    "TinyConfig",
    "tiny_pipeline",
    "offline_tokenizer",
    "demo_pipeline",
    "demo_vocabulary",
    "TinyStableAudioConfig",
    "tiny_stable_audio_pipeline",
    "stable_audio_transformer",
    "TinyPixArtConfig",
    "tiny_pixart_pipeline",
    "plant_word_region",
]


def demo_pipeline(*args, **kwargs):
    """The embedded trained demo model (see ``attnlens.models.demo``)."""
    from .demo import demo_pipeline as _demo_pipeline

    return _demo_pipeline(*args, **kwargs)


def demo_vocabulary():
    """The words the demo model can sing."""
    from attnlens.demo.vocab import demo_vocabulary as _demo_vocabulary

    return _demo_vocabulary()
