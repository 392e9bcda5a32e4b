"""Differentiable attention entropy, one layer: fused Triton kernels vs the chunked PyTorch recomputation.

Full-size ACE-Step cross-attention shapes: q ``[1, T, 16, 128]`` (T = 375 or 750 DiT frames), k ``[1, 769, 8, 128]``,
bf16 (``--dtype``), scale ``1/sqrt(128)``; all keys, and the lyric-only penalty over 29 of the 769 keys (the key plan built once,
as :class:`EntropyTap` does). For each case, one JSON line with, per implementation:

    fwd_ms / fwd_bwd_ms     GPU time per call (CUDA events around 24 back-to-back calls, as the 24 layers of one
                            training step; median of --iters)
    fwd_bwd_host_us         host time to issue one forward + backward (launch cost; overlaps the GPU in training)
    step_ms                 24 × fwd_bwd_ms: the penalty's GPU time in one training step
    peak_mib                extra CUDA memory of one forward + backward over q, k
    err_*                   max |impl - naive| of values (normalized entropy), dq, dk; ``*_rel`` over max |naive|.
                            naive = softmax of the same inputs upcast to fp32, materialized (autograd)

``--sweep`` times the fused kernels over block shapes ``(BLOCK_T, BLOCK_S, num_warps)``, one kernel at a time,
and prints the fastest per kernel (candidates for ``fused_entropy.DEFAULT_BLOCKS``).

    python benchmarks/profile_entropy.py                   # on a GPU
    python benchmarks/profile_entropy.py --sweep
    python benchmarks/profile_entropy.py --smoke           # tiny shapes, CPU (Triton interpreter): checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = 24
SWEEP = {
    "fwd": [(64, 64, 4), (32, 64, 4), (64, 32, 4), (32, 32, 4), (128, 64, 8), (64, 128, 8), (128, 128, 8)],
    "dq": [(64, 64, 4), (32, 64, 4), (64, 32, 4), (32, 32, 4), (128, 64, 8), (64, 128, 8)],
    "dk": [(64, 64, 4), (32, 64, 4), (64, 32, 4), (32, 32, 4), (128, 64, 8), (64, 128, 8)],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="375,750", help="DiT frames T, comma-separated")
    ap.add_argument("--keys", type=int, default=769)
    ap.add_argument("--lyric-keys", type=int, default=29)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--impls", default="fused,recompute")
    ap.add_argument("--sweep", action="store_true", help="time the fused kernels over block shapes")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU through Triton's interpreter")
    args = ap.parse_args(argv)
    if args.smoke:  # before Triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.frames, args.keys, args.lyric_keys, args.heads, args.kv_heads, args.head_dim = "37", 45, 7, 4, 2, 16
        args.iters = 1

    import torch

    from attnlens.reducers.differentiable import (
        DEFAULT_CHUNK_BYTES,
        _entropy,
        _key_plan,
        attention_entropy_naive,
        lyric_key_mask,
    )
    from attnlens.reducers.fused_entropy import DEFAULT_BLOCKS, fused_attention_entropy

    dev = torch.device("cpu" if args.smoke else "cuda")
    cuda = dev.type == "cuda"
    dtype = getattr(torch, args.dtype)
    H, KVH, D, S = args.heads, args.kv_heads, args.head_dim, args.keys
    scale = D**-0.5
    reps = 1 if args.smoke else LAYERS

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def gpu_ms(fn) -> float:
        """Per-call time: median over --iters of (``reps`` back-to-back calls) / reps."""
        fn()
        sync()
        times = []
        for _ in range(args.iters):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(reps):
                    fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) / reps)
            else:
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times.append((time.perf_counter() - t0) * 1e3 / reps)
        return statistics.median(times)

    def host_us(fn) -> float:
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t1 = time.perf_counter()
        sync()
        return (t1 - t0) / reps * 1e6

    device_name = torch.cuda.get_device_name(dev) if cuda else "cpu (Triton interpreter)"
    g = torch.Generator().manual_seed(0)
    for T in (int(t) for t in args.frames.split(",")):
        # post-RMSNorm-like magnitudes (unit rms per element), as the model's normed q and k
        q = torch.randn(1, T, H, D, generator=g).to(dev, dtype).requires_grad_()
        k = torch.randn(1, S, KVH, D, generator=g).to(dev, dtype).requires_grad_()
        for keys in ("all", "lyrics"):
            mask = None
            plan = None
            if keys == "lyrics":
                mask = lyric_key_mask([list(range(8, 8 + args.lyric_keys))], S)  # CPU, as EntropyTap builds it
                plan = _key_plan(mask, 1, S, dev)
            # reference: fp32 softmax of the same bf16 values, materialized
            qf, kf = q.detach().float().requires_grad_(), k.detach().float().requires_grad_()
            ref = attention_entropy_naive(qf, kf, scale, None if mask is None else mask.to(dev))
            rq, rk = torch.autograd.grad(ref.mean(), (qf, kf))
            ref = ref.detach()
            row = {"case": f"entropy_{keys}_keys", "frames": T, "keys": S, "taken_keys": S if mask is None else
                   int(mask.sum()), "heads": H, "kv_heads": KVH, "head_dim": D, "dtype": args.dtype,
                   "device": device_name, "torch": torch.__version__}  # fmt: skip
            for impl in args.impls.split(","):

                def fwd(impl=impl, plan=plan, q=q, k=k):
                    with torch.no_grad():
                        return _entropy(q, k, scale, plan, True, DEFAULT_CHUNK_BYTES, impl)

                def fwd_bwd(impl=impl, plan=plan, q=q, k=k):
                    h = _entropy(q, k, scale, plan, True, DEFAULT_CHUNK_BYTES, impl)
                    return h, torch.autograd.grad(h.mean(), (q, k))

                h, (gq, gk) = fwd_bwd()
                sync()
                r = {"fwd_ms": gpu_ms(fwd), "fwd_bwd_ms": gpu_ms(fwd_bwd), "fwd_bwd_host_us": host_us(fwd_bwd)}
                r["step_ms"] = r["fwd_bwd_ms"] * LAYERS
                if cuda:
                    torch.cuda.empty_cache()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    fwd_bwd()
                    sync()
                    r["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                r["err_values"] = float((h.detach().float() - ref).abs().max())
                r["err_dq"] = float((gq.float() - rq).abs().max())
                r["err_dq_rel"] = r["err_dq"] / float(rq.abs().max())
                r["err_dk"] = float((gk.float() - rk).abs().max())
                r["err_dk_rel"] = r["err_dk"] / float(rk.abs().max())
                row[impl] = {n: (round(v, 4) if n.endswith(("ms", "us", "mib")) else float(f"{v:.3e}"))
                             for n, v in r.items()}  # fmt: skip
            if "fused" in row and "recompute" in row:
                row["speedup_fwd_bwd"] = round(row["recompute"]["fwd_bwd_ms"] / row["fused"]["fwd_bwd_ms"], 3)
            print(json.dumps(row), flush=True)

            if args.sweep:
                kmask = None
                kk = k
                if plan is not None:
                    order, kmask, _ = plan
                    kk = torch.gather(k, 1, order[:, :, None, None].expand(-1, -1, KVH, D))
                best = {}
                for kernel, configs in SWEEP.items():
                    times = {}
                    for cfg in configs:
                        blocks = {**DEFAULT_BLOCKS, kernel: cfg}
                        # only the kernel under test runs in backward: the other input carries no gradient
                        qq = q.detach() if kernel == "dk" else q
                        kd = kk.detach() if kernel == "dq" else kk

                        def run(blocks=blocks, qq=qq, kd=kd, kernel=kernel, kmask=kmask):
                            if kernel == "fwd":
                                with torch.no_grad():
                                    return fused_attention_entropy(qq, kd, scale, kmask, blocks)
                            h = fused_attention_entropy(qq, kd, scale, kmask, blocks)
                            return torch.autograd.grad(h.mean(), (qq if kernel == "dq" else kd,))

                        try:
                            times[str(cfg)] = round(gpu_ms(run), 4)
                        except Exception as e:  # a block shape that does not compile / fit
                            times[str(cfg)] = f"failed: {type(e).__name__}"
                    ok = {c: t for c, t in times.items() if isinstance(t, float)}
                    best[kernel] = min(ok, key=ok.get) if ok else None
                    print(json.dumps({"sweep": kernel, "frames": T, "keys": keys, "ms": times,
                                      "note": "fwd alone; dq and dk include the forward"}), flush=True)  # fmt: skip
                print(json.dumps({"best_blocks": best, "frames": T, "keys": keys}), flush=True)
    if not cuda:
        print("(smoke run: CPU interpreter times mean nothing)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
