"""LoRA on the DiT's attention (and optionally its MLP), through peft / diffusers ``add_adapter``.

A LoRA on a linear map ``W`` (``in -> out``) adds ``ΔW = (alpha / r) · B A`` with ``A`` ``[r, in]`` and ``B``
``[out, r]``: ``r · (in + out)`` trainable parameters. On the full-size ACE-Step DiT (24 blocks, hidden 2048,
16 query / 8 KV heads of 128), r = 8 on self+cross ``to_q, to_k, to_v, to_out.0`` gives
``24 · 2 · 8 · ((2048+2048) + 2·(2048+1024) + (2048+2048)) = 5,505,024`` parameters.

Adapters are saved in the diffusers/peft layout (``pytorch_lora_weights.safetensors``, keys from
``get_peft_model_state_dict`` with diffusers' ``transformer.`` prefix, the peft config as JSON in the safetensors
metadata under ``lora_adapter_metadata``) so ``pipe.transformer.load_lora_adapter(path, adapter_name=...,
use_safetensors=True)`` and ``pipe.load_lora_weights(path, adapter_name=...)`` load them.

One module for a LoRA's whole life — targets, attaching, saving and reading in diffusers' file format, weight deltas
and combinations — since every part speaks the same key naming of that format; hence over 400 lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..files import atomic_save_safetensors, looks_like_pickle

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer"  # diffusers' pipeline-level key prefix (what load_lora_adapter filters on)

ATTENTIONS = ("self_attn", "cross_attn")
PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Where and how large the LoRA is.

    Args:
        rank: ``r``.
        alpha: ``ΔW = (alpha / rank) · B A``.
        targets: attention blocks: any of ``"self_attn"``, ``"cross_attn"``.
        projections: any of ``"q"``, ``"k"``, ``"v"``, ``"o"`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).
        dropout: LoRA dropout on the adapter input.
        mlp: also adapt the MLP's ``gate_proj``, ``up_proj``, ``down_proj``.
        layers: DiT blocks to adapt (``None`` = all).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("self_attn", "cross_attn")
    projections: tuple[str, ...] = ("q", "k", "v", "o")
    dropout: float = 0.0
    mlp: bool = False
    layers: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """further ``peft.LoraConfig`` arguments (e.g. ``{"use_rslora": True}``)."""

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.projections = tuple(self.projections)
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be a positive integer; got {self.rank!r}")
        bad = [t for t in self.targets if t not in ATTENTIONS]
        if bad:
            raise ValueError(f"LoraConfig.targets {bad} not known; expected any of {ATTENTIONS}")
        bad = [p for p in self.projections if p not in PROJECTIONS]
        if bad:
            raise ValueError(f"LoraConfig.projections {bad} not known; expected any of {tuple(PROJECTIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1); got {self.dropout}")
        if not self.mlp and not (self.targets and self.projections):
            raise ValueError("LoraConfig selects no module: give targets and projections, or mlp=True")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"], d["projections"] = list(self.targets), list(self.projections)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LoRA setting(s) {unknown}; expected any of {sorted(known)}")
        return cls(**dict(d))


def _transformer_of(model: Any) -> nn.Module:
    tr = getattr(model, "transformer", model)
    if not hasattr(tr, "layers") or not hasattr(tr, "add_adapter"):
        raise TypeError(
            f"expected an AceStepPipeline or AceStepTransformer1DModel (with .layers and add_adapter); got "
            f"{type(model).__name__}"
        )
    return tr


def target_modules(model: Any, cfg: LoraConfig) -> list[str]:
    """Full module names (in the transformer) the LoRA attaches to, in model order."""
    tr = _transformer_of(model)
    n = len(tr.layers)
    layers = range(n) if cfg.layers is None else [int(x) for x in cfg.layers]
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise IndexError(f"LoraConfig.layers {bad} out of range: the DiT has {n} blocks (0..{n - 1})")
    names = []
    modules = dict(tr.named_modules())
    for i in layers:
        for att in ATTENTIONS:
            if att not in cfg.targets:
                continue
            for p in cfg.projections:
                names.append(f"layers.{i}.{att}.{PROJECTIONS[p]}")
        if cfg.mlp:
            names.extend(f"layers.{i}.mlp.{p}" for p in MLP_PROJECTIONS)
    missing = [m for m in names if not isinstance(getattr(modules.get(m), "base_layer", modules.get(m)), nn.Linear)]
    if missing:
        raise ValueError(f"{type(tr).__name__} has no linear module(s) {missing[:3]} (is it an ACE-Step DiT?)")
    return names


def lora_parameter_count(model: Any, cfg: LoraConfig) -> int:
    """``Σ r · (in + out)`` over the target modules (works on a ``meta``-device model)."""
    tr = _transformer_of(model)
    modules = dict(tr.named_modules())
    total = 0
    for name in target_modules(tr, cfg):
        lin = modules[name]
        lin = getattr(lin, "base_layer", lin)
        total += cfg.rank * (lin.in_features + lin.out_features)
    return total


def peft_config(model: Any, cfg: LoraConfig):
    """The ``peft.LoraConfig`` for ``cfg`` on ``model``."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=int(cfg.rank),
        lora_alpha=float(cfg.alpha),
        lora_dropout=float(cfg.dropout),
        target_modules=target_modules(model, cfg),
        init_lora_weights=True,  # A random (Kaiming), B zero: the adapter starts as the identity
        **cfg.extra,
    )


def add_lora(model: Any, cfg: LoraConfig, name: str = "default", seed: int | None = 0) -> nn.Module:
    """Attach a LoRA named ``name`` to the pipeline's transformer (``transformer.add_adapter``) and make it active.

    ``A`` starts random (peft's Kaiming init, drawn from a generator seeded with ``seed``; the global RNG is left
    as it was), ``B`` zero, so the adapted model starts equal to the base model. Base weights are frozen; only the
    LoRA ``A``/``B`` matrices require gradients. Returns the transformer.
    """
    tr = _transformer_of(model)
    if name in getattr(tr, "peft_config", {}):
        raise ValueError(f"the transformer already has an adapter named {name!r}; pick another name")
    pc = peft_config(tr, cfg)
    if seed is None:
        tr.add_adapter(pc, adapter_name=name)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            tr.add_adapter(pc, adapter_name=name)
    tr.set_adapters([name])
    for pname, p in tr.named_parameters():
        p.requires_grad_(lora_param_of(pname, name))
    return tr


def lora_param_of(param_name: str, adapter: str) -> bool:
    """Whether ``param_name`` is a LoRA factor of ``adapter`` (``...lora_A.<adapter>.weight``)."""
    return (".lora_A." in param_name or ".lora_B." in param_name) and param_name.split(".")[-2] == adapter


def lora_parameters(model: Any, name: str = "default") -> dict[str, nn.Parameter]:
    """The LoRA parameters of adapter ``name`` (name -> parameter), in model order."""
    tr = _transformer_of(model)
    out = {n: p for n, p in tr.named_parameters() if lora_param_of(n, name)}
    if not out:
        raise ValueError(f"no LoRA parameters for adapter {name!r} (known: {sorted(getattr(tr, 'peft_config', {}))})")
    return out


# ----------------------------------------------------------------------------------------------- save / load


def _atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    atomic_save_safetensors(path, tensors, metadata)


def _peft_metadata(pc: Any) -> str:
    """The peft config as diffusers' pipeline-level savers write it: every key prefixed ``transformer.``."""
    d = pc.to_dict()
    for k, v in list(d.items()):
        if isinstance(v, set):
            d[k] = sorted(v)
    return json.dumps({f"{PREFIX}.{k}": v for k, v in d.items()}, indent=2, sort_keys=True, default=str)


def save_adapter(model: Any, directory: str, name: str = "default", extra_metadata: dict | None = None) -> str:
    """Save adapter ``name`` as ``<directory>/pytorch_lora_weights.safetensors`` (diffusers/peft layout).

    Keys and metadata carry diffusers' pipeline-level ``transformer.`` prefix. Written atomically. Load it with
    ``pipe.transformer.load_lora_adapter(directory, adapter_name=..., use_safetensors=True)`` or
    ``pipe.load_lora_weights(directory, adapter_name=...)`` (diffusers 0.42 looks for a ``.bin`` file unless told
    ``use_safetensors=True`` or ``weight_name="pytorch_lora_weights.safetensors"``).
    """
    from peft.utils import get_peft_model_state_dict

    tr = _transformer_of(model)
    if name not in getattr(tr, "peft_config", {}):
        raise ValueError(
            f"no adapter named {name!r} on the transformer (known: {sorted(getattr(tr, 'peft_config', {}))})"
        )
    sd = {f"{PREFIX}.{k}": v for k, v in get_peft_model_state_dict(tr, adapter_name=name).items()}
    meta = {"format": "pt", METADATA_KEY: _peft_metadata(tr.peft_config[name])}
    if extra_metadata:
        meta["attnlens"] = json.dumps(extra_metadata, sort_keys=True)
    path = os.path.join(directory, WEIGHT_NAME)
    _atomic_save(sd, path, meta)
    return path


def _weights_path(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, WEIGHT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no LoRA weights at {path} (expected a directory holding {WEIGHT_NAME} or the file)")
    return path


class AdapterFileError(ValueError):
    """A file that is not a valid LoRA adapter (not safetensors, damaged, or holding tensors of the wrong shape)."""


def read_adapter(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and peft config (dict) of a saved adapter (directory or ``.safetensors`` file).

    Only safetensors files are read (never a pickle). A file that is not one, is truncated, lacks the peft config,
    or holds LoRA factors of the wrong shape raises :class:`AdapterFileError` naming the problem.
    """
    from safetensors import SafetensorError

    path = _weights_path(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if looks_like_pickle(head, os.path.getsize(path)):
        raise AdapterFileError(
            f"{path} looks like a pickle / torch.save file; attnlens never loads pickles (they can run code). "
            f"Adapters are safetensors files ({WEIGHT_NAME})"
        )
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise AdapterFileError(
            f"{path} is not a readable safetensors file (truncated, damaged or of another format): {e}"
        ) from None
    if METADATA_KEY not in meta:
        raise AdapterFileError(
            f"{path} has no '{METADATA_KEY}' metadata: cannot tell its rank and alpha (save with al.train.save_adapter "
            "or diffusers' save_lora_adapter)"
        )
    try:
        cfg = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise AdapterFileError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterFileError(f"{path}: the '{METADATA_KEY}' metadata is {type(cfg).__name__}, expected an object")
    if any(k.startswith(f"{PREFIX}.") for k in cfg):
        cfg = {k.removeprefix(f"{PREFIX}."): v for k, v in cfg.items() if k.startswith(f"{PREFIX}.")}
    _check_factors(sd, path)
    return sd, cfg


def _check_factors(sd: Mapping[str, torch.Tensor], path: str) -> None:
    """Every LoRA factor is a 2-D float matrix and each module's A ``[r, in]`` and B ``[out, r]`` share ``r``."""
    rank: dict[str, dict[str, int]] = {}
    for k, v in sd.items():
        if v.ndim != 2 or not v.is_floating_point():
            raise AdapterFileError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)} {v.dtype}; LoRA factors are 2-D floats"
            )
        for part, dim in ((".lora_A.", 0), (".lora_B.", 1)):
            if part in k:
                rank.setdefault(k.split(part)[0], {})[part] = int(v.shape[dim])
    bad = {m: r for m, r in rank.items() if len(set(r.values())) > 1}
    if bad:
        m, r = next(iter(bad.items()))
        raise AdapterFileError(
            f"{path}: LoRA factors of {m} disagree on the rank (A has {r.get('.lora_A.')} rows, B "
            f"{r.get('.lora_B.')} columns)"
        )


def _factors(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module prefix -> (A [r, in], B [out, r])."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if ".lora_A." in k or k.endswith(".lora_A.weight"):
            out.setdefault(k.split(".lora_A.")[0], {})["A"] = v
        elif ".lora_B." in k or k.endswith(".lora_B.weight"):
            out.setdefault(k.split(".lora_B.")[0], {})["B"] = v
        else:
            raise ValueError(f"unexpected key {k!r} in a LoRA state dict (only lora_A / lora_B weights are supported)")
    bad = [m for m, d in out.items() if set(d) != {"A", "B"}]
    if bad:
        raise ValueError(f"LoRA state dict misses A or B for module(s) {bad[:3]}")
    return {m: (d["A"], d["B"]) for m, d in out.items()}


def _scale(cfg: Mapping[str, Any], module: str) -> tuple[int, float]:
    r = int(cfg.get("rank_pattern", {}).get(module, cfg["r"]))
    alpha = float(cfg.get("alpha_pattern", {}).get(module, cfg["lora_alpha"]))
    if cfg.get("use_rslora"):
        return r, alpha / r**0.5
    return r, alpha / r


def delta_weights(path: str, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """``ΔW = scale · B A`` of every module of a saved adapter (module prefix -> ``[out, in]``)."""
    sd, cfg = read_adapter(path)
    out = {}
    for m, (A, B) in _factors(sd).items():
        _, s = _scale(cfg, m)
        out[m] = s * (B.to(dtype) @ A.to(dtype))
    return out


def combine_adapters(
    adapters: Mapping[str, str],
    weights: Mapping[str, float] | None = None,
    out: str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Weight-space combination of LoRA adapters with ``ΔW = Σ_i w_i ΔW_i`` exactly.

    Averaging the ``A`` and ``B`` factors separately does not average the ``ΔW``s (``(B1+B2)(A1+A2)/4`` has
    cross terms). Instead the factors are concatenated: ``A = [A_1; A_2; ...]`` (rank ``R = Σ r_i``) and
    ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]`` with ``s_i = alpha_i / r_i``, saved with ``alpha = R`` (scale 1),
    so ``B A = Σ_i w_i s_i B_i A_i``. A module missing from an adapter contributes zero blocks.

    Args:
        adapters: name -> adapter path (directory or safetensors file).
        weights: name -> weight (default: 1 / number of adapters each).
        out: directory to write the combined adapter to (diffusers/peft layout); optional.
        dtype: storage dtype of the combined factors (default: that of the first adapter). The scaled ``B`` blocks
            are rounded once to it; with ``torch.float64`` the identity holds to float64 rounding.

    Returns the combined state dict.
    """
    if len(adapters) < 1:
        raise ValueError("combine_adapters needs at least one adapter")
    names = list(adapters)
    if weights is None:
        weights = {n: 1.0 / len(names) for n in names}
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in adapters]
    if missing or extra:
        raise ValueError(f"weights must name exactly the adapters {names}; missing {missing}, unknown {extra}")
    loaded = {n: read_adapter(p) for n, p in adapters.items()}
    for n, (_, cfg) in loaded.items():
        if cfg.get("use_dora"):
            raise ValueError(f"adapter {n!r} is a DoRA adapter: its ΔW is not a low-rank product; cannot combine")
    factors = {n: _factors(sd) for n, (sd, _) in loaded.items()}
    modules = sorted(set().union(*[set(f) for f in factors.values()]))
    R = None
    combined: dict[str, torch.Tensor] = {}
    for m in modules:
        As, Bs = [], []
        shape = None
        for n in names:
            f = factors[n].get(m)
            if f is not None:
                shape = (f[1].shape[0], f[0].shape[1])
        for n in names:
            cfg = loaded[n][1]
            f = factors[n].get(m)
            r, s = _scale(cfg, m)
            if f is None:
                A = torch.zeros(r, shape[1], dtype=torch.float32)
                B = torch.zeros(shape[0], r, dtype=torch.float32)
            else:
                A, B = f
                if (B.shape[0], A.shape[1]) != shape:
                    raise ValueError(
                        f"adapters disagree on the shape of module {m}: {(B.shape[0], A.shape[1])} vs {shape}"
                    )
            As.append(A)
            Bs.append(B.to(torch.float64) * (float(weights[n]) * s))
        A_c = torch.cat([a.to(torch.float64) for a in As], 0).to(dtype or As[0].dtype)
        B_c = torch.cat([b.to(torch.float64) for b in Bs], 1).to(dtype or As[0].dtype)
        if R is None:
            R = A_c.shape[0]
        elif A_c.shape[0] != R:
            raise ValueError(
                f"combined rank differs between modules ({R} vs {A_c.shape[0]}): per-module ranks unsupported"
            )
        combined[f"{m}.lora_A.weight"] = A_c.contiguous()
        combined[f"{m}.lora_B.weight"] = B_c.contiguous()
    if out is not None:
        from peft import LoraConfig as PeftLoraConfig

        first_cfg = loaded[names[0]][1]
        pc = PeftLoraConfig(
            r=int(R),
            lora_alpha=float(R),
            lora_dropout=float(first_cfg.get("lora_dropout", 0.0)),
            target_modules=sorted({m.split("transformer.", 1)[-1] for m in modules}),
            init_lora_weights=True,
        )
        meta = {
            "format": "pt",
            METADATA_KEY: _peft_metadata(pc),
            "attnlens": json.dumps(
                {"combined_from": {n: os.path.abspath(p) for n, p in adapters.items()}, "weights": dict(weights)},
                sort_keys=True,
            ),
        }
        _atomic_save(combined, os.path.join(out, WEIGHT_NAME), meta)
    return combined
