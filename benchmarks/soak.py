"""Soak: many captures in a row must not grow hooks, Python objects or memory.

Each iteration opens ``al.capture(...)``, runs one generation, drops the capture, and samples:

    hooks        attnlens hooks left on the transformer / text encoder / condition encoder (must stay 0)
    objects      len(gc.get_objects()) after gc.collect() (every ``--every`` captures: a full pass is slow)
    rss_mb       resident set size (/proc/self/statm)
    traced_mb    memory held by Python allocations (tracemalloc; CPU runs, off with --no-tracemalloc)
    cuda_mb      torch.cuda.memory_allocated() (CUDA runs)

The summary compares the mean of the first and of the last ``--window`` captures (after ``--warmup`` iterations
that are not sampled: caches and allocators settle there).

CPU (tiny pipeline, real diffusers classes; what the tests run)::

    python benchmarks/soak.py --n 1000 --out benchmarks/results/soak_cpu.json

CUDA, full-size DiT (``AceStepTransformer1DModel()`` default config, random weights, bf16), bare transformer with a
layout, 8 turbo steps over ``--seconds`` of audio (60 s = 1500 latent frames, 750 DiT frames), 769 keys::

    python benchmarks/soak.py --device cuda --full --n 1000 --seconds 60 --out benchmarks/results/soak_cuda.json

Prints one JSON line per capture and a final ``{"summary": ...}`` line; ``--out`` writes everything as one JSON file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnlens as al  # noqa: E402
from attnlens.taps import attnlens_hooks  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident set size in MiB (Linux /proc; falls back to psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:  # pragma: no cover - not Linux
        import psutil

        return psutil.Process().memory_info().rss / 2**20


class TinyWorkload:
    """The tiny pipeline: a whole generation (text encoder, condition encoder, DiT steps) per capture."""

    def __init__(self, seconds: float, steps: int, maps: bool) -> None:
        self.pipe = al.models.tiny_pipeline(seed=0)
        self.kw = dict(
            prompt="folk, warm vocals",
            lyrics="[verse]\nwalking down the morning road",
            audio_duration=seconds,
            num_inference_steps=steps,
            guidance_scale=1.0,
            output_type="latent",
        )
        self.maps = maps
        self.components = [self.pipe.transformer, self.pipe.text_encoder, self.pipe.condition_encoder]

    def once(self) -> Any:
        with al.capture(self.pipe, layers=None, maps=self.maps) as cap:
            self.pipe(**self.kw, generator=torch.Generator().manual_seed(0))
        return cap


class FullWorkload:
    """Full-size DiT, bare transformer with a layout, 8 turbo steps (as benchmarks/bench_capture.py)."""

    TURBO = [1.0, 0.9545454545, 0.9, 0.8333333333, 0.75, 0.6428571429, 0.5, 0.3]

    def __init__(self, seconds: float, device: str, dtype: torch.dtype, keys: int, maps: bool) -> None:
        import math

        from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

        from attnlens.captures import ItemLayout

        torch.manual_seed(0)
        with torch.device(device):
            self.model = AceStepTransformer1DModel().to(dtype).eval()
        c = self.model.config
        T = math.ceil(seconds * 25)
        g = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn(1, T, c.audio_acoustic_hidden_dim, generator=g, device=device, dtype=dtype)
        self.ctx = torch.randn(
            1, T, c.in_channels - c.audio_acoustic_hidden_dim, generator=g, device=device, dtype=dtype
        )
        self.enc = torch.randn(1, keys, c.encoder_hidden_size or c.hidden_size, generator=g, device=device, dtype=dtype)
        lyric, meta, timbre = 29, 24, 1
        self.layout = ItemLayout.from_segment_lengths(
            lyric=lyric, lyric_meta=meta, timbre=timbre, caption=keys - lyric - meta - timbre
        )
        self.maps = maps
        self.components = [self.model]

    @torch.no_grad()
    def once(self) -> Any:
        # maps=True on the full model keeps a few heads only (all 24x16 full maps of 60 s would be ~3 GiB per step)
        kw = dict(layers=[2, 3], heads=[6, 10], maps=True) if self.maps else {}
        with al.capture(self.model, layout=self.layout, num_steps=8, **kw) as cap:
            x = self.x
            ts = self.TURBO + [0.0]
            for i in range(8):
                t = torch.full((1,), ts[i], device=x.device, dtype=x.dtype)
                v = self.model(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=self.enc,
                               context_latents=self.ctx, return_dict=False)[0]  # fmt: skip
                x = x + (ts[i + 1] - ts[i]) * v
        return cap


def soak(
    n: int = 1000,
    workload: Any = None,
    warmup: int = 10,
    every: int = 10,
    window: int = 100,
    use_tracemalloc: bool = True,
    cuda: bool = False,
    emit: Any = None,
) -> dict[str, Any]:
    """Run ``n`` captures after ``warmup`` unsampled ones; return samples and a first-vs-last-window summary."""
    wl = workload or TinyWorkload(0.4, 1, False)
    for _ in range(warmup):
        wl.once()
    # samples go into one preallocated array: keeping them must not itself add objects or traced memory
    fields = ("seconds", "hooks", "rss_mb", "objects", "traced_mb", "cuda_mb", "cuda_peak_mb")
    table = np.full((n, len(fields)), np.nan)
    gc.collect()
    if use_tracemalloc:
        tracemalloc.start()
    t_start = time.perf_counter()
    try:
        for i in range(n):
            t0 = time.perf_counter()
            cap = wl.once()
            assert cap.stats or cap.maps is not None, "the capture kept nothing"
            del cap
            row = table[i]
            row[0] = time.perf_counter() - t0
            row[1] = sum(len(attnlens_hooks(m)) for m in wl.components)
            row[2] = rss_mb()
            if i % every == 0 or i == n - 1:  # a full gc pass costs ~0.6 s with torch + diffusers loaded
                gc.collect()
                row[3] = len(gc.get_objects())
            if use_tracemalloc:
                row[4] = tracemalloc.get_traced_memory()[0] / 2**20
            if cuda:
                torch.cuda.synchronize()
                row[5] = torch.cuda.memory_allocated() / 2**20
                row[6] = torch.cuda.max_memory_allocated() / 2**20
            if emit:
                emit(_sample(i, row, fields))
    finally:
        if use_tracemalloc:
            tracemalloc.stop()
    total = time.perf_counter() - t_start
    samples = [_sample(i, table[i], fields) for i in range(n)]
    return {"samples": samples, "summary": summarize(samples, window, n, total)}


def _sample(i: int, row: np.ndarray, fields: tuple[str, ...]) -> dict[str, Any]:
    s: dict[str, Any] = {"i": i}
    for k, v in zip(fields, row):
        if not np.isnan(v):
            s[k] = int(v) if k in ("hooks", "objects") else round(float(v), 4)
    return s


def summarize(samples: list[dict[str, Any]], window: int, n: int, total_s: float) -> dict[str, Any]:
    """Mean of each quantity over the first and the last ``window`` captures, their difference, and the maxima."""
    w = max(1, min(window, len(samples) // 2))
    out: dict[str, Any] = {"captures": n, "window": w, "wall_s": round(total_s, 2)}
    for k in ("objects", "rss_mb", "traced_mb", "cuda_mb", "seconds"):
        first = [s[k] for s in samples[:w] if k in s]
        last = [s[k] for s in samples[-w:] if k in s]
        if not first or not last:
            continue
        a, b = sum(first) / len(first), sum(last) / len(last)
        out[k] = {
            "first": round(a, 4),
            "last": round(b, 4),
            "growth": round(b - a, 4),
            "max": max(s[k] for s in samples if k in s),
            "samples": len(first) + len(last),
        }
    out["hooks_max"] = max(s["hooks"] for s in samples)
    if "cuda_peak_mb" in samples[-1]:
        out["cuda_peak_mb"] = samples[-1]["cuda_peak_mb"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="captures (sampled)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--every", type=int, default=10, help="count Python objects (full gc) every k-th capture")
    ap.add_argument("--window", type=int, default=100, help="samples averaged at the start and at the end")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="full-size DiT (needs a GPU)")
    ap.add_argument("--seconds", type=float, default=None, help="audio length (default 0.4 tiny, 60 full)")
    ap.add_argument("--steps", type=int, default=1, help="tiny pipeline: inference steps per capture")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="full model dtype")
    ap.add_argument("--keys", type=int, default=769)
    ap.add_argument("--maps", action="store_true", help="also keep full maps (a few heads on the full model)")
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="print the summary only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if args.full:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        wl = FullWorkload(args.seconds or 60.0, args.device, dtype, args.keys, args.maps)
    else:
        if args.device != "cpu":
            raise SystemExit("the tiny pipeline soak runs on the CPU; use --full for a GPU")
        wl = TinyWorkload(args.seconds or 0.4, args.steps, args.maps)
    res = soak(
        args.n,
        wl,
        warmup=args.warmup,
        every=args.every,
        window=args.window,
        use_tracemalloc=not args.no_tracemalloc,
        cuda=cuda,
        emit=None if args.quiet else (lambda s: print(json.dumps(s), flush=True)),
    )
    doc = {
        "device": torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu"),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "attnlens": al.__version__},
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        **res,
    }
    print(json.dumps({"summary": res["summary"]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, args.out)
    return doc


if __name__ == "__main__":
    main()
