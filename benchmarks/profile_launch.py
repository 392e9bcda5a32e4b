"""Host time of one statistics launch, piece by piece (no synchronization inside the timed calls).

A capture's loop is bound by the host: what one launch of the fused statistics kernel costs the host (building
the layers' offset tables, finding the launch plan, Triton's launcher) is paid once per launch: once or more per
step (once per step up to about 70 s of audio with the default stash budget). Shapes are those of the full-size DiT at ``--seconds`` of audio; ``--layers``
layers go to one launch (their q and k allocated separately, as a model leaves them).

    python benchmarks/profile_launch.py --seconds 60 --layers 12
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_fused import GROUP, N_SEG, D, H, make_inputs  # noqa: E402

from attnlens.devices import upload  # noqa: E402
from attnlens.reducers import fused  # noqa: E402
from attnlens.reducers.layer_table import layer_table  # noqa: E402

S = 769  # keys


def per_call_us(fn, n: int, sync) -> float:
    """Median host microseconds of ``fn()`` over ``n`` calls (a synchronization every 32 calls, outside the clock,
    so that the GPU's queue never fills)."""
    out = []
    for i in range(n):
        if i % 32 == 0:
            sync()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    sync()
    return statistics.median(out) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--layers", type=int, default=12, help="layers per launch (at least 2)")
    ap.add_argument("--n", type=int, default=400)
    args = ap.parse_args()
    if args.layers < 2:
        ap.error("--layers: one launch over several layers needs at least 2")
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    if not cuda:
        print("no CUDA device: the launch costs measured here are those of a GPU")
        return
    sync = torch.cuda.synchronize
    T = math.ceil(math.ceil(args.seconds * 25) / 2)
    inp = make_inputs(T, S, "bench", layers=args.layers, device=dev)  # q/k stacked [L, ...], layout, outputs
    q1, k1, seg, lidx, nl, heads, out = (inp[n] for n in ("q", "k", "seg", "lidx", "nl", "heads", "out"))
    qs = [x.clone() for x in q1]  # one allocation per layer, as a model leaves them
    ks = [x.clone() for x in k1]
    hl = list(range(H))
    scale = D**-0.5
    offs = list(range(args.layers))
    pinned = torch.empty(2 * args.layers, dtype=torch.int64, pin_memory=True)
    dev_tab = torch.empty(2 * args.layers, dtype=torch.int64, device=dev)

    def launch_list():
        fused.reduce_fused(qs, ks, scale, heads, GROUP, seg, lidx, nl, out=out, slot=0, heads_list=hl, n_seg=N_SEG)

    def launch_stacked():
        fused.reduce_fused(q1, k1, scale, heads, GROUP, seg, lidx, nl, out=out, slot=0, heads_list=hl, n_seg=N_SEG)

    pieces = {
        "reduce_fused, list of layers (offset tables)": launch_list,
        "reduce_fused, stacked layers (no tables)": launch_stacked,
        "layer_table(qs)": lambda: layer_table(qs),
        "_launch_plan (cached)": lambda: fused._launch_plan(seg, lidx, heads, GROUP, fused.DEFAULT_CONFIG, hl),
        "torch.tensor(offsets)": lambda: torch.tensor(offs, dtype=torch.int64),
        "torch.tensor(offsets).pin_memory()": lambda: torch.tensor(offs, dtype=torch.int64).pin_memory(),
        "upload(torch.tensor(offsets))": lambda: upload(torch.tensor(offs, dtype=torch.int64), dev),
        # (rewrites one pinned buffer that an earlier copy may still read: the values do not matter here, the time does)
        "pinned.copy_ + dev.copy_(non_blocking)": lambda: (
            pinned[: args.layers].copy_(torch.tensor(offs, dtype=torch.int64)),
            dev_tab.copy_(pinned, non_blocking=True),
        ),
        "torch.empty (device, 5 buffers)": lambda: [torch.empty_like(v) for v in out.values()],
        "data_ptr() of every layer": lambda: [x.data_ptr() for x in qs],
    }
    for fn in pieces.values():  # warm up (compiles the kernel, fills the caches)
        fn()
    sync()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; T={T}, {args.layers} layers per launch")
    for name, fn in pieces.items():
        print(f"  {per_call_us(fn, args.n, sync):8.1f} us  {name}")
    # what a forward hook costs a module call (the capture taps norm_q and norm_k of every layer)
    norm = torch.nn.RMSNorm(D, device=dev, dtype=torch.bfloat16)
    x = qs[0]
    print("module call (RMSNorm over q):")
    print(f"  {per_call_us(lambda: norm(x), args.n, sync):8.1f} us  no hooks")
    h = norm.register_forward_hook(lambda m, a, o: None)
    print(f"  {per_call_us(lambda: norm(x), args.n, sync):8.1f} us  with a forward hook that does nothing")
    h.remove()
    orig = norm.forward

    def wrapped(*a, **k):
        out = orig(*a, **k)
        return out

    norm.forward = wrapped
    print(f"  {per_call_us(lambda: norm(x), args.n, sync):8.1f} us  with the instance's forward wrapped")
    del norm.forward
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.n):
        launch_list()
    prof.disable()
    sync()
    print(f"cProfile of {args.n} list launches:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
