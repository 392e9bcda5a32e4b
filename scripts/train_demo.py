"""Train the embedded demo model from scratch and write its weights (seeded; see docs/demo.md).

    python scripts/train_demo.py --out attnlens/models/data/demo --steps 5933 --batch 1024 --lr 1.5e-3 --warmup 400 \
        --examples 200000 --workers 15 --device cuda --eval-lines 300 --align-lines 24 --guide-weight 0.2 --guide-head 1,0

(the shipped model's run: docs/demo.md). ``--guide-weight`` trains one head to follow the sung word
(:class:`attnlens.demo.training.HeadGuide`); ``--entropy-weight`` adds the lyric-only entropy penalty; ``--arch``
overrides fields of the architecture (``DEMO_CONFIG``).

Renders ``--examples`` training lines of the tiny-songs task (1-8 words; held-out 4-8-word test lines are never
seen), trains the DiT and the condition encoder with flow matching, checks the decoded WER of generated held-out
lines and the alignment figures of :mod:`attnlens.demo.check`, and writes ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder for model.safetensors + config.json")
    ap.add_argument("--steps", type=int, default=12000, help="0: as many as fit in --max-seconds")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--examples", type=int, default=60000)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering the training set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    ap.add_argument("--eval-lines", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--align-lines", type=int, default=24, help="held-out lines for the alignment report (0: skip)")
    ap.add_argument("--entropy-weight", type=float, default=0.0, help="lyric-only cross-attention entropy penalty")
    ap.add_argument("--guide-weight", type=float, default=0.0, help="guided-attention loss on --guide-head")
    ap.add_argument("--guide-head", default="1,0", help="layer,query head trained to follow the sung word")
    ap.add_argument(
        "--arch",
        default="",
        help="architecture overrides of DEMO_CONFIG as k=v,k=v (e.g. dit_hidden=64,head_dim=8,lyric_layers=1)",
    )
    args = ap.parse_args(argv)

    from dataclasses import fields, replace

    from diffusers import AceStepPipeline

    from attnlens.demo.check import alignment_report
    from attnlens.demo.task import TinySongs
    from attnlens.demo.training import check_condition_matches_pipeline, make_groups, quick_eval, render_examples, train
    from attnlens.models.demo import DEMO_CONFIG, build_demo_components, save_demo_model

    t_start = time.perf_counter()
    types = {f.name: f.type for f in fields(DEMO_CONFIG)}
    over = {}
    for kv in filter(None, args.arch.split(",")):
        k, v = kv.split("=")
        if k not in types:
            raise SystemExit(f"--arch: unknown field {k!r}; known: {sorted(types)}")
        over[k] = None if v == "none" else (v == "true" if types[k] == "bool" else int(v))
    config = replace(DEMO_CONFIG, **over)
    task = TinySongs()  # the evaluation task: 4-8 words
    train_cfg = {**task.config(), "n_words_range": [1, 8]}  # same words, voices and split; shorter lines too
    train_task = TinySongs(**{**train_cfg, "n_words_range": (1, 8)})
    assert train_task.fingerprint() != task.fingerprint()  # config differs; patterns must not:
    assert all((train_task.patterns[w] == task.patterns[w]).all() for w in task.words)

    t0 = time.perf_counter()
    examples = render_examples(train_cfg, args.examples, args.seed, workers=args.workers)
    print(f"rendered {len(examples)} examples in {time.perf_counter() - t0:.1f} s", flush=True)

    pipe = AceStepPipeline(**build_demo_components(config, seed=args.seed))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device)
    # the piecewise conditioning equals the pipeline's own (checked at initialization, fp32)
    for n in (1, 5):
        exs = [ex for ex in examples if len(ex["words"]) == n][:4]
        diff = check_condition_matches_pipeline(pipe, task, exs)
        print(f"conditioning vs pipeline ({n} words): max |diff| = {diff:.2e}", flush=True)
        if diff > 1e-4:
            raise SystemExit("the training conditioning differs from the pipeline's")
    torch.backends.cuda.matmul.allow_tf32 = True  # after the exact fp32 check
    groups = make_groups(pipe, task, examples)
    del examples

    record = train(
        pipe,
        task,
        groups,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        bf16=args.bf16,
        log_every=args.log_every,
        max_seconds=args.max_seconds,
        entropy_weight=args.entropy_weight,
        guide_weight=args.guide_weight,
        guide_head=tuple(int(x) for x in args.guide_head.split(",")),
        log=lambda s: print(s, flush=True),
    )
    t0 = time.perf_counter()
    ev = quick_eval(pipe, task, n=args.eval_lines) if args.eval_lines else {}
    print(f"held-out WER (batched, {args.eval_lines} lines): {ev.get('wer')} ({time.perf_counter() - t0:.1f} s)")
    if args.align_lines:
        t0 = time.perf_counter()
        ev["alignment"] = alignment_report(pipe, task, n=args.align_lines)
        print(f"alignment ({time.perf_counter() - t0:.1f} s): {json.dumps(ev['alignment'])}", flush=True)
    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = {
        "task": task.config(),
        "task_fingerprint": task.fingerprint(),
        "training": {
            **record,
            "examples": args.examples,
            "train_n_words_range": [1, 8],
            "device": dev_name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "quick_eval": ev,
            "command": "python scripts/train_demo.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        },
    }
    save_demo_model(
        {k: getattr(pipe, k) for k in ("transformer", "condition_encoder", "text_encoder", "vae")},
        args.out,
        meta,
        config=config,
    )
    print(json.dumps({k: v for k, v in meta["training"].items() if k != "loss_log"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
