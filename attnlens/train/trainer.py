"""The training loop: LoRA on the DiT, flow matching on the turbo schedule, optional entropy penalty.

Per optimizer step (``grad_accum`` micro-batches of ``batch_size`` per process)::

    x0 = clean latents, noise ~ N(0, I), t ~ turbo grid (or logit-normal / shifted uniform)
    x_t = t · noise + (1 - t) · x0;   v_θ = DiT(x_t, t, r = t, encoder_hidden_states, context_latents)
    loss = mean((v_θ - (noise - x0))²) + λ · mean normalized cross-attention entropy (layers, heads, frames)

AdamW on the LoRA parameters only, gradient clipping, optional bf16 autocast, linear warmup then constant or
cosine learning rate. Several processes through ``accelerate`` (DDP) when launched with ``accelerate launch``.

Determinism: which samples, noise and times a step uses are drawn from generators seeded with
``(seed, step, micro-batch, process)``, so a resumed run sees exactly the data an uninterrupted one would; the
global RNG state (LoRA dropout) is saved in checkpoints. On a CPU the final adapter of a resumed run is bitwise
equal to that of an uninterrupted run.

The trainer's loop, checkpoints, resume and validation share one state; hence over 400 lines.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from ..files import atomic_write
from ..reducers.differentiable import EntropyTap
from .checkpoint import (
    CheckpointError,
    checkpoints,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
    set_rng_state,
    settings_changes,
    write_json_atomic,
    write_text_atomic,
)
from .conditioning import context_latents, encode_condition
from .data import AudioLyricsDataset, DatasetError, Prepared, PreparedDataset, prepare
from .flow import flow_matching_loss, noisy_latents, sample_times
from .lora import AdapterFileError, LoraConfig, add_lora, lora_parameters, read_adapter, save_adapter

METRIC_COLUMNS = (
    "step",
    "loss",
    "fm_loss",
    "entropy",
    "lr",
    "grad_norm",
    "t_mean",
    "elapsed_s",
    "val_lyric_mass",
    "val_entropy",
    "val_entropy_lyric",
)


@dataclass
class TrainConfig:
    """Everything that decides a run (saved as ``<out_dir>/config.json``)."""

    out_dir: str = "runs/attnlens"
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine"
    time_sampling: str = "turbo"  # "turbo" | "logit_normal" | "uniform"
    shift: float = 3.0
    turbo_steps: int = 8
    logit_mean: float = 0.0
    logit_std: float = 1.0
    entropy_weight: float = 0.0
    entropy_keys: str = "all"  # "all" | "lyrics"
    entropy_layers: list[int] | None = None
    mixed_precision: str = "no"  # "no" | "bf16"
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    val_every: int = 0
    val_caption: str = "pop song, clear female vocals"
    val_lyrics: str = "[verse]\nhello from the other side\nI must have called a thousand times"
    val_seconds: float = 4.0
    max_seconds: float | None = None
    cache_dir: str | None = None
    adapter_name: str = "default"
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.lr_schedule in ("constant", "cosine"), "lr_schedule must be 'constant' or 'cosine'"),
            (self.time_sampling in ("turbo", "logit_normal", "uniform"), "time_sampling: turbo|logit_normal|uniform"),
            (self.entropy_keys in ("all", "lyrics"), "entropy_keys must be 'all' or 'lyrics'"),
            (self.entropy_weight >= 0, "entropy_weight must be >= 0"),
            (self.mixed_precision in ("no", "bf16"), "mixed_precision must be 'no' or 'bf16'"),
            (self.save_every >= 1, "save_every must be >= 1"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError("TrainConfig: " + "; ".join(bad))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; expected any of {sorted(known)}")
        return cls(**d)


OPTIMIZER_SETTINGS: tuple[str, ...] = ("lr", "weight_decay", "betas", "eps", "warmup_steps", "lr_schedule")
"""Settings a checkpoint's optimizer and learning-rate schedule were built with: a resume refuses to change them
(with ``lr_schedule="cosine"`` also ``steps``, the length of the cosine)."""
UNRECORDED_SETTINGS: tuple[str, ...] = ("out_dir", "progress")
"""Settings whose change on resume is not recorded in ``config.json`` (they do not change what is trained)."""


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    return f


def _step_generator(seed: int, *parts: int) -> torch.Generator:
    ss = np.random.SeedSequence([int(seed), *[int(p) for p in parts]])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


class Trainer:
    """Train a LoRA on ``pipe.transformer``. See the module docstring; ``fit()`` runs (and resumes) the loop.

    Args:
        pipe: an ``AceStepPipeline``.
        lora: the :class:`LoraConfig`. If the transformer has no adapter named ``adapter_name`` yet, one is added.
        dataset: an :class:`AudioLyricsDataset` (encoded by :func:`prepare`, cached under ``cache_dir``) or a
            :class:`PreparedDataset`.
        config: a :class:`TrainConfig`; keyword arguments override its fields (e.g. ``entropy_weight=0.02``).
    """

    def __init__(
        self,
        pipe: Any,
        lora: LoraConfig,
        dataset: AudioLyricsDataset | PreparedDataset,
        config: TrainConfig | None = None,
        **overrides: Any,
    ):
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.cfg = TrainConfig.from_dict(base)
        self.pipe = pipe
        self.lora = lora
        self.accelerator = _make_accelerator(self.cfg)
        self.device = self.accelerator.device if self.accelerator is not None else pipe.transformer.device
        self.rank = self.accelerator.process_index if self.accelerator is not None else 0
        self.world = self.accelerator.num_processes if self.accelerator is not None else 1
        self.is_main = self.rank == 0
        tr = pipe.transformer
        for m in (pipe.text_encoder, pipe.condition_encoder, getattr(pipe, "vae", None)):
            if m is not None:
                m.requires_grad_(False)
                m.to(self.device)
        tr.to(self.device)
        if self.cfg.adapter_name not in getattr(tr, "peft_config", {}):
            add_lora(tr, lora, name=self.cfg.adapter_name, seed=self.cfg.seed)
        else:
            tr.set_adapters([self.cfg.adapter_name])
            for n, p in tr.named_parameters():
                p.requires_grad_(n in self._param_names())
        if self.cfg.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        self.params = lora_parameters(tr, self.cfg.adapter_name)
        for p in self.params.values():
            p.data = p.data.float()  # LoRA factors train in fp32 (also under bf16 autocast)
        if isinstance(dataset, PreparedDataset):
            self.data = dataset
        else:
            self.data = prepare(pipe, dataset, cache_dir=self.cfg.cache_dir, max_seconds=self.cfg.max_seconds)
        if len(self.data) == 0:
            raise DatasetError("the training set is empty")
        if self.cfg.entropy_weight > 0 and self.cfg.entropy_keys == "lyrics":
            few = [it.key for it in self.data.items if len(it.lyric_positions) < 2]
            if few:
                raise DatasetError(
                    f"{len(few)} samples have fewer than 2 sung lyric tokens ({few[:5]}): the lyric-only entropy "
                    "penalty needs at least 2; use entropy_keys='all' or drop them"
                )
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            eps=self.cfg.eps,
            weight_decay=self.cfg.weight_decay,
            foreach=False,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(self.cfg))
        self.model = tr
        if self.accelerator is not None and self.world > 1:
            self.model = self.accelerator.prepare(tr)
        self.step = 0
        self.metrics: list[dict[str, Any]] = []
        self._elapsed = 0.0
        self.resumes: list[dict[str, Any]] = []
        """one entry per resume that changed settings: ``{"step", "checkpoint", "changed": {name: [old, new]}}``."""

    def _param_names(self) -> set[str]:
        return set(lora_parameters(self.pipe.transformer, self.cfg.adapter_name))

    # ------------------------------------------------------------------------------------------- data
    def _batch(self, step: int, micro: int) -> tuple[list[Prepared], list[torch.Generator]]:
        """The items of one micro-batch and one generator per item (its noise and time).

        Item ``j`` of the run (counting over steps, micro-batches and ranks) and its generator depend only on
        ``(seed, j)``: one process with batch ``b``, ``k`` accumulation steps of ``b / k`` or ``w`` DDP processes of
        ``b / w`` see the same samples with the same noise and times.
        """
        cfg = self.cfg
        n = len(self.data)
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        first = step * per_step + (micro * self.world + self.rank) * cfg.batch_size
        items, gens = [], []
        for j in range(first, first + cfg.batch_size):
            epoch, pos = divmod(j, n)
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            items.append(self.data[int(perm[pos])])
            gens.append(_step_generator(cfg.seed, j))
        return items, gens

    def _condition(self, items: list[Prepared]) -> tuple[torch.Tensor, list[list[int]]]:
        if len(items) == 1 or len({it.encoder_hidden_states.shape for it in items}) == 1:
            ehs = torch.stack([it.encoder_hidden_states for it in items])
            return ehs, [it.lyric_positions for it in items]
        # different lengths: encode the batch jointly, exactly as the pipeline would (with its padding)
        cond = encode_condition(
            self.pipe,
            [it.caption for it in items],
            [it.lyrics for it in items],
            items[0].audio_duration,
            [it.language for it in items],
            device=self.device,
        )
        return cond.encoder_hidden_states.float(), cond.lyric_positions()

    # ------------------------------------------------------------------------------------------- step
    def _micro_step(self, items: list[Prepared], gens: list[torch.Generator]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        lengths = {it.latents.shape for it in items}
        if len(lengths) != 1:
            raise DatasetError(
                f"a batch needs latents of one length; got {sorted(lengths)}: set max_seconds or batch_size=1"
            )
        x0 = torch.stack([it.latents for it in items])  # [B, T, C]
        B, T, _ = x0.shape
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])  # [B, T, C]
        t = torch.cat(
            [
                sample_times(1, g, cfg.time_sampling, cfg.shift, cfg.turbo_steps, cfg.logit_mean, cfg.logit_std)
                for g in gens
            ]
        )
        ehs, lyric_pos = self._condition(items)
        dev = self.device
        x0, noise, t = x0.to(dev), noise.to(dev), t.to(dev)
        xt = noisy_latents(x0, noise, t)
        wdtype = self.pipe.transformer.dtype
        ctx = context_latents(self.pipe, B, T, dev, wdtype)
        use_tap = cfg.entropy_weight > 0
        tap = EntropyTap(
            self.pipe.transformer,
            keys=cfg.entropy_keys,
            layers=cfg.entropy_layers,
            lyric_positions=lyric_pos if cfg.entropy_keys == "lyrics" else None,
        )
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            if use_tap:
                tap.__enter__()
            try:
                pred = self.model(
                    hidden_states=xt.to(wdtype),
                    timestep=t.to(wdtype),
                    timestep_r=t.to(wdtype),
                    encoder_hidden_states=ehs.to(dev, wdtype),
                    context_latents=ctx,
                    return_dict=False,
                )[0]
                entropy = tap.mean() if use_tap else torch.zeros((), device=dev)
            finally:
                if use_tap:
                    tap.__exit__(None, None, None)
        fm = flow_matching_loss(pred, x0, noise)
        loss = fm + cfg.entropy_weight * entropy.float()
        return {"loss": loss, "fm_loss": fm.detach(), "entropy": entropy.detach().float(), "t_mean": t.mean()}

    def train_step(self) -> dict[str, float]:
        """One optimizer step (all micro-batches). Returns its metrics."""
        cfg = self.cfg
        self.model.train()
        acc = {"loss": 0.0, "fm_loss": 0.0, "entropy": 0.0, "t_mean": 0.0}
        for micro in range(cfg.grad_accum):
            items, gen = self._batch(self.step, micro)
            last = micro == cfg.grad_accum - 1
            sync = self.accelerator.no_sync(self.model) if (self.world > 1 and not last) else _nullcontext()
            with sync:
                out = self._micro_step(items, gen)
                scaled = out["loss"] / cfg.grad_accum
                if self.accelerator is not None:
                    self.accelerator.backward(scaled)
                else:
                    scaled.backward()
            for k in acc:
                acc[k] += float(out[k].detach()) / cfg.grad_accum
        params = list(self.params.values())
        stray = [n for n, p in self.pipe.transformer.named_parameters() if p.grad is not None and n not in self.params]
        if stray:
            raise RuntimeError(f"gradients reached non-LoRA parameters: {stray[:3]}")
        if cfg.max_grad_norm:
            gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        else:
            gn = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.world > 1:
            red = torch.tensor([acc["loss"], acc["fm_loss"], acc["entropy"], acc["t_mean"]], device=self.device)
            red = self.accelerator.reduce(red, reduction="mean")
            acc = dict(zip(("loss", "fm_loss", "entropy", "t_mean"), red.tolist()))
        return {**acc, "lr": lr, "grad_norm": gn, "step": self.step}

    # ------------------------------------------------------------------------------------------- loop
    def fit(self, stop_at: int | None = None) -> str:
        """Train to ``config.steps`` (resuming from the newest checkpoint in ``out_dir``); returns the adapter
        directory ``<out_dir>/adapter``. ``stop_at``: return after that step without finishing (as if killed)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        os.makedirs(cfg.out_dir, exist_ok=True)
        if not self.resume():
            _seed_everything(cfg.seed, self.rank)  # global RNGs (LoRA dropout) start from the seed
        if self.is_main:
            write_json_atomic(
                {
                    "train": asdict(self.cfg),
                    "lora": self.lora.to_dict(),
                    "world_size": self.world,
                    "resumes": self.resumes,
                },
                os.path.join(cfg.out_dir, "config.json"),
            )
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (cfg.progress and self.is_main))
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                m = self.train_step()
                self._elapsed += time.perf_counter() - t0
                m["elapsed_s"] = self._elapsed
                if cfg.val_every and self.step % cfg.val_every == 0 and self.is_main:
                    m.update(self.attention_summary())
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or "val_entropy" in m:
                    self.metrics.append({k: m.get(k, "") for k in METRIC_COLUMNS})
                    if self.is_main:
                        self._write_metrics()
                bar.set_postfix(loss=f"{m['loss']:.4f}", ent=f"{m['entropy']:.3f}")
                bar.update(1)
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if stop_at is not None and self.step >= stop_at and self.step < cfg.steps:
                    return ""
        finally:
            bar.close()
        out = os.path.join(cfg.out_dir, "adapter")
        if self.is_main:
            save_adapter(self.pipe.transformer, out, cfg.adapter_name, {"step": self.step, "lora": self.lora.to_dict()})
            self._plot()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return out

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> str | None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.cfg.out_dir,
            self.step,
            lambda d: save_adapter(self.pipe.transformer, d, self.cfg.adapter_name),
            self.optimizer,
            self.scheduler,
            {
                "elapsed_s": self._elapsed,
                "world_size": self.world,
                "lora": self.lora.to_dict(),
                "train": asdict(self.cfg),
                "resumes": self.resumes,
            },
            keep=self.cfg.keep_checkpoints,
        )
        self._plot()
        return path

    def resume(self) -> bool:
        """Load the newest complete checkpoint of ``out_dir`` if there is one (LoRA, optimizer, scheduler, RNG,
        metrics). A damaged checkpoint (truncated, bit flips: its manifest's sizes and checksums) is passed over with
        a warning for the previous one; none complete is :class:`CheckpointError`. Changed optimizer settings
        (:data:`OPTIMIZER_SETTINGS`) are refused; other changed settings are used and recorded (:attr:`resumes`)."""
        found = checkpoints(self.cfg.out_dir)
        if not found:
            return False
        damaged: list[str] = []
        for path in found:
            try:
                state, opt_t, rng_t = load_checkpoint(path)
                sd, _ = read_adapter(os.path.join(path, "adapter"))
                break
            except (CheckpointError, AdapterFileError, FileNotFoundError) as e:
                damaged.append(str(e))
        else:
            raise CheckpointError(
                f"no complete checkpoint in {os.path.join(self.cfg.out_dir, 'checkpoints')}: "
                + "; ".join(damaged)
                + ". Move the checkpoints folder away to start the run over"
            )
        if damaged:
            warnings.warn(
                f"{'; '.join(damaged)}; resuming from the previous complete checkpoint {path} (step {state['step']})",
                stacklevel=2,
            )
        self._check_compatible(path, state)
        name = self.cfg.adapter_name
        with torch.no_grad():
            for pname, p in self.params.items():
                key = "transformer." + pname.replace(f".{name}.", ".")
                if key not in sd:
                    raise CheckpointError(f"checkpoint {path} has no tensor {key}: was it written for another LoRA?")
                p.copy_(sd[key].to(p.dtype))
        load_optimizer_state(self.optimizer, opt_t, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(rng_t, state["rng"])
        self.step = int(state["step"])
        self._elapsed = float(state.get("elapsed_s", 0.0))
        self.metrics = [
            r for r in _read_metrics(os.path.join(self.cfg.out_dir, "metrics.csv")) if r["step"] <= self.step
        ]
        return True

    def _check_compatible(self, path: str, state: dict[str, Any]) -> None:
        """Refuse a resume that would train differently from what the checkpoint holds; record other changes."""
        if state.get("world_size", 1) != self.world:
            raise CheckpointError(
                f"{path} was written by {state.get('world_size')} process(es); this run has {self.world}: the data "
                "order would change (resume with the same number of processes)"
            )
        lora = settings_changes(state.get("lora") or {}, self.lora.to_dict())
        if lora:
            raise CheckpointError(f"{path} was written for another LoRA: {_changes(lora)}; resume with the same LoRA")
        old = state.get("train")
        if old is None:  # written before checkpoints kept the settings: the optimizer's own groups
            group = state["optimizer"]["param_groups"][0]
            old = {k: group[k] for k in ("betas", "eps", "weight_decay") if k in group}
            old["lr"] = group.get("initial_lr", group.get("lr"))
        changed = settings_changes(old, asdict(self.cfg), ignore=UNRECORDED_SETTINGS)
        fixed = OPTIMIZER_SETTINGS + (("steps",) if "cosine" in (old.get("lr_schedule"), self.cfg.lr_schedule) else ())
        refused = {k: v for k, v in changed.items() if k in fixed}
        if refused:
            raise CheckpointError(
                f"cannot resume {path} with changed optimizer settings ({_changes(refused)}): its optimizer state and "
                "learning-rate schedule were built with the old values. Resume with the checkpoint's settings, or "
                "start a new run in another out_dir"
            )
        self.resumes = list(state.get("resumes", []))
        if changed:
            self.resumes.append({"step": int(state["step"]), "checkpoint": os.path.basename(path), "changed": changed})

    # ------------------------------------------------------------------------------------------- monitoring
    @torch.no_grad()
    def attention_summary(self) -> dict[str, float]:
        """Generate the fixed validation prompt under ``al.capture`` and report mean lyric mass and entropies."""
        from ..captures.session import capture

        cfg = self.cfg
        tr = self.pipe.transformer
        was_training = tr.training
        tr.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
                shape = (
                    1,
                    math.ceil(cfg.val_seconds * self.pipe.latents_per_second),
                    tr.config.audio_acoustic_hidden_dim,
                )
                latents = torch.randn(shape, generator=gen).to(self.device, tr.dtype)
                with capture(self.pipe) as cap:
                    self.pipe(
                        prompt=cfg.val_caption,
                        lyrics=cfg.val_lyrics,
                        audio_duration=cfg.val_seconds,
                        num_inference_steps=cfg.turbo_steps,
                        shift=cfg.shift,
                        guidance_scale=1.0,
                        latents=latents,
                        output_type="latent",
                    )
        finally:
            tr.train(was_training)
        mass = cap.stats["mass"][..., 0]  # [step, layer, batch, head, frame] lyric mass
        summary = {
            "val_lyric_mass": float(mass.mean()),
            "val_entropy": float(cap.stats["entropy"].mean()),
            "val_entropy_lyric": float(cap.stats["entropy_lyric"].mean()),
        }
        row = {
            "step": self.step,
            **summary,
            "lyric_mass_per_layer": mass.mean(dim=(0, 2, 3, 4)).tolist(),
            "entropy_per_layer": cap.stats["entropy"].mean(dim=(0, 2, 3, 4)).tolist(),
        }
        path = os.path.join(cfg.out_dir, "attention.jsonl")
        import json

        old = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = "".join(ln for ln in f if ln.strip() and json.loads(ln)["step"] < self.step)
        write_text_atomic(old + json.dumps(row) + "\n", path)
        return summary

    def _write_metrics(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.metrics:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        write_text_atomic(buf.getvalue(), os.path.join(self.cfg.out_dir, "metrics.csv"))

    def _plot(self) -> None:
        if not self.metrics:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.metrics]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        axes[0].plot(steps, [r["fm_loss"] for r in self.metrics], label="flow matching")
        axes[0].plot(steps, [r["loss"] for r in self.metrics], label="total", alpha=0.7)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[1].plot(steps, [r["entropy"] for r in self.metrics], label="train entropy (penalized)")
        val = [(r["step"], r["val_entropy"], r["val_lyric_mass"]) for r in self.metrics if r.get("val_entropy") != ""]
        if val:
            axes[1].plot([v[0] for v in val], [v[1] for v in val], "o-", label="val entropy")
            axes[1].plot([v[0] for v in val], [v[2] for v in val], "s-", label="val lyric mass")
        axes[1].set_xlabel("step")
        axes[1].legend()
        fig.tight_layout()
        try:
            atomic_write(
                os.path.join(self.cfg.out_dir, "loss.png"), lambda tmp: fig.savefig(tmp, dpi=100, format="png")
            )
        finally:
            plt.close(fig)


def _changes(changed: dict[str, list]) -> str:
    return ", ".join(f"{k} {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())


def _read_metrics(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else "") for k, v in r.items()})
            rows[-1]["step"] = int(rows[-1]["step"])
    return rows


def _seed_everything(seed: int, rank: int) -> None:
    import random

    ss = np.random.SeedSequence([int(seed), int(rank), 0x5EED])
    a, b = ss.generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(a))
    random.seed(int(b))
    np.random.seed(int(a))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _make_accelerator(cfg: TrainConfig):
    """An ``accelerate.Accelerator`` when accelerate is installed and several processes (or a GPU) are in use."""
    try:
        from accelerate import Accelerator
        from accelerate.state import PartialState
    except ImportError:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not torch.cuda.is_available():
        return None  # one CPU process: plain loop (no wrapper, bitwise reproducible)
    cpu = not torch.cuda.is_available()  # several CPU processes (torchrun): gloo, as accelerate's MULTI_CPU
    PartialState(cpu=cpu)
    return Accelerator(mixed_precision="no", cpu=cpu)  # autocast is applied by the trainer itself


def train_lora(pipe: Any, lora: LoraConfig, dataset: Any, config: TrainConfig | None = None, **overrides: Any) -> str:
    """``Trainer(pipe, lora, dataset, config, **overrides).fit()``."""
    return Trainer(pipe, lora, dataset, config, **overrides).fit()
