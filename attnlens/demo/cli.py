"""``attnlens demo``: capture -> analyze -> plot -> report on the embedded demo model (or any AceStepPipeline).

Writes ``<out>/report.html`` (self-contained: figures inline as base64 PNG), ``<out>/explore.html`` (the interactive
explorer, linked from the report), ``<out>/capture.attn`` and ``<out>/heads.csv``, and prints a summary.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import time
from typing import Any

from ..files import atomic_write_text

DEFAULT_PROMPT = "warm voice, folk"
DEFAULT_LYRICS = "[verse]\nsun rise over blue sea home"
REAL_PROMPT = "folk, warm vocals, acoustic guitar"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="capture, analyze and plot the cross-attention of the built-in demo model (or --model) into a report",
    )
    p.add_argument("--model", default=None, help="an AceStepPipeline directory (default: the built-in demo model)")
    p.add_argument("--prompt", default=None, help=f"caption (default: {DEFAULT_PROMPT!r} on the demo model)")
    p.add_argument(
        "--lyrics", default=DEFAULT_LYRICS, help="lyrics (the demo model knows attnlens.models.demo_vocabulary())"
    )
    p.add_argument("--duration", type=float, default=4.0, help="audio seconds")
    p.add_argument("--steps", type=int, default=8, help="inference steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=4, help="alignment heads used for word timestamps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="attnlens-demo", help="output folder")
    p.add_argument("--no-explorer", action="store_true", help="skip the interactive explorer (explore.html)")
    p.set_defaults(func=run)


def load_model(path: str | None, device: str) -> tuple[Any, str]:
    if path is None:
        import attnlens as al

        return al.models.demo_pipeline(device=device), "attnlens demo model (built in)"
    import torch
    from diffusers import AceStepPipeline

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    pipe = AceStepPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path


def _png(fig: Any, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_text(text: str, path: str) -> None:
    atomic_write_text(path, text)


def layer_table(df: Any) -> Any:
    """Per layer: mean lyric / caption / timbre mass and entropies over steps, heads and batch items."""
    cols = ["lyric_mass", "lyric_meta_mass", "timbre_mass", "caption_mass", "entropy", "entropy_lyric"]
    return df.groupby("layer")[cols].mean().reset_index()


def head_table(df: Any) -> Any:
    """Every (layer, head) ranked by sung-frame monotonic alignment (mean over steps), as find_alignment_heads."""
    from attnlens.analyzers.table import summarize_heads

    cols = ["monotonic_alignment_sung", "monotonic_alignment", "diagonal_score", "lyric_mass", "entropy_lyric"]
    s = summarize_heads(df, by=("layer", "head"), metrics=cols, sort_by=None)
    return s.sort_values(
        ["monotonic_alignment_sung", "diagonal_score", "layer", "head"],
        ascending=[False, False, True, True],
        kind="stable",
        ignore_index=True,
    )


def _table_html(df: Any, floatfmt: str = "{:.3f}") -> str:
    return df.to_html(index=False, float_format=floatfmt.format, border=0, classes="t")


def decoder_reference(pipe: Any, latents: Any, lyrics: str) -> dict[str, Any] | None:
    """For the demo model: the decoder's transcript and forced alignment of the generated latents."""
    if getattr(pipe, "attnlens_demo", None) is None:
        return None
    from attnlens.demo.decoder import WordDecoder
    from attnlens.models.demo import demo_task

    task = demo_task()
    words = [w for w in lyrics.replace("[verse]", " ").split() if w]
    if any(w not in task.patterns for w in words):
        return None
    dec = WordDecoder(task)
    x = latents[0].float().cpu().numpy()
    tr = dec.decode(x)
    forced = dec.align(x, words)
    return {"decoded": tr.text, "words": words, "starts_s": list(forced.starts_s), "ends_s": list(forced.ends_s)}


def build_report(ctx: dict[str, Any]) -> str:
    """The HTML page (figures inline)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>attnlens demo report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}code{background:#f4f4f4}",
        "</style></head><body>",
        "<h1>attnlens demo report</h1>",
        f"<p>Model: <code>{e(ctx['model'])}</code><br>Caption: <code>{e(ctx['prompt'])}</code><br>"
        f"Lyrics: <code>{e(ctx['lyrics'])}</code><br>{ctx['duration']} s, {ctx['steps']} steps, seed {ctx['seed']}; "
        f"capture of {ctx['n_layers']} layers × {ctx['n_heads']} heads, {ctx['n_frames']} frames "
        f"({ctx['frame_rate']:.1f} per second). Generated and analysed in {ctx['seconds']:.1f} s.</p>",
        "<h2>Per-head maps (last step)</h2>",
        "<p>Rows: sung words; columns: time. Each panel is one cross-attention head.</p>",
        f"<img alt='per-head maps' src='data:image/png;base64,{ctx['png_heads']}'>",
        "<h2>Head ranking</h2>",
        "<p>Monotonic alignment over sung frames (mean over steps), the score "
        "<code>al.find_alignment_heads</code> ranks by.</p>",
        f"<img alt='scores' src='data:image/png;base64,{ctx['png_scores']}'>",
        _table_html(ctx["heads"].head(16)),
        "<h2>Alignment</h2>",
        f"<p>Word timestamps from <code>al.align</code> with heads {e(str(ctx['align_heads']))}.</p>",
        f"<img alt='best head' src='data:image/png;base64,{ctx['png_best']}'>",
        _table_html(ctx["words"], "{:.2f}"),
    ]
    if ctx.get("reference") is not None:
        ref = ctx["reference"]
        parts.append(
            "<p>Reference: the decoder's forced alignment of the generated latents (the model chooses its own "
            f"timing). Decoded transcript: <code>{e(ref['decoded'])}</code>.</p>"
        )
    parts += [
        "<h2>Lyric mass and entropy per layer</h2>",
        f"<img alt='layers' src='data:image/png;base64,{ctx['png_layers']}'>",
        _table_html(ctx["layers"]),
    ]
    if ctx.get("explorer"):
        parts.append(
            f"<h2>Interactive explorer</h2><p><a href='{e(ctx['explorer'])}'>{e(ctx['explorer'])}</a> "
            "(every step, layer and head; opens offline).</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _layers_figure(layers: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), layout="constrained")
    ax = fig.add_subplot()
    for col, style in (("lyric_mass", "o-"), ("caption_mass", "s-"), ("entropy", "^-"), ("entropy_lyric", "v-")):
        ax.plot(layers["layer"], layers[col], style, label=col)
    ax.set_xlabel("layer")
    ax.set_xticks(list(layers["layer"]))
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, ncols=2)
    ax.set_title("mean over steps, heads and frames", fontsize=9)
    return fig


def run(args: argparse.Namespace) -> int:
    import torch

    import attnlens as al

    t0 = time.perf_counter()
    pipe, name = load_model(args.model, args.device)
    prompt = args.prompt or (DEFAULT_PROMPT if args.model is None else REAL_PROMPT)
    # on a CPU the reference reducer (the fused kernel is for CUDA; under TRITON_INTERPRET it would be emulated)
    reducer = "auto" if str(args.device).startswith("cuda") else "reference"
    with al.capture(pipe, maps=True, reducer=reducer) as cap:
        out = pipe(
            prompt=prompt,
            lyrics=args.lyrics,
            audio_duration=args.duration,
            num_inference_steps=args.steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="latent",
        )
    os.makedirs(args.out, exist_ok=True)
    cap.save(os.path.join(args.out, "capture.attn"))
    df = al.analyze(cap)
    heads = head_table(df)
    top = al.find_alignment_heads(cap, top_k=args.top_k, table=df)
    alignment = al.align(cap, top, step=-1, recipe="song")
    words = alignment.to_dataframe()
    reference = decoder_reference(pipe, out.audios, args.lyrics)
    if reference is not None and len(reference["starts_s"]) == len(words):
        words["reference_start"] = reference["starts_s"]
        words["start_error"] = words["start"] - words["reference_start"]
    layers = layer_table(df)
    best = top.attrs["heads"][0]
    ctx = {
        "model": name,
        "prompt": prompt,
        "lyrics": args.lyrics,
        "duration": args.duration,
        "steps": args.steps,
        "seed": args.seed,
        "n_layers": len(cap.layers),
        "n_heads": len(cap.heads),
        "n_frames": cap.n_frames,
        "frame_rate": cap.frame_rate,
        "heads": heads,
        "align_heads": top.attrs["heads"],
        "words": words,
        "reference": reference,
        "layers": layers,
        "png_heads": _png(al.plot.heads(cap, step=-1, average_layers=False)),
        "png_scores": _png(al.plot.scores(df, "monotonic_alignment_sung")),
        "png_best": _png(al.plot.map(cap, step=-1, layer=best[0], head=best[1], figsize=(9, 3.5))),
        "png_layers": _png(_layers_figure(layers)),
    }
    _write_text(heads.to_csv(index=False), os.path.join(args.out, "heads.csv"))
    if not args.no_explorer:
        al.plot.save(al.plot.explore(cap), os.path.join(args.out, "explore.html"))
        ctx["explorer"] = "explore.html"
    ctx["seconds"] = time.perf_counter() - t0
    report = os.path.join(args.out, "report.html")
    _write_text(build_report(ctx), report)

    print(f"model: {name}")
    print(f"caption: {prompt!r}; lyrics: {args.lyrics!r}")
    print(cap.summary())
    print(f"\n{'layer':>5} {'lyric':>7} {'caption':>8} {'timbre':>7} {'entropy':>8} {'ent_lyr':>8}")
    for r in layers.itertuples():
        print(
            f"{r.layer:>5} {r.lyric_mass:7.3f} {r.caption_mass:8.3f} {r.timbre_mass:7.3f} {r.entropy:8.3f} "
            f"{r.entropy_lyric:8.3f}"
        )
    print(f"\ntop heads (monotonic alignment, sung frames): {top.attrs['heads']}")
    for r in heads.head(args.top_k).itertuples():
        print(f"  L{r.layer} H{r.head}: {r.monotonic_alignment_sung:.3f} (diagonal {r.diagonal_score:.3f})")
    print("\nword timestamps (al.align):")
    for r in words.itertuples():
        extra = f"  (decoder {r.reference_start:5.2f})" if "reference_start" in words else ""
        print(f"  {r.word:>10} {r.start:5.2f}-{r.end:5.2f} s{extra}")
    if reference is not None:
        print(f"decoded from the latents: {reference['decoded']!r}")
    print(f"\nreport: {report} ({time.perf_counter() - t0:.1f} s)")
    return 0
