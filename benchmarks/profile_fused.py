"""Where the capture's time goes on a GPU: kernel time per block shape, launch overhead, hook overhead.

python benchmarks/profile_fused.py --frames 3000 --keys 769
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnlens.reducers.fused import reduce_fused  # noqa: E402


def cuda_time(fn, n=20) -> float:
    """Median GPU time of ``fn`` in ms (CUDA events)."""
    fn()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def cpu_time(fn, n=200) -> float:
    """Mean CPU time of ``fn`` in µs (no synchronization: launch cost)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--keys", type=int, default=769)
    args = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    T, S, H, KVH, D = args.frames, args.keys, 16, 8, 128
    q = torch.randn(1, T, H, D, device=dev, dtype=dt)
    k = torch.randn(1, S, KVH, D, device=dev, dtype=dt)
    seg = torch.randint(0, 5, (1, S), device=dev, dtype=torch.int32)
    lidx = torch.full((1, S), -1, device=dev, dtype=torch.int32)
    lidx[0, :29] = torch.arange(29, device=dev, dtype=torch.int32)
    nl = torch.tensor([29], device=dev, dtype=torch.int32)
    heads = torch.arange(16, device=dev, dtype=torch.int32)
    out = {}
    for bt, bs, w in [(64, 64, 4), (128, 64, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8), (32, 64, 4)]:

        def f(bt=bt, bs=bs, w=w):
            reduce_fused(q, k, D**-0.5, heads, 2, seg, lidx, nl, block_t=bt, block_s=bs, num_warps=w)

        out[f"kernel_ms_bt{bt}_bs{bs}_w{w}"] = round(cuda_time(f), 4)
    out["launch_us"] = round(cpu_time(lambda: reduce_fused(q, k, D**-0.5, heads, 2, seg, lidx, nl)), 1)
    qf = q.float()
    kf = k.float().repeat_interleave(2, dim=2)
    out["sdpa_like_matmul_ms"] = round(cuda_time(lambda: torch.einsum("bthd,bshd->bhts", qf, kf)), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
