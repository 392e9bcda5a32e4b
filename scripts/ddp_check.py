"""Check ``accelerate launch -m attnlens train`` on several processes against one process (tiny pipeline).

    python scripts/ddp_check.py --procs 2 [--cpu] [--out /tmp/ddp]

Writes a folder of tiny-songs latents and a run config, trains the same LoRA once with one process and once with
``--procs`` processes (DDP through accelerate; ``--cpu`` uses gloo on the CPU), then reports the loss curves, the
wall times, whether every rank ended with the same adapter (the adapter is written by rank 0 after DDP's gradient averaging) and how far the
multi-process adapter is from the single-process one. The single process takes batches of 4, each of the
``--procs`` processes (2 or 4) batches of ``4 / procs``: item ``j`` and its noise depend only on ``(seed, j)``, so
both runs see the same items with the same noise and the adapters agree up to the order of floating-point sums. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _folder(path: str, n: int) -> None:
    import torch
    from safetensors.torch import save_file

    from attnlens.demo.task import TinySongs

    os.makedirs(path, exist_ok=True)
    # five-word lines only: equal lyric lengths, so no batch is padded (padding would depend on how items are
    # grouped, and the pipeline's conditioning with it)
    exs = [ex for ex in TinySongs().make_dataset(8 * n, seed=11, split="train") if len(ex["words"]) == 5][:n]
    for i, ex in enumerate(exs):
        save_file(
            {"latents": torch.from_numpy(ex["latents"]).float().contiguous()}, f"{path}/s{i:03d}.latents.safetensors"
        )
        with open(f"{path}/s{i:03d}.lyrics.txt", "w") as f:
            f.write(ex["lyrics"])
        with open(f"{path}/s{i:03d}.caption.txt", "w") as f:
            f.write(ex["caption"])


def _config(path: str, data: str, out: str, steps: int, batch: int) -> None:
    with open(path, "w") as f:
        f.write(
            f"model: tiny\ndata:\n  folder: {data}\nlora: {{rank: 4, alpha: 8}}\ntrain:\n  out_dir: {out}\n"
            f"  steps: {steps}\n  batch_size: {batch}\n  lr: 0.002\n  save_every: {steps}\n  entropy_weight: 0.02\n"
            "  entropy_keys: lyrics\n  progress: false\n  seed: 0\n"
        )


def _adapter(out: str):
    from safetensors.torch import load_file

    folder = os.path.join(out, "adapter")
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    return load_file(os.path.join(folder, files[0]))


def _losses(out: str) -> list[float]:
    import csv

    with open(os.path.join(out, "metrics.csv")) as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=2, choices=(2, 4))
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="/tmp/attnlens-ddp")
    args = ap.parse_args(argv)
    data = os.path.join(args.out, "data")
    _folder(data, 32)
    res: dict = {"procs": args.procs, "cpu": args.cpu, "steps": args.steps}
    for name, procs in (("one", 1), ("ddp", args.procs)):
        out = os.path.join(args.out, name)
        cfg = os.path.join(args.out, f"{name}.yaml")
        _config(cfg, data, out, args.steps, 4 // procs)
        if args.cpu:  # accelerate's launcher has no multi-process CPU mode without MPI: torchrun (gloo)
            launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        else:
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs)]
            launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            launch += ["--multi_gpu"] if procs > 1 else []
        cmd = launch + ["-m", "attnlens", "train", "--config", cfg]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        res[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-5000:])
            res[f"{name}_rc"] = p.returncode
            print(json.dumps(res))
            return 1
        with open(os.path.join(out, "config.json")) as f:
            res[f"{name}_world_size"] = json.load(f)["world_size"]
        losses = _losses(out)
        res[f"{name}_loss_first_last"] = [round(losses[0], 4), round(sum(losses[-5:]) / 5, 4)]
    import torch

    a, b = _adapter(os.path.join(args.out, "one")), _adapter(os.path.join(args.out, "ddp"))
    res["adapter_keys"] = len(a)
    res["adapter_max_abs_diff_one_vs_ddp"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    res["adapter_norm"] = float(torch.sqrt(sum((v.float() ** 2).sum() for v in a.values())))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
