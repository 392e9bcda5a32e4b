"""Where a capture's time goes on the host: cProfile of the 8-step loop with and without ``al.capture``.

Full-size DiT (random weights, bf16) as in ``bench_capture.py``. Prints, for ``--seconds`` of audio, the wall time
of the plain loop and of a capture (median of ``--n``), the capture's pinned host memory, and the functions with
the most own time in ``--n`` captures (cProfile), attnlens functions separately.

    python benchmarks/profile_capture.py --seconds 60
    python benchmarks/profile_capture.py --seconds 60 --timeline   # + torch.profiler: kernels, launches, GPU idle
    python benchmarks/profile_capture.py --small          # tiny config on the CPU: checks that it runs

``--timeline`` runs one plain loop and one capture under ``torch.profiler`` and prints, for each, the number of
kernel launches, the GPU's busy time (sum of kernel and copy durations) against the wall time, and the top kernels
by GPU time, so that host-bound and GPU-bound costs can be told apart.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_capture import build_model, layout_for, loop, make_inputs  # noqa: E402

import attnlens as al  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--timeline", action="store_true", help="also profile one run of each with torch.profiler")
    ap.add_argument("--sections", action="store_true", help="host time of each part of a capture (perf_counter)")
    ap.add_argument("--maps", action="store_true",
                    help="profile bench_capture's maps case (layers 2-5 x heads 6, 8, 10, 11, maps=True)")  # fmt: skip
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.small
    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    keys = 64 if args.small else 769
    model = build_model(args.small, dev, dtype)
    inp = make_inputs(model, 4 if args.small else args.seconds, keys, dev, dtype)
    layout = layout_for(keys)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    opts = {"layout": layout, "num_steps": 8}
    if args.maps:
        opts.update(layers=[2, 3, 4, 5], heads=[6, 8, 10, 11], maps=True)

    def plain():
        loop(model, inp)
        sync()

    def captured():
        with al.capture(model, **opts) as cap:
            loop(model, inp)
        sync()
        return cap

    cap = captured()
    plain()
    pinned = sum(t.numel() * t.element_size() for t in cap.stats.values() if t.is_pinned())
    times = {"plain": [], "capture": []}
    for _ in range(args.n):
        for name, fn in (("plain", plain), ("capture", captured)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"audio {args.seconds} s on {torch.cuda.get_device_name() if cuda else 'cpu'}: plain {med['plain'] * 1e3:.1f} ms, "
          f"capture {med['capture'] * 1e3:.1f} ms ({med['capture'] / med['plain']:.3f}x); "
          f"pinned statistics per capture {pinned / 2**20:.1f} MiB")  # fmt: skip
    for name, fn in (("plain", plain), ("capture", captured)):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.n):
            fn()
        prof.disable()
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        st.sort_stats("tottime").print_stats(args.top)
        if name == "capture":
            st.sort_stats("cumtime").print_stats("attnlens", args.top)
        print(f"==== {name}: {args.n} runs\n" + "\n".join(line for line in out.getvalue().splitlines() if line.strip()))
    # where the host stands when the GPU finishes: a host far ahead means the loop waits on the GPU (queue full)
    for name, body in (("plain", lambda: loop(model, inp)), ("capture", None)):
        host, total = [], []
        for _ in range(args.n):
            sync()
            t0 = time.perf_counter()
            if body is None:
                ses = al.capture(model, **opts)
                ses.__enter__()
                loop(model, inp)
                ses.hooks.remove()  # the hooks only; the finalize (which waits) is timed below
                t1 = time.perf_counter()
                ses.__exit__(None, None, None)
            else:
                body()
                t1 = time.perf_counter()
            sync()
            host.append(t1 - t0)
            total.append(time.perf_counter() - t0)
        print(f"{name}: host done after {statistics.median(host) * 1e3:.1f} ms, GPU done after "
              f"{statistics.median(total) * 1e3:.1f} ms")  # fmt: skip
    if args.sections:
        sections(captured, args.n)
    if args.timeline:
        for name, fn in (("plain", plain), ("capture", captured)):
            timeline(name, fn, cuda, args.top)


SECTIONS = {  # attribute of attnlens.captures.session -> what it covers
    "capture": "al.capture(...): building the session",
    "CaptureSession.__enter__": "registering the hooks",
    "CaptureSession._on_step_begin": "step start: timestep, layout",
    "CaptureSession._reduce": "per layer: stash q/k (includes the flushes below)",
    "CaptureSession._flush_stash": "one statistics launch per run of stashed layers (includes the launcher)",
    "StatsLauncher.__call__": "offset tables and kernel launch",
    "fused.layer_tables": "offset tables of the layers' q and k (in the launcher)",
    "StatsLauncher.__init__": "launch plan and constant arguments, once per layout",
    "CaptureSession._new_step_buffers": "per-step output buffers",
    "CaptureSession._maps_of_run": "maps: probabilities of the stashed layers, a few layers per product (--maps)",
    "MapsKeeper.keep": "maps: one copy of a group of layers' maps to pinned host memory (--maps)",
    "stats.layer_probabilities": "maps: the batched product and softmax (--maps)",
    "CaptureSession._on_step_end": "step end (includes the offload)",
    "CaptureSession._offload_step": "copies of a step's statistics to pinned host memory",
    "CaptureSession.__exit__": "hooks removed, finalize (includes the synchronization that waits for the GPU)",
    "CaptureSession._finalize": "finalize: wait for the GPU, check, assemble",
    "torch.cuda.synchronize": "finalize's wait for the GPU (the rest of finalize is host work)",
    "StepClock.resolve_timesteps": "finalize: device timesteps read back and checked",
    "CaptureSession._assemble_stats": "finalize: statistics as one CPU tensor each",
    "CaptureSession._flag_nonfinite": "finalize: the check for non-finite entropies",
}


def sections(captured, n: int) -> None:
    """Host wall time spent inside each part of a capture (``time.perf_counter`` around the call, no profiler
    overhead elsewhere), in ms per capture, median of ``n`` captures. Nested parts are included in their parents."""
    import attnlens.captures.session as sess

    acc: dict[str, float] = {}
    saved = {}

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)
        saved[(owner, attr)] = (fn, attr in vars(owner))  # inherited methods are wrapped on the class, then removed

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)

    import attnlens.captures.maps as maps
    import attnlens.captures.steps as steps
    import attnlens.reducers.fused as fused

    owners = {
        "MapsKeeper": maps.MapsKeeper,
        "StepClock": steps.StepClock,
        "": sess,
        "CaptureSession": sess.CaptureSession,
        "StatsLauncher": sess.StatsLauncher,
        "torch.cuda": torch.cuda,
        "fused": fused,
        "stats": sess,  # the session's own reference to the function
    }
    for label in SECTIONS:
        cls, _, attr = label.rpartition(".")
        wrap(al if label == "capture" else owners[cls], attr, label)
    per_run: dict[str, list[float]] = {k: [] for k in SECTIONS}
    walls = []
    try:
        captured()
        for _ in range(n):
            acc.clear()
            t0 = time.perf_counter()
            captured()
            walls.append(time.perf_counter() - t0)
            for k in SECTIONS:
                per_run[k].append(acc.get(k, 0.0))
    finally:
        for (owner, attr), (fn, own) in saved.items():
            if own:
                setattr(owner, attr, fn)
            else:
                delattr(owner, attr)
    print(f"==== sections: host ms per capture (median of {n}); wall {statistics.median(walls) * 1e3:.1f} ms")
    for k, what in SECTIONS.items():
        print(f"  {statistics.median(per_run[k]) * 1e3:8.3f}  {k:36s} {what}")


def timeline(name: str, fn, cuda: bool, top: int) -> None:
    """One run under torch.profiler: launches, GPU busy time against wall time, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
    # device-side events only (kernels, copies, memsets): operators report their kernels' time as well
    gpu_us = sum(e.self_device_time_total for e in events if str(getattr(e, "device_type", "")).endswith("CUDA"))
    print(f"==== timeline {name}: wall {wall * 1e3:.1f} ms (profiled), kernel launches {launches}, "
          f"GPU busy {gpu_us / 1e3:.1f} ms")  # fmt: skip
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top,
                       max_name_column_width=60))  # fmt: skip


if __name__ == "__main__":
    main()
