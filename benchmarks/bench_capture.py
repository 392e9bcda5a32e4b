"""Time the 8-step DiT loop with and without capture; report ratios and peak memory.

Full-size ``AceStepTransformer1DModel`` (24 layers, hidden 2048, 16 heads / 8 KV heads), random weights, batch 1,
8 turbo steps, 769 encoder keys (29 sung lyric tokens). Cases, measured side by side in one process:

    plain                     the loop with no hooks
    plain_again               the same loop timed a second time: its ratio to ``plain`` is the noise floor
    capture_stats_all_heads   al.capture(model) -- statistics for all layers, heads and steps (auto reducer)
    capture_stats_reference   the same with reducer="reference" (chunked PyTorch, fp32)
    capture_maps_16_heads     full maps for 16 (layer, head) pairs (layers 2-5 x heads 6, 8, 10, 11) on the CPU

Diagnostics (not run by default): ``diag_noop_kernel`` (the statistics kernel replaced by a no-op),
``diag_no_offload`` (no copies to the host), ``diag_hooks_only`` (hooks and step bookkeeping; q and k dropped),
``diag_budget_64`` (a stash budget of 64 MiB instead of 128: more launches per step, less memory held).

Cases are interleaved in a shuffled order per round and each ratio is the median over rounds of the case's time
over the baseline's time in the same round (baseline: mean of ``plain`` and ``plain_again``), with a bootstrap 95 %
interval (``benchmarks/_timing.py``).

Usage::

    python benchmarks/bench_capture.py --device cuda --durations 10 60 240 --out benchmarks/results/capture_h100.json
    python benchmarks/bench_capture.py --small          # tiny config on the CPU: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved_times, paired_ratios  # noqa: E402

import attnlens as al  # noqa: E402
from attnlens.captures import ItemLayout  # noqa: E402

TURBO = [1.0, 0.9545454545, 0.9, 0.8333333333, 0.75, 0.6428571429, 0.5, 0.3]


def build_model(small: bool, device: str, dtype: torch.dtype):
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    torch.manual_seed(0)
    if small:
        cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, sliding_window=16)  # fmt: skip
    else:
        cfg = {}
    with torch.device(device):
        model = AceStepTransformer1DModel(**cfg)
    return model.to(dtype).eval()


def make_inputs(model, seconds: float, n_keys: int, device: str, dtype: torch.dtype):
    c = model.config
    T = math.ceil(seconds * 25)
    g = torch.Generator(device=device).manual_seed(0)
    ctx_dim = c.in_channels - c.audio_acoustic_hidden_dim
    enc_dim = c.encoder_hidden_size or c.hidden_size
    return {
        "x": torch.randn(1, T, c.audio_acoustic_hidden_dim, generator=g, device=device, dtype=dtype),
        "ctx": torch.randn(1, T, ctx_dim, generator=g, device=device, dtype=dtype),
        "enc": torch.randn(1, n_keys, enc_dim, generator=g, device=device, dtype=dtype),
    }


@torch.no_grad()
def loop(model, inp):
    x = inp["x"]
    ts = TURBO + [0.0]
    for i in range(8):
        t = torch.full((1,), ts[i], device=x.device, dtype=x.dtype)
        v = model(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=inp["enc"],
                  context_latents=inp["ctx"], return_dict=False)[0]  # fmt: skip
        x = x + (ts[i + 1] - ts[i]) * v
    return x


def layout_for(n_keys: int) -> ItemLayout:
    lyric, meta, timbre = 29, 24, 1
    return ItemLayout.from_segment_lengths(
        lyric=lyric, lyric_meta=meta, timbre=timbre, caption=n_keys - lyric - meta - timbre
    )


def run_case(case: str, model, inp, layout, device: str):
    if case in ("plain", "plain_again"):  # plain_again: the same loop timed twice shows the noise floor
        return loop(model, inp), None
    if case.startswith("diag_"):  # diagnostics: where the overhead goes
        import attnlens.captures.session as sess

        saved = (sess.StatsLauncher.__call__, sess.CaptureSession._offload_step, sess.CaptureSession._reduce)
        stats = True
        if case == "diag_noop_kernel":  # everything but the kernel
            sess.StatsLauncher.__call__ = lambda *a, **k: None
        elif case == "diag_no_offload":  # everything but the copies to the host
            sess.CaptureSession._offload_step = lambda self, pos: None
        elif case == "diag_budget_64":  # a stash half the default: more launches, less memory held
            pass
        elif case == "diag_hooks_only":  # the hooks and the step bookkeeping; q and k dropped at once
            sess.CaptureSession._reduce = lambda self, layer, q, k: None
            stats = False
        else:
            raise ValueError(f"unknown diagnostic case {case!r}")
        try:
            ses = sess.CaptureSession(model, layout=layout, num_steps=8, stats=stats)
            if case == "diag_budget_64":
                ses.stash_budget_bytes = 64 << 20
            with ses as cap:
                out = loop(model, inp)
        finally:
            sess.StatsLauncher.__call__, sess.CaptureSession._offload_step, sess.CaptureSession._reduce = saved
        return out, cap
    kw = {"layout": layout, "num_steps": 8}
    if case == "capture_stats_reference":
        kw["reducer"] = "reference"
    if case == "capture_maps_16_heads":
        kw.update(layers=[2, 3, 4, 5], heads=[6, 8, 10, 11], maps=True)
    with al.capture(model, **kw) as cap:
        out = loop(model, inp)
    return out, cap


def measure(cases, model, inp, layout, device, rounds):
    """Warm up every case, then time them interleaved (shuffled order per round); peak memory per case."""
    peaks = {c: 0 for c in cases}
    caps = {}
    cuda = device == "cuda"
    for c in cases:  # warm-up (compiles kernels)
        run_case(c, model, inp, layout, device)

    fresh = {}

    def run(case):
        out, fresh[case] = run_case(case, model, inp, layout, device)  # the previous capture is freed in after()
        return out

    def before(case):
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def after(case):
        if cuda:
            peaks[case] = max(peaks[case], torch.cuda.max_memory_allocated())
        caps[case] = fresh.pop(case)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = interleaved_times(cases, run, rounds, sync=sync, before=before, after=after)
    return times, peaks, caps


def agreement(caps) -> dict:
    """Largest difference between the fused and reference statistics (same inputs)."""
    a, b = caps.get("capture_stats_all_heads"), caps.get("capture_stats_reference")
    if a is None or b is None:
        return {}
    res = {"reducer_auto": a.meta.get("reducer")}
    for name in ("entropy", "mass", "entropy_lyric"):
        res[f"max_abs_diff_{name}"] = float((a.stats[name] - b.stats[name]).abs().max())
    for name in ("argmax", "lyric_argmax"):
        res[f"mismatch_frac_{name}"] = float((a.stats[name] != b.stats[name]).float().mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--durations", type=float, nargs="+", default=[10, 60, 240])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--rounds", "--repeats", type=int, default=30, help="rounds (every case once per round)")
    ap.add_argument("--keys", type=int, default=769)
    ap.add_argument("--small", action="store_true", help="tiny config (CPU check)")
    ap.add_argument("--cases", nargs="+",
                    default=["plain", "plain_again", "capture_stats_all_heads", "capture_stats_reference",
                             "capture_maps_16_heads"])  # fmt: skip
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.small:
        dtype, args.durations, args.keys = torch.float32, [4.0], 64
    model = build_model(args.small, args.device, dtype)
    layout = layout_for(args.keys)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    results = []
    for sec in args.durations:
        inp = make_inputs(model, sec, args.keys, args.device, dtype)
        times, peaks, caps = measure(args.cases, model, inp, layout, args.device, args.rounds)
        ratios = paired_ratios(times)
        base_m = peaks["plain"] or 1
        agree = agreement(caps)
        for c in args.cases:
            row = {
                "case": c,
                "audio_s": sec,
                "time_s": round(statistics.median(times[c]), 5),
                **ratios[c],
                "peak_mem_gib": round(peaks[c] / 2**30, 3),
                "mem_ratio": round(peaks[c] / base_m, 4) if peaks["plain"] else None,
            }
            if c == "capture_stats_all_heads":
                row.update(agree)
            results.append(row)
            print(json.dumps(row), flush=True)
    doc = {
        "device": dev_name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "attnlens": al.__version__,
        },  # fmt: skip
        "config": {"dtype": args.dtype, "keys": args.keys, "small": args.small, "batch": 1, "steps": 8},
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
