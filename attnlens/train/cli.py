"""``attnlens train --config run.yaml`` (several GPUs: ``accelerate launch -m attnlens train --config run.yaml``).

The YAML file has four sections::

    model: tiny                       # or {pretrained: <diffusers ACE-Step dir or hub id>, dtype: bfloat16}
                                      # or {tiny: {seed: 0}}
    data:
      folder: data/                   # or gtsinger: GTSinger/English (with optional limit: N, caption: "...")
      allow_empty_lyrics: false
    lora: {rank: 8, alpha: 16, targets: [self_attn, cross_attn], projections: [q, k, v, o]}
    train: {out_dir: runs/x, steps: 1000, entropy_weight: 0.02, entropy_keys: lyrics}   # any TrainConfig field
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def load_config(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping with model, data, lora, train")
    unknown = sorted(set(cfg) - {"model", "data", "lora", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected model, data, lora, train")
    for need in ("data",):
        if need not in cfg:
            raise ValueError(f"{path}: missing section '{need}'")
    return cfg


def build_pipeline(spec: Any):
    import torch

    if spec is None or spec == "tiny":
        from ..models.tiny import tiny_pipeline

        return tiny_pipeline(seed=0)
    if isinstance(spec, dict) and "tiny" in spec:
        from ..models.tiny import tiny_pipeline

        return tiny_pipeline(**(spec["tiny"] or {}))
    if isinstance(spec, dict) and "pretrained" in spec:
        from diffusers import AceStepPipeline

        dtype = getattr(torch, spec.get("dtype", "float32"))
        return AceStepPipeline.from_pretrained(spec["pretrained"], torch_dtype=dtype)
    if isinstance(spec, str):
        from diffusers import AceStepPipeline

        return AceStepPipeline.from_pretrained(spec)
    raise ValueError(f"model: expected 'tiny', {{tiny: {{...}}}} or {{pretrained: path}}; got {spec!r}")


def build_dataset(spec: dict[str, Any]):
    from .data import AudioLyricsDataset

    spec = dict(spec)
    allow = bool(spec.pop("allow_empty_lyrics", False))
    if "folder" in spec:
        return AudioLyricsDataset.from_folder(spec.pop("folder"), allow_empty_lyrics=allow, **spec)
    if "gtsinger" in spec:
        return AudioLyricsDataset.from_gtsinger(spec.pop("gtsinger"), allow_empty_lyrics=allow, **spec)
    raise ValueError(f"data: expected 'folder' or 'gtsinger'; got keys {sorted(spec)}")


def run(args: argparse.Namespace) -> int:
    from .data import DatasetError
    from .lora import LoraConfig
    from .trainer import TrainConfig, Trainer

    try:
        cfg = load_config(args.config)
        train = TrainConfig.from_dict(
            {**(cfg.get("train") or {}), **({"out_dir": args.out_dir} if args.out_dir else {})}
        )
        if args.steps is not None:
            train.steps = args.steps
        lora = LoraConfig.from_dict(cfg.get("lora") or {})
        ds = build_dataset(cfg["data"])
    except (ValueError, DatasetError, FileNotFoundError) as e:
        print(f"attnlens train: {e}", file=sys.stderr)
        return 2
    pipe = build_pipeline(cfg.get("model"))
    out = Trainer(pipe, lora, ds, train).fit()
    print(out)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a LoRA on the DiT (flow matching, optional attention-entropy penalty)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="run.yaml (sections model, data, lora, train)")
    p.add_argument("--out-dir", default=None, help="override train.out_dir")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.set_defaults(func=run)
