"""Sweep the fused statistics kernel's variants on a GPU: time per layer and error against the fp32 reference.

Full-size shapes of the ACE-Step DiT's cross-attention: q ``[1, T, 16, 128]`` for T = 125 / 750 / 3000 frames
(10 / 60 / 240 s of audio), k ``[1, 769, 8, 128]``, bf16, all 16 heads; plus the session's batched launch (all
24 layers of a step stacked into one call, at T = 125). Keys follow a song-shaped layout (``--layout song``: a
header, sung lines of 7 tokens each closed by a line break, structure tags every 8 lines, one timbre key, a
caption, padding) or the one of ``bench_capture.py`` (``--layout bench``: 29 sung tokens, then 24 lyric_meta).

Then the library's configuration (``DEFAULT_CONFIG``) at other segment counts (``--segments``: the same keys, the
sung tokens one segment, the other keys cut into runs, one segment each) and with the last ``--masked`` share of
the keys masked out of the softmax (segment code -2), at the largest T and in the batched launch.

Every configuration is compiled first (in ``--jobs`` processes sharing Triton's on-disk cache), then timed with
``triton.testing.do_bench_cudagraph`` (median over replays of a CUDA graph of many calls: GPU time without the
launch cost; the launch cost is reported separately). Errors are max abs differences from
:func:`attnlens.reducers.stats.reduce_reference` (fp32) on the same inputs, and argmax mismatch rates.

python benchmarks/profile_fused.py --out benchmarks/results/profile_fused_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnlens.reducers.fused import DEFAULT_CONFIG, FusedConfig, new_outputs, reduce_fused  # noqa: E402
from attnlens.segments import MASKED_CODE  # noqa: E402

H, KVH, D, GROUP = 16, 8, 128, 2
N_LAYERS = 24
N_SEG = 5  # the segments of both layouts below (ACE-Step's: lyric, lyric_meta, timbre, caption, padding)

# Named kernel configurations compared here: the plain formulas, one switch at a time, all switches (the library
# runs DEFAULT_CONFIG, "all_nogqa" below); with gqa (G = 2 heads of a KV group per program) a program holds
# G * block_t rows: 64 with block_t=32.
_ALL = FusedConfig(block_t=32, exp2=True, gqa=True, lyric="share", order=True, argmax="eq")
VARIANTS: dict[str, FusedConfig] = {
    "plain": FusedConfig(),
    "exp2": FusedConfig(exp2=True),
    "gqa": FusedConfig(gqa=True, num_warps=8),
    "gather": FusedConfig(lyric="gather"),
    "share": FusedConfig(lyric="share"),
    "order_gather": FusedConfig(lyric="gather", order=True),
    "order_share": FusedConfig(lyric="share", order=True),
    "pair": FusedConfig(argmax="pair"),
    "eq": FusedConfig(argmax="eq"),
    "all": _ALL,
    "all_nogqa": replace(_ALL, gqa=False, block_t=64),
    "all_noorder": replace(_ALL, order=False),
}


def song_layout(n_keys: int = 769) -> tuple[list[int], int]:
    """Segment codes of a song-shaped packed layout and the number of sung tokens (the lyric set L)."""
    codes = [1] * 6  # "# Languages / # Lyric" header
    for line in range(60):
        if line % 8 == 0:
            codes += [1, 1, 1]  # "[verse]"
        codes += [0] * 7 + [1]  # sung tokens, line break
    codes += [1]  # <|endoftext|>
    codes += [2]  # timbre
    codes += [3] * 240  # caption
    if len(codes) > n_keys:
        raise ValueError(f"the song layout needs at least {len(codes)} keys")
    codes += [4] * (n_keys - len(codes))
    return codes, codes.count(0)


def bench_layout(n_keys: int = 769) -> tuple[list[int], int]:
    """The layout of ``bench_capture.py``: 29 sung tokens, 24 lyric_meta, 1 timbre key, the rest caption."""
    codes = [0] * 29 + [1] * 24 + [2] + [3] * (n_keys - 54)
    return codes, 29


def spread_segments(codes: list[int], n_seg: int) -> list[int]:
    """The same keys over ``n_seg`` segments: the sung tokens (code 0) keep code 0, the other keys are cut into
    ``n_seg - 1`` runs of consecutive keys, codes ``1 .. n_seg - 1`` (one segment: every key code 0)."""
    others = [j for j, c in enumerate(codes) if c != 0]
    out = [0] * len(codes)
    for r, j in enumerate(others):
        out[j] = 0 if n_seg == 1 else 1 + r * (n_seg - 1) // len(others)
    return out


def sweep_configs(quick: bool = False) -> list[FusedConfig]:
    """The configurations to time: baselines, one switch at a time, then all switches with launch shapes."""
    plain = VARIANTS["plain"]
    one = [VARIANTS[n] for n in ("exp2", "gather", "share", "order_share", "pair", "eq")]
    # gqa doubles the rows of a program (G = 2): compare at equal rows, 128, with 8 warps
    one += [replace(plain, block_t=128, num_warps=8), VARIANTS["gqa"]]
    n = VARIANTS["all_nogqa"]  # all switches, one head per program (rows = block_t)
    alls = [replace(n, **s) for s in (
        dict(block_t=64, block_s=32, num_warps=4),
        dict(block_t=64, block_s=64, num_warps=4),
        dict(block_t=64, block_s=64, num_warps=4, maxnreg=128),
        dict(block_t=128, block_s=32, num_warps=8),
        dict(block_t=128, block_s=64, num_warps=8),
        dict(block_t=64, block_s=128, num_warps=8),
        dict(block_t=32, block_s=32, num_warps=2),
        dict(block_t=64, block_s=32, num_warps=4, num_stages=2),
        dict(block_t=128, block_s=64, num_warps=8, maxnreg=128),
    )]  # fmt: skip
    a = VARIANTS["all"]  # gqa on: rows = 2 * block_t
    alls += [replace(a, **s) for s in (
        dict(block_t=32, block_s=64, num_warps=4),
        dict(block_t=32, block_s=32, num_warps=4),
        dict(block_t=64, block_s=32, num_warps=8),
        dict(block_t=64, block_s=64, num_warps=8),
        dict(block_t=64, block_s=64, num_warps=8, maxnreg=128),
        dict(block_t=64, block_s=32, num_warps=8, num_stages=2),
    )]  # fmt: skip
    alls += [replace(n, block_s=32, order=False), replace(n, block_s=32, argmax="pair")]
    cfgs = [plain, replace(plain, block_s=32)] + one + alls
    if quick:
        cfgs = [plain, alls[0], alls[1], alls[2], alls[11]]  # alls[1]: DEFAULT_CONFIG
    return cfgs


def make_inputs(
    T: int,
    S: int,
    layout: str,
    layers: int = 1,
    seed: int = 0,
    device: str = "cuda",
    n_seg: int = N_SEG,
    masked: float = 0.0,
) -> dict:
    """Inputs of one launch; ``n_seg`` other than 5: :func:`spread_segments`; ``masked``: that share of the keys,
    the last ones (caption and padding, never sung tokens), masked out of the softmax."""
    g = torch.Generator(device=device).manual_seed(seed)
    lead = (layers,) if layers > 1 else ()
    q = torch.randn(*lead, 1, T, H, D, device=device, generator=g).to(torch.bfloat16)
    k = torch.randn(*lead, 1, S, KVH, D, device=device, generator=g).to(torch.bfloat16)
    codes, _ = (song_layout if layout == "song" else bench_layout)(S)
    sung = torch.tensor([codes], device=device) == 0
    if n_seg != N_SEG:
        codes = spread_segments(codes, n_seg)
    seg = torch.tensor([codes], device=device, dtype=torch.int32)
    n_masked = round(masked * S)
    if n_masked:
        seg[0, S - n_masked :] = MASKED_CODE
        sung[0, S - n_masked :] = False
    lidx = torch.full_like(seg, -1)
    pos = sung[0].nonzero().flatten()
    lidx[0, pos] = torch.arange(len(pos), device=device, dtype=torch.int32)
    nl = (lidx >= 0).sum(1).to(torch.int32)
    heads = torch.arange(H, device=device, dtype=torch.int32)
    out = new_outputs(torch.device(device), lead, 1, H, T, n_seg)
    return dict(q=q, k=k, seg=seg, lidx=lidx, nl=nl, heads=heads, out=out)


def call(inp: dict, cfg: FusedConfig) -> dict:
    n_seg = inp["out"]["mass"].shape[-1]
    return reduce_fused(
        inp["q"], inp["k"], D**-0.5, inp["heads"], GROUP, inp["seg"], inp["lidx"], inp["nl"], out=inp["out"],
        config=cfg, n_seg=n_seg,
    )  # fmt: skip


def _compile_worker(args: tuple[list[dict], int, str]) -> list[str]:
    """Compile configurations into Triton's on-disk cache (a process of the pool)."""
    cfg_dicts, S, layout = args
    inp = make_inputs(70, S, layout)
    bad = []
    for d in cfg_dicts:
        try:
            call(inp, FusedConfig(**d))
        except Exception as e:  # reported by the main process when it runs the configuration
            bad.append(f"{d}: {type(e).__name__}: {e}")
    torch.cuda.synchronize()
    return bad


def precompile(cfgs: list[FusedConfig], S: int, layout: str, jobs: int) -> float:
    t0 = time.perf_counter()
    if jobs > 1 and len(cfgs) > 1:
        chunks = [[asdict(c) for c in cfgs[i::jobs]] for i in range(jobs)]
        try:
            with mp.get_context("spawn").Pool(jobs) as pool:
                for bad in pool.map(_compile_worker, [(c, S, layout) for c in chunks if c]):
                    for line in bad:
                        print("compile failed:", line, flush=True)
        except Exception as e:  # pragma: no cover - falls back to compiling in this process
            print(f"parallel compile failed ({e!r}); compiling here", flush=True)
    return time.perf_counter() - t0


def gpu_ms(fn) -> float:
    """Median GPU time of ``fn`` in ms (CUDA graph of many calls), or CUDA events if graphs fail."""
    import triton.testing

    if not torch.cuda.is_available():  # --smoke on the CPU (Triton's interpreter): wall time of one call
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))
    except Exception:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(7):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(20):
                fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 20)
        return sorted(times)[len(times) // 2]


def launch_us(fn, n: int = 200) -> float:
    """Host time of one call in µs (no synchronization: the launch cost)."""
    if not torch.cuda.is_available():
        return -1.0
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference(inp: dict) -> list[dict]:
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    q, k = inp["q"], inp["k"]
    qs, ks = (q, k) if q.ndim == 5 else (q[None], k[None])
    heads = inp["heads"].long()
    seg = inp["seg"].long()
    oh = segment_onehot(seg, inp["out"]["mass"].shape[-1])
    valid = seg != MASKED_CODE
    refs = []
    for li in range(qs.shape[0]):
        r, _ = reduce_reference(
            qs[li][:, :, heads], ks[li], D**-0.5, heads // GROUP, oh, inp["lidx"].long(), inp["nl"], key_valid=valid
        )
        refs.append(r)
    return refs


def errors(out: dict, refs: list[dict]) -> dict:
    e: dict[str, float] = {}
    got = [out] if len(refs) == 1 else [{n: v[i] for n, v in out.items()} for i in range(len(refs))]
    for name in ("entropy", "mass", "entropy_lyric"):
        e[f"{name}_max_abs"] = max(float((g[name] - r[name]).abs().max()) for g, r in zip(got, refs))
    for name in ("argmax", "lyric_argmax"):
        bad = sum(int((g[name] != r[name]).sum()) for g, r in zip(got, refs))
        e[f"{name}_mismatch"] = bad / sum(r[name].numel() for r in refs)
    return e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--frames", type=int, nargs="+", default=[125, 750, 3000])
    ap.add_argument("--keys", type=int, default=769)
    ap.add_argument("--layout", choices=("song", "bench"), default="song")
    ap.add_argument("--batched-frames", type=int, default=125, help="T of the batched all-layers launch (0: skip)")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compile processes")
    ap.add_argument("--quick", action="store_true", help="five configurations only")
    ap.add_argument("--segments", type=int, nargs="*", help="segment counts for DEFAULT_CONFIG (1 3 7 16; --smoke: 3)")
    ap.add_argument("--masked", type=float, default=0.25, help="share of keys masked for DEFAULT_CONFIG (0: skip)")
    ap.add_argument("--smoke", action="store_true", help="check the script on the CPU (Triton interpreter, tiny)")
    args = ap.parse_args()
    device = "cuda"
    patches = contextlib.ExitStack()  # a local: it (and the patch) lives as long as main() runs
    if args.smoke:  # tiny shapes through Triton's interpreter: checks the script, not the kernel's speed
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--smoke runs in Triton's interpreter: set TRITON_INTERPRET=1")
        from attnlens.reducers.fused import interpreter_bf16_dot

        patches.enter_context(interpreter_bf16_dot())  # bf16 dots as exact fp32 until main() returns
        device, args.frames, args.keys, args.layout, args.batched_frames, args.jobs = "cpu", [20], 64, "bench", 20, 1
        args.quick = True
        if args.segments is None:
            args.segments = [3]
    elif not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    import triton

    if args.segments is None:
        args.segments = [1, 3, 7, 16]
    n_batched = 2 if args.smoke else N_LAYERS

    t_start = time.perf_counter()
    S = args.keys
    cfgs = sweep_configs(args.quick)
    labels = [c.label() for c in cfgs]
    compile_s = precompile(cfgs, S, args.layout, args.jobs) if device == "cuda" else 0.0
    print(f"{len(cfgs)} configurations compiled in {compile_s:.1f} s ({args.jobs} processes)", flush=True)

    shapes = [(f"T{T}", T, 1) for T in args.frames]
    if args.batched_frames:
        shapes.append((f"T{args.batched_frames}x{n_batched}L", args.batched_frames, n_batched))
    results: dict[str, dict] = {lab: {"config": asdict(c), "shapes": {}} for lab, c in zip(labels, cfgs)}

    def measure(shape: str, T: int, L: int, layout: str, which: list[str], n_seg: int = N_SEG, masked: float = 0.0):
        inp = make_inputs(T, S, layout, layers=L, device=device, n_seg=n_seg, masked=masked)
        refs = reference(inp)
        sync()
        for lab in which:
            cfg = cfgs[labels.index(lab)]
            rec: dict = {}
            try:
                t0 = time.perf_counter()
                out = call(inp, cfg)
                sync()
                rec["first_call_s"] = round(time.perf_counter() - t0, 3)
                rec.update(errors(out, refs))
                ms = gpu_ms(lambda cfg=cfg, inp=inp: call(inp, cfg))
                rec["ms_per_layer"] = ms / L
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"[:500]
            results[lab]["shapes"][shape] = rec
        base = results[which[0]]["shapes"][shape].get("ms_per_layer")
        print(f"\n== {shape} (T={T}, layers per launch {L}, {layout} layout, {n_seg} segments, {masked:.0%} masked);"
              f" ms per layer, speed-up vs {which[0]}")  # fmt: skip
        rows = sorted((results[lab]["shapes"][shape].get("ms_per_layer", math.inf), lab) for lab in which)
        for ms, lab in rows:  # fastest first
            rec = results[lab]["shapes"][shape]
            if "error" in rec:
                print(f"  {lab:58s} ERROR {rec['error'][:150]}")
                continue
            sp = f"{base / ms:5.2f}x" if base else "  -  "
            print(
                f"  {lab:58s} {ms:8.4f} ms {sp}  err H {rec['entropy_max_abs']:.1e} mass {rec['mass_max_abs']:.1e}"
                f" H_L {rec['entropy_lyric_max_abs']:.1e} argmax {rec['argmax_mismatch']:.1e}"
                f" lyr {rec['lyric_argmax_mismatch']:.1e}",
                flush=True,
            )
        del inp, refs
        if device == "cuda":
            torch.cuda.empty_cache()

    for shape, T, L in shapes:
        measure(shape, T, L, args.layout, labels)
    # the fastest three at the largest T (and the baseline) on the other layout: no new compilation
    big = f"T{max(args.frames)}"
    by_big = sorted(labels, key=lambda lab: results[lab]["shapes"].get(big, {}).get("ms_per_layer", math.inf))
    other = "bench" if args.layout == "song" else "song"
    try:
        measure(f"{big}_{other}", max(args.frames), 1, other, [labels[0]] + [x for x in by_big[:3] if x != labels[0]])
    except ValueError as e:  # too few keys for the song layout
        print(f"\nskipped the {other} layout: {e}")

    # the library's configuration at other segment counts and with masked keys: at the largest T and batched
    default = DEFAULT_CONFIG.label()
    extra = [(n, 0.0) for n in args.segments if n != N_SEG] + ([(N_SEG, args.masked)] if args.masked else [])
    if default in labels and extra:
        for shape, T, L in [s for s in shapes if s[0] == big or (s[2] > 1 and not args.smoke)]:
            for n, f in extra:
                measure(
                    f"{shape}_seg{n}" + (f"_masked{round(100 * f)}" if f else ""), T, L, args.layout, [default], n, f
                )

    # launch cost (host) of the baseline and the fastest configuration at the largest T
    best = by_big[0]
    inp = make_inputs(args.frames[0], S, args.layout, device=device)
    launch = {lab: round(launch_us(lambda lab=lab: call(inp, cfgs[labels.index(lab)])), 1) for lab in {labels[0], best}}
    print(f"\nlaunch cost (host, µs per call): {launch}")
    print(f"fastest at {big}: {best}")

    _, n_l = (song_layout if args.layout == "song" else bench_layout)(S)
    doc = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter, --smoke)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "shape": {"H": H, "KVH": KVH, "D": D, "S": S, "dtype": "bf16", "layout": args.layout, "n_lyric": n_l},
        "timing": "triton.testing.do_bench_cudagraph median (ms per layer = launch time / layers per launch)",
        "compile_s": round(compile_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "fastest_at_largest_T": best,
        "launch_us": launch,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out} ({doc['total_s']} s)")


if __name__ == "__main__":
    main()
