"""attnlens: look inside the cross-attention of diffusion transformers.

Data flows one way::

    adapters -> taps (hooks) -> reducers -> Capture -> analyzers -> plots / reports
                                   └-> differentiable stats -> training losses

Public entry points (see the README and docs/)::

    import attnlens as al
    pipe = al.models.tiny_pipeline(seed=0)
    with al.capture(pipe) as cap:
        pipe(prompt=..., lyrics=..., audio_duration=4.0, num_inference_steps=8, guidance_scale=1.0)
    al.analyze(cap)

Names are imported lazily so that ``import attnlens`` stays cheap.
"""

from __future__ import annotations

from .lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "models": ("attnlens.models", None),
    "metrics": ("attnlens.metrics", None),
    "eval": ("attnlens.eval", None),
    "plot": ("attnlens.plot", None),
    "train": ("attnlens.train", None),
    "adapters": ("attnlens.adapters", None),
    "text": ("attnlens.text", None),
    "capture": ("attnlens.captures.session", "capture"),
    "intervene": ("attnlens.interventions.intervene", "intervene"),
    "Capture": ("attnlens.captures.result", "Capture"),
    "Layout": ("attnlens.captures.layout", "Layout"),
    "load_capture": ("attnlens.captures.io", "load_capture"),
    "analyze": ("attnlens.analyzers.table", "analyze"),
    "summarize_heads": ("attnlens.analyzers.table", "summarize_heads"),
    "head_report": ("attnlens.analyzers.head_report", "head_report"),
    "find_alignment_heads": ("attnlens.analyzers.heads", "find_alignment_heads"),
    "save_head_set": ("attnlens.analyzers.heads", "save_head_set"),
    "load_head_set": ("attnlens.analyzers.heads", "load_head_set"),
    "align": ("attnlens.analyzers.align", "align"),
    "lyrics_alignment_score": ("attnlens.analyzers.alignment_score", "lyrics_alignment_score"),
    "route": ("attnlens.eval.route", "route"),
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
