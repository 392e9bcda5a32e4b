"""Model builders: the tiny offline pipeline (random weights) and the embedded demo model."""

from .tiny import TinyConfig, tiny_pipeline
from .tokenizer import offline_tokenizer

__all__ = ["TinyConfig", "tiny_pipeline", "offline_tokenizer", "demo_pipeline", "demo_vocabulary"]


def demo_pipeline(*args, **kwargs):
    """The embedded trained demo model (see ``attnlens.models.demo``)."""
    from .demo import demo_pipeline as _demo_pipeline

    return _demo_pipeline(*args, **kwargs)


def demo_vocabulary():
    """The words the demo model can sing."""
    from attnlens.demo.vocab import demo_vocabulary as _demo_vocabulary

    return _demo_vocabulary()
