"""The seed's study in miniature, on the embedded demo model (see README.md beside this file).

Five variants, all starting from the shipped demo model:

- ``baseline``: the demo model itself;
- ``verse``: LoRA trained on "clean voice" clips (one voice, ``clear``, lower noise) with lyrics ``"[verse]"`` only;
- ``verse+entropy``: the same plus the attention-entropy penalty;
- ``lyrics``: LoRA on the same clips with their real lyrics;
- ``lyrics+entropy``: the same plus the penalty.

Evaluated with ``al.eval.run`` on held-out lines (the demo decoder as transcriber, ``output="latent"``): WER/CER
with bootstrap CIs, plus per generation the lyrics alignment score of the top alignment heads, mean lyric mass and
mean normalized entropy (a scorer that regenerates the item under ``al.capture``).

    python examples/mini_study/run_study.py --out runs/mini_study                     # full (GPU recommended)
    python examples/mini_study/run_study.py --out runs/mini_study --steps 40 --lines 10  # reduced, CPU
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import attnlens as al
from attnlens.demo.decoder import WordDecoder
from attnlens.demo.task import TinySongs
from attnlens.models.demo import demo_task

VARIANTS = {
    "verse": {"lyrics": False, "entropy": 0.0},
    "verse+entropy": {"lyrics": False, "entropy": 0.02},
    "lyrics": {"lyrics": True, "entropy": 0.0},
    "lyrics+entropy": {"lyrics": True, "entropy": 0.02},
}
CLEAN_VOICE = "clear"
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def clean_voice_data(task: TinySongs, n: int, seed: int, real_lyrics: bool) -> list[dict]:
    """``n`` training lines sung by one voice with lower noise (σ 0.02 instead of 0.05)."""
    clean = TinySongs(
        **{
            **task.config(),
            "voices": [CLEAN_VOICE],
            "noise_std": 0.02,
            "n_words_range": tuple(task.n_words_range),
            "word_frames": tuple(task.word_frames),
            "gap_frames": tuple(task.gap_frames),
            "lead_in_frames": tuple(task.lead_in_frames),
        }
    )
    items = []
    for i, ex in enumerate(clean.make_dataset(n, seed=seed, split="train")):
        items.append(
            {
                "key": f"clean{i:05d}",
                "latents": ex["latents"],
                "caption": ex["caption"],
                "lyrics": ex["lyrics"] if real_lyrics else "[verse]",
            }
        )
    return items


def train_variant(name: str, spec: dict, task: TinySongs, args: argparse.Namespace) -> str:
    out = os.path.join(args.out, "adapters", name.replace("+", "_"))
    done = os.path.join(out, "adapter", ADAPTER_FILE)
    if os.path.isfile(done):  # trained by an earlier call
        return done
    pipe = al.models.demo_pipeline(device=args.device)
    ds = al.train.AudioLyricsDataset.from_latents(
        clean_voice_data(task, args.train_lines, args.seed, spec["lyrics"]), allow_empty_lyrics=not spec["lyrics"]
    )
    lora = al.train.LoraConfig(rank=8, alpha=16, targets=("self_attn", "cross_attn"), projections=("q", "k", "v", "o"))
    al.train.Trainer(
        pipe,
        lora,
        ds,
        out_dir=out,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        entropy_weight=spec["entropy"],
        entropy_keys="all",
        seed=args.seed,
        adapter_name="study",
        save_every=max(args.steps, 1),
        progress=False,
    ).fit()
    # the weights file itself: the eval runner's load_lora_adapter(path) does not find it in the folder offline
    return done


def make_scorer(task: TinySongs, top_k: int = 4):
    def scorer(pipe, entry, seed):
        g = torch.Generator().manual_seed(int(seed))
        with al.capture(pipe, maps=True) as cap:
            pipe(
                prompt=entry.prompt,
                lyrics=entry.lyrics,
                audio_duration=entry.duration,
                num_inference_steps=8,
                guidance_scale=1.0,
                generator=g,
                output_type="latent",
            )
        df = al.analyze(cap)
        heads = al.find_alignment_heads(cap, top_k=top_k, table=df)
        aas = al.lyrics_alignment_score(cap, heads=heads.attrs["heads"])
        return {
            "aas_top_heads": float(aas.score),
            "lyric_mass": float(df["lyric_mass"].mean()),
            "entropy": float(df["entropy"].mean()),
            "entropy_lyric": float(df["entropy_lyric"].mean()),
            "best_monotonic_sung": float(heads["monotonic_alignment_sung"].iloc[0]),
        }

    return scorer


def heldout_suite(
    task: TinySongs, n: int, seed: int = 99, prefix: str = "line", name: str = "demo-heldout"
) -> al.eval.Suite:
    """``n`` held-out lines of the task (never seen in training) as an evaluation suite of 4 s prompts."""
    return al.eval.Suite.from_records(
        [
            {"id": f"{prefix}{i:03d}", "caption": ex["caption"], "lyrics": ex["lyrics"], "duration": 4.0}
            for i, ex in enumerate(task.make_dataset(n, seed=seed, split="test"))
        ],
        name=name,
    )


def study_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options of the study's training and evaluation (shared with route_study.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/mini_study")
    ap.add_argument("--steps", type=int, default=400, help="LoRA steps per variant")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--train-lines", type=int, default=400)
    ap.add_argument("--lines", type=int, default=60, help="held-out evaluation lines")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def train_all(task: TinySongs, args: argparse.Namespace) -> dict[str, str | None]:
    """The baseline (no adapter) and every trained variant's adapter file (trained here unless already there)."""
    adapters: dict[str, str | None] = {"baseline": None}
    for name, spec in VARIANTS.items():
        t = time.perf_counter()
        adapters[name] = train_variant(name, spec, task, args)
        print(f"trained {name} in {time.perf_counter() - t:.1f} s -> {adapters[name]}", flush=True)
    return adapters


def main(argv: list[str] | None = None) -> int:
    args = study_arguments(__doc__).parse_args(argv)
    t0 = time.perf_counter()
    task = demo_task()
    adapters = train_all(task, args)
    suite = heldout_suite(task, args.lines)
    dec = WordDecoder(task)
    pipe = al.models.demo_pipeline(device=args.device)
    results = al.eval.run(
        pipe,
        suite,
        variants=adapters,
        seeds=args.seeds,
        transcriber=lambda lat: dec.decode(lat).text,
        out_dir=os.path.join(args.out, "eval"),
        output="latent",
        scorer=make_scorer(task),
        generate_kwargs={"num_inference_steps": 8, "guidance_scale": 1.0},
        progress=False,
    )
    from attnlens.eval.report import write_report
    from attnlens.eval.stats import summarize

    paths = write_report(results, os.path.join(args.out, "eval"), title="attnlens mini study (demo model)")
    cols = [
        c
        for c in ("wer", "cer", "aas_top_heads", "lyric_mass", "entropy", "entropy_lyric", "best_monotonic_sung")
        if c in results.columns
    ]
    print(summarize(results, metrics=cols).to_string())
    print(f"report: {paths['markdown']} ({time.perf_counter() - t0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
