"""Time the 8-step DiT loop with and without capture; report ratios and peak memory.

``--family ace-step`` (default): full-size ``AceStepTransformer1DModel`` (24 layers, hidden 2048, 16 heads / 8 KV
heads), random weights, batch 1, 8 turbo steps, 769 encoder keys (29 sung lyric tokens).

``--family stable-audio``: full-size ``StableAudioDiTModel`` (diffusers' defaults, Stable Audio Open's size: 24
layers, 24 heads / 12 KV heads of 64), random weights, batch 2 (the pipeline's guidance doubles it), 8 steps,
130 keys (128 T5 positions: 20 prompt tokens, ``</s>``, 107 padding; then seconds_start, seconds_total), at
``--frames`` latent frames (256 ≈ 11.9 s, 1024 ≈ 47.5 s at 44100 / 2048 Hz).

Cases, measured side by side in one process:

    plain                     the loop with no hooks
    plain_again               the same loop timed a second time: its ratio to ``plain`` is the noise floor
    capture_stats_all_heads   al.capture(model) -- statistics for all layers, heads and steps (auto reducer)
    capture_stats_reference   the same with reducer="reference" (chunked PyTorch, fp32)
    capture_maps_16_heads     full maps for 16 (layer, head) pairs (layers 2-5 x heads 6, 8, 10, 11) on the CPU
    naive_stats               what a user would write: hooks on the query/key modules, softmax maps of all heads
                              per layer, reduced per frame (entropy, segment masses) on the GPU

Diagnostics (not run by default): ``diag_noop_kernel`` (the statistics kernel replaced by a no-op),
``diag_no_offload`` (no copies to the host), ``diag_hooks_only`` (hooks and step bookkeeping; q and k dropped),
``diag_budget_64`` (a stash budget of 64 MiB instead of 128: more launches per step, less memory held).

Cases are interleaved in a shuffled order per round and each ratio is the median over rounds of the case's time
over the baseline's time in the same round (baseline: mean of ``plain`` and ``plain_again``), with a bootstrap 95 %
interval (``benchmarks/_timing.py``).

Usage::

    python benchmarks/bench_capture.py --device cuda --durations 10 60 240 --out benchmarks/results/capture_h100.json
    python benchmarks/bench_capture.py --family stable-audio --device cuda --frames 256 1024 --cases plain \
        plain_again naive_stats capture_stats_all_heads capture_stats_reference
    python benchmarks/bench_capture.py --small          # tiny config on the CPU: checks that it runs
    python benchmarks/bench_capture.py --small --family stable-audio
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


def build_model(small: bool, device: str, dtype: torch.dtype, family: str = "ace-step"):
    if family == "stable-audio":
        return build_stable_audio(small, device, dtype)
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


def build_stable_audio(small: bool, device: str, dtype: torch.dtype):
    from diffusers import StableAudioDiTModel

    torch.manual_seed(0)
    cfg = {}
    if small:
        cfg = dict(sample_size=32, in_channels=4, num_layers=6, attention_head_dim=16, num_attention_heads=16,
                   num_key_value_attention_heads=8, out_channels=4, cross_attention_dim=32, time_proj_dim=8,
                   global_states_input_dim=16, cross_attention_input_dim=32)  # fmt: skip
    with torch.device(device):
        model = StableAudioDiTModel(**cfg)
    return model.to(dtype).eval()


def make_stable_audio_inputs(model, frames: int, n_keys: int, device: str, dtype: torch.dtype):
    c = model.config
    g = torch.Generator(device=device).manual_seed(0)
    B = 2
    return {
        "x": torch.randn(B, c.in_channels, frames, generator=g, device=device, dtype=dtype),
        "enc": torch.randn(B, n_keys, c.cross_attention_input_dim, generator=g, device=device, dtype=dtype),
        "glob": torch.randn(B, 1, c.global_states_input_dim, generator=g, device=device, dtype=dtype),
    }


def stable_audio_layout(n_keys: int) -> ItemLayout:
    from attnlens.adapters.stable_audio import STABLE_AUDIO_SEGMENTS

    prompt = min(20, n_keys - 3)
    return ItemLayout.from_segment_lengths(
        STABLE_AUDIO_SEGMENTS,
        prompt=prompt,
        prompt_special=1,
        padding=n_keys - prompt - 3,
        seconds_start=1,
        seconds_total=1,
    )


@torch.no_grad()
def stable_audio_loop(model, inp):
    x = inp["x"]
    ts = TURBO + [0.0]
    for i in range(8):
        t = torch.full((1,), ts[i], device=x.device, dtype=x.dtype)
        v = model(x, t, encoder_hidden_states=inp["enc"], global_hidden_states=inp["glob"], return_dict=False)[0]
        x = x + (ts[i + 1] - ts[i]) * v
    return x


@torch.no_grad()
def loop(model, inp):
    if "glob" in inp:
        return stable_audio_loop(model, inp)
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


def naive_stats(model, inp, layout):
    """The loop with what a user would write: forward hooks on each layer's query and key modules (through the
    family, which knows where they are), the softmax map of every head, and its per-frame entropy and segment
    masses kept on the device. Returns the output and the statistics ``{layer: (entropy, mass)}`` of the last step."""
    from attnlens.families import resolve

    fam = resolve(model)
    f = fam.facts
    onehot = None
    kept, pending, handles = {}, {}, []

    def on_q(layer):
        def hook(mod, args, out):
            pending[layer] = fam.query_of(out)

        return hook

    def on_k(layer):
        def hook(mod, args, out):
            nonlocal onehot
            q = pending.pop(layer).transpose(1, 2).float()  # [B, H, T, D]
            k = fam.key_of(out).transpose(1, 2).float().repeat_interleave(f.group, dim=1)  # [B, H, S, D]
            p = torch.softmax(q @ k.transpose(-1, -2) * f.scale, dim=-1)  # [B, H, T, S]
            ent = -(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(p.shape[-1])
            if onehot is None:
                codes = torch.as_tensor(layout.segment_codes(), device=p.device)
                onehot = torch.nn.functional.one_hot(codes.clamp(min=0), len(layout.vocabulary)).float()
            kept[layer] = (ent, p @ onehot)

        return hook

    for layer in range(f.n_layers):
        qm, km = fam.query_key_modules(layer)
        handles += [qm.register_forward_hook(on_q(layer)), km.register_forward_hook(on_k(layer))]
    try:
        out = loop(model, inp)
    finally:
        for h in handles:
            h.remove()
    return out, kept


def run_case(case: str, model, inp, layout, device: str):
    if case in ("plain", "plain_again"):  # plain_again: the same loop timed twice shows the noise floor
        return loop(model, inp), None
    if case == "naive_stats":
        return naive_stats(model, inp, layout)[0], None
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
    ap.add_argument("--family", default="ace-step", choices=["ace-step", "stable-audio"])
    ap.add_argument("--durations", type=float, nargs="+", default=[10, 60, 240], help="ACE-Step: seconds of audio")
    ap.add_argument("--frames", type=int, nargs="+", default=[256, 1024], help="Stable Audio: latent frames")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--rounds", "--repeats", type=int, default=30, help="rounds (every case once per round)")
    ap.add_argument("--keys", type=int, default=None, help="encoder keys (ACE-Step 769, Stable Audio 130)")
    ap.add_argument("--small", action="store_true", help="tiny config (CPU check)")
    ap.add_argument("--cases", nargs="+",
                    default=["plain", "plain_again", "capture_stats_all_heads", "capture_stats_reference",
                             "capture_maps_16_heads"])  # fmt: skip
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    sa = args.family == "stable-audio"
    if args.keys is None:
        args.keys = 130 if sa else 769
    if args.small:
        dtype, args.durations, args.frames, args.keys = torch.float32, [4.0], [32], 24 if sa else 64
    model = build_model(args.small, args.device, dtype, args.family)
    layout = stable_audio_layout(args.keys) if sa else layout_for(args.keys)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    results = []
    lengths = [f / (44100 / 2048) for f in args.frames] if sa else args.durations
    for sec in lengths:
        if sa:
            inp = make_stable_audio_inputs(model, round(sec * 44100 / 2048), args.keys, args.device, dtype)
        else:
            inp = make_inputs(model, sec, args.keys, args.device, dtype)
        times, peaks, caps = measure(args.cases, model, inp, layout, args.device, args.rounds)
        ratios = paired_ratios(times)
        base_m = peaks["plain"] or 1
        agree = agreement(caps)
        for c in args.cases:
            row = {
                "case": c,
                "audio_s": round(sec, 3),
                **({"frames": inp["x"].shape[-1]} if sa else {}),
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
        "config": {
            "family": args.family,
            "dtype": args.dtype,
            "keys": args.keys,
            "small": args.small,
            "batch": 2 if sa else 1,
            "steps": 8,
        },  # fmt: skip
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
