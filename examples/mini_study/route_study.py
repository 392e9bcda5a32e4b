"""Routing on the mini study: which of the study's adapters to use per held-out line, learned from its evaluation.

Uses the variants of run_study.py (trained here unless ``<out>/adapters`` already holds them) and
``al.eval.merge_grid`` of the four adapters (every pair averaged with ``--merge-step 0.5``). Then:

1. ``al.eval.run`` on ``--lines`` held-out lines with every variant and merge (the demo decoder as transcriber);
2. ``al.eval.attention_features``: one sampling step of the base model per line;
3. ``al.eval.evaluate_router`` (leave one line out) with the lines' words, lyric facts, attention, and all three;
4. a router fitted on all those lines (``<out>/router.json``), run by ``al.eval.run`` as a variant beside every
   adapter on ``--fresh-lines`` other held-out lines that neither the router nor the adapters have seen.

    python examples/mini_study/route_study.py --out runs/mini_study
"""

from __future__ import annotations

import os
import time

from run_study import heldout_suite, study_arguments, train_all

import attnlens as al
from attnlens.demo.decoder import WordDecoder
from attnlens.models.demo import demo_task

GENERATE = {"num_inference_steps": 8, "guidance_scale": 1.0}


def evaluate(pipe, suite, variants, transcriber, out_dir, seeds):
    return al.eval.run(
        pipe,
        suite,
        variants=variants,
        seeds=seeds,
        transcriber=transcriber,
        out_dir=out_dir,
        output="latent",
        generate_kwargs=GENERATE,
        progress=False,
    )


def main(argv: list[str] | None = None) -> int:
    ap = study_arguments(__doc__)
    ap.add_argument("--fresh-lines", type=int, default=60, help="other held-out lines for the fitted router")
    ap.add_argument("--merge-step", type=float, default=0.5, help="weight grid step of the merged adapters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    task = demo_task()
    adapters = train_all(task, args)
    merges = al.eval.merge_grid(
        {n: p for n, p in adapters.items() if p is not None}, os.path.join(args.out, "merges"), step=args.merge_step
    )
    pipe = al.models.demo_pipeline(device=args.device)
    dec = WordDecoder(task)

    def transcriber(lat):
        return dec.decode(lat).text

    suite = heldout_suite(task, args.lines)
    t = time.perf_counter()
    res = evaluate(pipe, suite, {**adapters, **merges}, transcriber, os.path.join(args.out, "route_eval"), args.seeds)
    print(f"evaluated {len(res)} rows in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    att = al.eval.attention_features(pipe, suite, generate_kwargs=GENERATE)
    print(f"attention features of {len(att)} lines in {time.perf_counter() - t:.1f} s", flush=True)
    att.to_csv(os.path.join(args.out, "route_eval", "attention_features.csv"))
    for label, feats in (
        ("words", ["text"]),
        ("lyric facts", ["facts"]),
        ("attention", [att]),
        ("words + facts + attention", ["text", "facts", att]),
    ):
        rep = al.eval.evaluate_router(res, feats, prompts=suite, merged=list(merges))
        print(f"\n### Router on {label} (leave one line out)\n\n{rep.to_markdown()}", flush=True)
    router = al.eval.fit_router(res, ["text", "facts", att], prompts=suite, variants=list(adapters))
    router.save(os.path.join(args.out, "router.json"))
    print(f"\n{router}: saved to {os.path.join(args.out, 'router.json')}")
    fresh = heldout_suite(task, args.fresh_lines, seed=7, prefix="fresh", name="demo-fresh")
    res2 = evaluate(
        pipe, fresh, {**adapters, "routed": router}, transcriber, os.path.join(args.out, "route_fresh"), args.seeds
    )
    summary = al.eval.summarize(res2, metrics=["wer"])
    print(f"\n### The fitted router on {len(fresh)} fresh lines\n\n{summary.round(4).to_string()}")
    print(f"routed to: {res2[res2.variant == 'routed'].routed_to.value_counts().to_dict()}")
    best = summary.drop("routed")["wer_mean"].idxmin()
    c = al.eval.compare(res2, "routed", best)
    print(
        f"routed minus {best}: {c['mean_diff']:+.4f} [{c['ci_lo']:+.4f}, {c['ci_hi']:+.4f}], better on "
        f"{c['a_better']} lines, worse on {c['b_better']}, equal on {c['equal']} (Wilcoxon p = {c['p_value']:.3f})"
    )
    print(f"\n{time.perf_counter() - t0:.1f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
