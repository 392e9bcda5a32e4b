"""``attnlens demo``: capture one generation and print a per-layer summary."""

from __future__ import annotations

import argparse
import time

DEFAULT_PROMPT = "folk, warm vocals, acoustic guitar"
DEFAULT_LYRICS = "[verse]\nwalking down the morning road\nsinging with the river"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="capture cross-attention on the built-in model and summarize it")
    p.add_argument("--model", default=None, help="an AceStepPipeline directory (default: the built-in model)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--lyrics", default=DEFAULT_LYRICS)
    p.add_argument("--duration", type=float, default=4.0, help="audio seconds")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="attnlens-demo", help="output folder")
    p.set_defaults(func=run)


def load_model(path: str | None):
    import attnlens as al

    if path is None:
        return al.models.tiny_pipeline(seed=0), "tiny pipeline (random weights)"
    from diffusers import AceStepPipeline

    return AceStepPipeline.from_pretrained(path), path


def layer_summary(cap) -> list[dict]:
    """Per layer: mean lyric mass, caption mass, padding mass and normalized entropy over steps, heads, frames."""
    from attnlens.captures.layout import SEGMENTS

    mass = cap.stats["mass"]  # [step, layer, batch, head, frame, segment]
    ent = cap.stats["entropy"]  # [step, layer, batch, head, frame]
    rows = []
    for li, layer in enumerate(cap.layers):
        m = mass[:, li].float().mean(dim=(0, 1, 2, 3))
        rows.append(
            {
                "layer": layer,
                **{f"{s}_mass": float(m[i]) for i, s in enumerate(SEGMENTS)},
                "entropy": float(ent[:, li].mean()),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    import attnlens as al

    t0 = time.perf_counter()
    pipe, name = load_model(args.model)
    with al.capture(pipe) as cap:
        pipe(
            prompt=args.prompt,
            lyrics=args.lyrics,
            audio_duration=args.duration,
            num_inference_steps=args.steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="latent",
        )
    os.makedirs(args.out, exist_ok=True)
    path = cap.save(os.path.join(args.out, "capture.attn"))
    print(f"model: {name}")
    print(cap.summary())
    print(f"{'layer':>5} {'lyric':>7} {'meta':>7} {'timbre':>7} {'caption':>8} {'padding':>8} {'entropy':>8}")
    for r in layer_summary(cap):
        print(
            f"{r['layer']:>5} {r['lyric_mass']:7.3f} {r['lyric_meta_mass']:7.3f} {r['timbre_mass']:7.3f} "
            f"{r['caption_mass']:8.3f} {r['padding_mass']:8.3f} {r['entropy']:8.3f}"
        )
    print(f"capture saved to {path} ({time.perf_counter() - t0:.1f} s)")
    return 0
