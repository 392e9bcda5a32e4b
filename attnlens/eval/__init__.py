"""attnlens.eval: transcribe generated songs, score WER/CER against the lyrics, and compare model variants.

::

    import attnlens as al
    asr = al.eval.Transcriber("faster-whisper", model="large-v3", device="cuda", compute_type="float16")
    suite = al.eval.Suite.builtin()
    res = al.eval.run(pipe, suite, variants={"baseline": None, "lora": "runs/x/adapter"}, seeds=[0, 1, 2],
                      transcriber=asr, out_dir="eval/")
    al.eval.summarize(res); al.eval.winners(res); al.eval.compare(res, "lora", "baseline")
    al.eval.evaluate_router(res, ["text", "facts"], prompts=suite)   # held-out: routed vs best single vs oracle
    router = al.eval.fit_router(res, ["text", "facts"], prompts=suite); router.save("router.json")

See docs/evaluation.md.
"""

from __future__ import annotations

from .asr import Transcriber, Transcription, Word, resample_to_16k
from .report import build_summary, write_report
from .route import RouteLog, route
from .router import Router, fit_router
from .router_features import PromptInfo, attention_features
from .routing import RoutingReport, evaluate_router, merge_grid
from .runner import Variant, merge, parse_variants, run
from .stats import Winners, bootstrap_mean_ci, compare, headline_table, summarize, winners
from .store import ResultsFileError, read_results
from .suite import PromptEntry, Suite, SuiteError
from .text import (
    cer,
    error_rates,
    headline_metric,
    is_cjk_language,
    is_non_speech,
    lyrics_to_reference,
    normalize_text,
    wer,
)

__all__ = [
    "PromptEntry",
    "PromptInfo",
    "RouteLog",
    "Router",
    "RoutingReport",
    "ResultsFileError",
    "Suite",
    "SuiteError",
    "Transcriber",
    "Transcription",
    "Variant",
    "Winners",
    "Word",
    "attention_features",
    "bootstrap_mean_ci",
    "build_summary",
    "cer",
    "headline_metric",
    "is_cjk_language",
    "compare",
    "error_rates",
    "evaluate_router",
    "fit_router",
    "headline_table",
    "is_non_speech",
    "lyrics_to_reference",
    "merge",
    "merge_grid",
    "normalize_text",
    "parse_variants",
    "read_results",
    "resample_to_16k",
    "route",
    "run",
    "summarize",
    "wer",
    "winners",
    "write_report",
]
