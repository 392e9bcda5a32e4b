"""Cost of the attention-entropy penalty in a LoRA training step.

Full-size ACE-Step DiT config (24 blocks, hidden 2048, 16 query / 8 KV heads of 128; random weights), one clip of
``--audio-s`` seconds (30 s: 750 latent frames, 375 DiT frames), 769 packed keys of which 29 are sung lyric
tokens, batch 1, LoRA r=8 on self+cross to_q/to_k/to_v/to_out.0, AdamW. bf16 on CUDA.

Cases (forward + flow-matching loss + backward + optimizer step):

    lora_step                        plain LoRA step (the baseline)
    lora_step_again                  the same step timed a second time: its ratio to lora_step is the noise floor
    lora_step_entropy_all_keys       + λ · mean normalized entropy over all 769 keys (recomputed, P never stored)
    lora_step_entropy_lyrics         + λ · lyric-only entropy (29 sung tokens)
    lora_step_entropy_naive          + entropy from materialized softmax maps kept for backward (reference)

The two penalty cases run ``EntropyTap(impl=--entropy-impl)``: ``auto`` (default; the fused Triton kernels on
CUDA, the chunked PyTorch recomputation elsewhere), ``fused`` or ``recompute``. Each row records the
implementation that ran (``entropy_impl``); a forced implementation is added to the output file name.

Prints one JSON line per case, e.g. {"case": "lora_step_entropy_all_keys", "audio_s": 30, "time_ratio": ...,
"mem_ratio": ...}; ratios are against ``lora_step`` on the same device: the median over rounds of the
case's time over the plain step's time in the same round, with a bootstrap 95 % interval (``_timing.py``). ``--small`` runs a small config on the
CPU to check the script; CPU peak memory is not measured (reported as null).

    python benchmarks/bench_train.py --small
    python benchmarks/bench_train.py --out benchmarks/results        # on a GPU
    python benchmarks/bench_train.py --entropy-impl recompute --out benchmarks/results   # the PyTorch path
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import interleaved_times, paired_ratios  # noqa: E402

import attnlens.captures  # noqa: E402,F401  (import order)
from attnlens.reducers.differentiable import EntropyTap  # noqa: E402
from attnlens.train.lora import LoraConfig, add_lora, lora_parameters  # noqa: E402

CASES = (
    "lora_step",
    "lora_step_again",
    "lora_step_entropy_all_keys",
    "lora_step_entropy_lyrics",
    "lora_step_entropy_naive",
)


def build(small: bool, device: str, dtype: torch.dtype):
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    torch.manual_seed(0)
    if small:
        cfg = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, sliding_window=16)  # fmt: skip
    else:
        cfg = {}
    with torch.device(device):
        tr = AceStepTransformer1DModel(**cfg)
    tr.to(dtype)
    add_lora(tr, LoraConfig(rank=8, alpha=16), name="bench", seed=0)
    params = list(lora_parameters(tr, "bench").values())
    for p in params:
        p.data = p.data.float()
    tr.train()
    return tr, params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small config (CPU check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--audio-s", type=float, default=30.0)
    ap.add_argument("--keys", type=int, default=769, help="packed encoder keys")
    ap.add_argument("--lyric-tokens", type=int, default=29)
    ap.add_argument("--iters", type=int, default=30, help="rounds: every case once per round, shuffled")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weight", type=float, default=0.02, help="entropy weight λ")
    ap.add_argument("--out", default=None, help="folder for train_<device>.json")
    ap.add_argument(
        "--entropy-impl",
        choices=("auto", "fused", "recompute"),
        default="auto",
        help="EntropyTap implementation of the all-keys and lyrics cases",
    )
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 2 steps per case")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (lora_step always runs)")
    args = ap.parse_args(argv)
    cases = ["lora_step"] + [c for c in args.cases.split(",") if c and c != "lora_step"]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {CASES}")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.small:
        args.audio_s = min(args.audio_s, 4.0)
        args.keys = min(args.keys, 120)
        args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
    tr, params = build(args.small, args.device, dtype)
    opt = torch.optim.AdamW(params, lr=1e-5)
    C = tr.config.audio_acoustic_hidden_dim
    T = math.ceil(args.audio_s * 25)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, T, C, generator=g).to(dev, dtype)
    noise = torch.randn(1, T, C, generator=g).to(dev, dtype)
    ehs = torch.randn(1, args.keys, tr.config.hidden_size, generator=g).to(dev, dtype)
    ctx = torch.randn(1, T, 2 * C, generator=g).to(dev, dtype)
    t = torch.full((1,), 0.75, device=dev, dtype=dtype)
    xt = t * noise + (1 - t) * x0
    lyric_pos = [list(range(8, 8 + args.lyric_tokens))]  # header tokens first, as the packing puts them

    impl_used: dict[str, str | None] = {}

    def step(case: str) -> None:
        tap = None
        if case == "lora_step_entropy_all_keys":
            tap = EntropyTap(tr, keys="all", impl=args.entropy_impl)
        elif case == "lora_step_entropy_lyrics":
            tap = EntropyTap(tr, keys="lyrics", lyric_positions=lyric_pos, impl=args.entropy_impl)
        elif case == "lora_step_entropy_naive":
            tap = EntropyTap(tr, keys="all", impl="naive")
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            if tap is not None:
                tap.__enter__()
            try:
                pred = tr(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=ehs,
                          context_latents=ctx, return_dict=False)[0]  # fmt: skip
                loss = torch.mean((pred.float() - (noise - x0).float()) ** 2)
                if tap is not None:
                    loss = loss + args.weight * tap.mean().float()
            finally:
                if tap is not None:
                    tap.__exit__(None, None, None)
        impl_used[case] = None if tap is None else tap.impl_used
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    # cases interleaved in a shuffled order per round, ratios paired round by round (benchmarks/_timing.py)
    for case in cases:
        for _ in range(args.warmup):
            step(case)
    sync()
    peaks: dict[str, float] = {case: 0.0 for case in cases}

    def before(case: str) -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)

    def after(case: str) -> None:
        if cuda:
            peaks[case] = max(peaks[case], torch.cuda.max_memory_allocated(dev) / 2**30)

    times = interleaved_times(cases, step, args.iters, sync=sync, before=before, after=after)
    results = {
        case: {"time_s": statistics.median(times[case]), "peak_gib": peaks[case] if cuda else None} for case in cases
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        for case in cases:
            with profile(activities=acts) as prof:
                for _ in range(2):
                    step(case)
                sync()
            ev = prof.key_averages()
            syncs = {e.key: e.count for e in ev if "Synchronize" in e.key or "Memcpy" in e.key}
            print(f"== profile {case} (2 steps): syncs/copies {syncs}")
            print(ev.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    base = results["lora_step"]
    ratios = paired_ratios(times, ("lora_step", "lora_step_again"))
    device_name = torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    rows = []
    for case in cases:
        r = results[case]
        row = {
            "case": case,
            "audio_s": args.audio_s,
            "dit_frames": math.ceil(T / 2),
            "keys": args.keys,
            "lyric_tokens": args.lyric_tokens,
            "time_s": round(r["time_s"], 5),
            "peak_gib": None if r["peak_gib"] is None else round(r["peak_gib"], 4),
            **ratios[case],
            "entropy_impl": impl_used.get(case),
            "mem_ratio": None if r["peak_gib"] is None else round(r["peak_gib"] / base["peak_gib"], 4),
            "device": device_name,
            "dtype": str(dtype).replace("torch.", ""),
            "config": "small" if args.small else "full",
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        tag = "cuda" if cuda else "cpu"
        if cuda:
            tag = "cuda_" + "".join(ch if ch.isalnum() else "_" for ch in device_name).strip("_").lower()
        if args.entropy_impl != "auto":
            tag += f"_{args.entropy_impl}"
        path = os.path.join(args.out, f"train_{tag}{'_small' if args.small else ''}.json")
        payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows}
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
