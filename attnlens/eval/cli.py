"""``attnlens eval``: run a suite over variants and seeds, then write results.csv, summary.json and reports.

Examples::

    attnlens eval --pipeline ACE-Step/acestep-v15-turbo --suite builtin --variant baseline \\
        --variant lora=runs/x/adapter --seeds 0 1 2 --asr-model large-v3 --device cuda --out eval/
    attnlens eval ... --variant baseline --variant lora=runs/x/adapter --variant routed=router.json --out eval2/
    attnlens eval --report-only --out eval/          # re-render summary.json / report.md / report.html
    attnlens eval --merge --out eval/                # combine results.rank*.csv of a multi-process run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _parse_variant(text: str) -> tuple[str, Any]:
    """``name`` (no adapter), ``name=path`` or ``name=path@scale``."""
    if "=" not in text:
        return text, None
    name, path = text.split("=", 1)
    if "@" in path:
        path, scale = path.rsplit("@", 1)
        return name, {"path": path, "scale": float(scale)}
    return name, path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate variants on a prompt suite (WER/CER with Whisper)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--suite",
        default="builtin",
        help="suite YAML/JSON file, 'builtin' (30 genres) or 'multilingual' (8 languages)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME[=ADAPTER[@SCALE]]",
        help="a variant; repeat. Without '=' it runs with no adapter; NAME=ROUTER.json routes each prompt to the "
        "variant a saved al.eval.Router picks (the other --variant flags or the router's own adapters; --batch-size 1)."
        " Default: baseline",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: each entry's own seed)")
    p.add_argument("--out", default="eval", help="output folder (default: eval)")
    p.add_argument("--pipeline", default=None, help="diffusers AceStepPipeline path/id, or 'tiny' / 'demo'")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="device for the pipeline and the ASR (cpu, cuda)")
    p.add_argument("--steps", type=int, default=8, help="num_inference_steps (default 8)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance_scale (default 1.0, turbo)")
    p.add_argument("--shift", type=float, default=3.0, help="scheduler shift (default 3.0)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--asr", default="faster-whisper", choices=["faster-whisper", "openai-whisper"])
    p.add_argument("--asr-model", default="large-v3", help="Whisper size or local path (default large-v3)")
    p.add_argument("--compute-type", default="default", help="faster-whisper compute type (int8, float16, ...)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--language", default="en")
    p.add_argument(
        "--normalize",
        default="auto",
        choices=["auto", "whisper", "basic", "lower", "none"],
        help="text normalization (default auto: by each prompt's language, see attnlens.eval.text)",
    )
    p.add_argument("--report-only", action="store_true", help="only (re)write summary.json and the reports")
    p.add_argument("--merge", action="store_true", help="merge results.rank*.csv into results.csv, then report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def _load_pipeline(args: argparse.Namespace) -> Any:
    import torch

    if args.pipeline is None:
        raise SystemExit("attnlens eval: --pipeline is required to generate (a diffusers path/id, 'tiny' or 'demo')")
    if args.pipeline == "tiny":
        from attnlens.models import tiny_pipeline

        return tiny_pipeline(seed=0)
    if args.pipeline == "demo":
        from attnlens.models import demo_pipeline

        return demo_pipeline()
    from diffusers import AceStepPipeline

    pipe = AceStepPipeline.from_pretrained(args.pipeline, torch_dtype=getattr(torch, args.dtype))
    return pipe.to(args.device)


def main(args: argparse.Namespace) -> int:
    from . import Suite, Transcriber, merge, read_results, run, write_report

    out = Path(args.out)
    if args.merge:
        res = merge(out)
    elif args.report_only:
        path = out / "results.csv"
        if not path.exists():
            raise SystemExit(f"attnlens eval: {path} does not exist (run first, or --merge shards)")
        res = read_results(path)
    else:
        named = {"builtin": "default", "multilingual": "multilingual"}
        suite = Suite.builtin(named[args.suite]) if args.suite in named else Suite.from_file(args.suite)
        variants = dict(_parse_variant(v) for v in (args.variant or ["baseline"]))
        from .runner import parse_variants, routed_variants

        routed_variants(parse_variants(variants), args.batch_size)  # fail on a bad adapter or router before loading
        asr = Transcriber(
            args.asr,
            model=args.asr_model,
            device=args.device,
            compute_type=args.compute_type,
            language=args.language,
            beam_size=args.beam_size,
        )
        pipe = _load_pipeline(args)
        res = run(
            pipe,
            suite,
            variants=variants,
            seeds=args.seeds,
            transcriber=asr,
            out_dir=out,
            batch_size=args.batch_size,
            normalize=args.normalize,
            generate_kwargs={"num_inference_steps": args.steps, "guidance_scale": args.guidance, "shift": args.shift},
            progress=not args.no_progress,
        )
        if out.joinpath("results.csv").exists() is False:  # a shard of a multi-process run: report after --merge
            print(f"wrote {len(res)} rows to a shard in {out}; run `attnlens eval --merge --out {out}` when all finish")
            return 0
    paths = write_report(res, out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
