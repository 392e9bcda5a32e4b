"""``al.intervene``: change chosen cross-attention heads while a model runs, and restore it exactly afterwards.

    with al.intervene(pipe, ablate=[(1, 0)], mode="zero"): pipe(...)          # head output 0
    with al.intervene(pipe, ablate=heads, mode="mean"): pipe(...)             # its mean over the call's frames
    with al.intervene(pipe, ablate=heads, mode="uniform"): pipe(...)          # uniform attention (non-padding keys)
    with al.intervene(pipe, scale={"lyric": 2.0}, layers=[1, 2]): pipe(...)   # steer: logits + log w on a segment
    with al.intervene(pipe, patch=cap, heads=[(1, 0)], steps=[0, 1]): pipe(...)   # another run's attention maps

How (per intervened layer, only at the chosen steps):

- the layer's query and key are read by the family's tap and its value by a hook on the value projection; the model
  keeps running its own attention (SDPA / flash) for every layer and head;
- a forward pre-hook on the layer's output projection (whose input holds every query head's output side by side,
  ``[B, N, H · D]``) replaces the chosen heads' slices, for the frame positions only, with the intervened output:
  ``0`` (zero), the head's own output averaged over frames (mean), or ``P v`` with ``P`` the uniform map, the steered
  map ``softmax(scale · q kᵀ + log w_seg + mask)``, or a patched map (computed in fp32, cast to the model's dtype);
- a query head is changed without touching the heads that share its KV head (GQA).

Every hook is removed when the block ends, also after an exception, so the model's outputs after it are bitwise those
before it. A capture inside the block records the attention the model computes from its queries and keys; for a
steered, patched or uniform head that is the map before the intervention replaced the head's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..captures.batch import BatchLayoutError, call_keys
from ..captures.device_tables import key_valid
from ..captures.selection import CaptureError, as_layout, normalize_selection
from ..captures.steps import StepClock
from ..families import resolve
from ..taps.hooks import HookScope, HookSet
from ..taps.query_key import tap_query_key

Mode = Literal["zero", "mean", "uniform"]
MODES: tuple[str, ...] = ("zero", "mean", "uniform")


class InterventionError(ValueError):
    """An intervention that cannot be done as asked (unknown segment, head out of range, a patch that does not fit)."""


@dataclass(frozen=True)
class HeadAction:
    """What happens to one (layer, query head): ``kind`` is ``"zero"``, ``"mean"``, ``"uniform"``, ``"scale"`` or
    ``"patch"``; ``segment`` (uniform over one segment), ``weights`` (scale), ``maps`` (patch: ``[B, T, S]`` for
    every step, or ``[n, B, T, S]`` for the generation steps ``map_steps``) as the kind needs."""

    kind: str
    segment: str | None = None
    weights: tuple[tuple[str, float], ...] = ()
    maps: Any = None
    map_steps: tuple[int, ...] | None = None


class Intervention(HookScope):
    """The context of :func:`intervene` (see the module docstring)."""

    exclusive_mark = "_attnlens_intervention_active"

    def __init__(
        self,
        model: Any,
        ablate: Any = None,
        mode: Mode = "zero",
        segment: str | None = None,
        scale: dict[str, float] | None = None,
        patch: Any = None,
        layers: Any = None,
        heads: Any = None,
        steps: Any = None,
        num_steps: int | None = None,
        layout: Any = None,
        adapter: Any = None,
    ):
        super().__init__()
        self.family = fam = resolve(model, adapter)
        f = fam.facts
        self.actions: dict[tuple[int, int], HeadAction] = {}
        if mode not in MODES:
            raise InterventionError(f"mode must be one of {MODES}; got {mode!r}")
        if segment is not None and mode != "uniform":
            raise InterventionError("segment= goes with mode='uniform' (uniform attention over one segment)")
        voc = fam.segments
        if segment is not None and segment not in voc:
            raise InterventionError(f"unknown segment {segment!r}; the {fam.name} family has {voc.names}")
        if ablate is not None:
            for lh in _pairs("ablate", ablate, f):
                self._add(lh, HeadAction(mode, segment=segment))
        if scale is not None:
            if not isinstance(scale, dict) or not scale:
                raise InterventionError(f"scale must be a dict of segment -> weight; got {scale!r}")
            bad = [s for s in scale if s not in voc]
            if bad:
                raise InterventionError(f"unknown segment(s) {bad} in scale; the {fam.name} family has {voc.names}")
            for s, w in scale.items():
                if not (isinstance(w, (int, float)) and w >= 0 and math.isfinite(w)):
                    raise InterventionError(f"scale[{s!r}] must be a finite weight >= 0; got {w!r}")
            weights = tuple(sorted((s, float(w)) for s, w in scale.items()))
            if any(w != 1.0 for _, w in weights):  # all 1.0: nothing changes, and nothing is hooked
                sel_l = normalize_selection("layers", layers, f.n_layers) or list(range(f.n_layers))
                sel_h = _head_list(heads, f)
                for layer in sel_l:
                    for h in sel_h:
                        self._add((layer, h), HeadAction("scale", weights=weights))
        if patch is not None:
            for lh, maps, map_steps in _patch_maps(patch, heads, f):
                self._add(lh, HeadAction("patch", maps=maps, map_steps=map_steps))
        self.steps_req = normalize_selection("steps", steps, None)
        self.num_steps = num_steps
        self.user_layout = as_layout(layout)
        self.recorder = fam.layout_recorder()
        self.clock = StepClock(self.steps_req, self._total_steps, [], [])
        self.layers = sorted({layer for layer, _ in self.actions})
        self._active = False
        self._pos = -1
        self._pending_q: dict[int, torch.Tensor] = {}
        self._qkv: dict[int, dict[str, torch.Tensor]] = {}
        self._rows: tuple[Any, ...] | None = None  # (cache key, codes [B, S] long, valid [B, S] bool)

    def _add(self, lh: tuple[int, int], action: HeadAction) -> None:
        if lh in self.actions:
            raise InterventionError(f"(layer, head) {lh} is asked for two interventions; give each head one")
        self.actions[lh] = action

    # -------------------------------------------------------------- lifecycle
    def _scope_target(self) -> Any:
        return self.family.transformer

    def _busy(self, target: Any) -> Exception:
        return InterventionError(
            f"an intervention is already active on this {type(target).__name__}: put every change in one "
            "al.intervene(...) call"
        )

    def _register(self, hooks: HookSet) -> None:
        fam = self.family
        hooks.forward_pre(fam.transformer, self._on_step_begin, with_kwargs=True)
        for layer in self.layers:
            tap_query_key(hooks, fam, layer, self._on_qk, lambda: self._active, self._pending_q)
            hooks.forward(fam.value_module(layer), self._value_hook(layer))
            hooks.forward_pre(fam.out_module(layer), self._out_hook(layer))
        if self.recorder is not None and self._needs_layout():
            self.recorder.attach(hooks)

    def _exited(self, exc_type: Any) -> None:
        self._pending_q.clear()
        self._qkv.clear()
        self._rows = None

    def _needs_layout(self) -> bool:
        return any(a.kind in ("scale", "uniform") for a in self.actions.values())

    def _total_steps(self) -> int | None:
        if self.num_steps is not None:
            return self.num_steps
        sched = getattr(self.family.pipeline, "scheduler", None)
        ts = getattr(sched, "timesteps", None)
        return None if ts is None else len(ts)

    # ----------------------------------------------------------------- steps
    def _on_step_begin(self, module, args, kwargs):
        pos = self.clock.begin(self.family.timestep_of_call(args, kwargs))
        self._active, self._pos = pos is not None, -1 if pos is None else pos
        self._qkv.clear()
        if self._active and self._needs_layout():
            self._prepare_rows(args, kwargs)

    def _prepare_rows(self, args, kwargs) -> None:
        fam = self.family
        call = call_keys(fam, self.recorder, self.user_layout, args, kwargs)
        if self._rows is not None and self._rows[0] == call.key:
            return
        if call.layout is None:
            raise InterventionError(
                "steering and uniform attention over a segment need the key layout: capture the pipeline, or pass "
                "layout=... for a bare transformer"
            )
        try:
            rows = call.rows(fam.segments, fam.cfg_order)
        except BatchLayoutError as e:
            raise InterventionError(str(e)) from None
        codes = torch.as_tensor(np.stack([it.segment_codes() for it in rows.layout.items]), dtype=torch.long)
        cpu = torch.device("cpu")
        valid = torch.ones_like(codes, dtype=torch.bool)
        if call.mask is not None:
            try:
                valid = key_valid(call.mask, call.batch, call.n_keys, cpu)
            except CaptureError as e:
                raise InterventionError(str(e)) from None
        self._rows = (call.key, codes, valid)

    # ------------------------------------------------------------------ taps
    def _on_qk(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        self._qkv.setdefault(layer, {}).update(q=q, k=k)

    def _value_hook(self, layer: int):
        def on_value(module, args, output):
            if self._active:
                self._qkv.setdefault(layer, {})["v"] = self.family.value_of(output)

        return on_value

    def _out_hook(self, layer: int):
        heads = sorted(h for (lay, h) in self.actions if lay == layer)

        def on_out(module, args):
            if not self._active:
                return None
            x = args[0]
            new = x.clone()
            f = self.family.facts
            frames = new[:, self.family.frame_slice].unflatten(-1, (f.heads, f.head_dim))  # [B, T, H, D] (a view)
            for h in heads:
                frames[:, :, h] = self._head_output(layer, h, frames[:, :, h]).to(x.dtype)
            return (new, *args[1:])

        return on_out

    # ------------------------------------------------------------ the change
    def _head_output(self, layer: int, h: int, own: torch.Tensor) -> torch.Tensor:
        """The intervened output ``[B, T, D]`` of query head ``h`` (``own``: its output as the model computed it)."""
        a = self.actions[(layer, h)]
        if a.kind == "zero":
            return torch.zeros_like(own)
        if a.kind == "mean":
            return own.float().mean(dim=1, keepdim=True).expand_as(own)
        got = self._qkv.get(layer, {})
        if "v" not in got or "k" not in got:
            raise InterventionError(f"layer {layer}: the value or key of this call was not seen (a cached condition?)")
        f = self.family.facts
        kvh = h // f.group
        v = got["v"][:, :, kvh].float()  # [B, S, D]
        if a.kind == "patch":
            P = self._patch_map(a, own, v)
        else:
            P = self._map(a, got["q"][:, :, h], got["k"][:, :, kvh])
        return torch.einsum("bts,bsd->btd", P, v)

    def _map(self, a: HeadAction, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The uniform or steered map ``[B, T, S]`` (fp32) from the head's query ``[B, T, D]`` and key ``[B, S, D]``."""
        _, codes, valid = self._rows
        voc = self.family.segments
        codes, valid = codes.to(q.device), valid.to(q.device)
        B, T = q.shape[0], q.shape[1]
        if a.kind == "uniform":
            if a.segment is not None:
                keep = valid & (codes == voc.code(a.segment))
            elif "padding" in voc:
                keep = valid & (codes != voc.code("padding"))
            else:
                keep = valid
            n = keep.sum(dim=1, keepdim=True)
            if bool((n == 0).any()):
                raise InterventionError(
                    f"uniform attention over {a.segment or 'the non-padding keys'}: an item has none"
                )
            return (keep / n).float()[:, None, :].expand(B, T, -1)
        logits = torch.einsum("btd,bsd->bts", q.float(), k.float()) * self.family.facts.scale
        bias = torch.zeros(codes.shape, dtype=torch.float32, device=q.device)
        for seg, w in a.weights:
            bias = torch.where(codes == voc.code(seg), math.log(w) if w > 0 else float("-inf"), bias)
        bias = bias.masked_fill(~valid, float("-inf"))
        return torch.softmax(logits + bias[:, None, :], dim=-1)

    def _patch_map(self, a: HeadAction, own: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        maps = a.maps
        if maps.ndim == 4:  # [n, B, T, S]: the map of this generation step
            step = self.clock.step
            steps = a.map_steps if a.map_steps is not None else tuple(range(maps.shape[0]))
            if step not in steps:
                raise InterventionError(f"the patch has no map of generation step {step}; it holds steps {list(steps)}")
            maps = maps[steps.index(step)]
        want = (own.shape[0], own.shape[1], v.shape[1])
        if tuple(maps.shape) != want:
            raise InterventionError(
                f"patch map of shape {tuple(maps.shape)} does not fit this call: expected [batch, frames, keys] {want}"
            )
        return maps.to(device=v.device, dtype=torch.float32)


def _pairs(name: str, value: Any, f: Any) -> list[tuple[int, int]]:
    """``[(layer, head)]`` from pairs (negative indices count from the end); errors name what was wrong."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, int) for x in value):
        value = [value]
    try:
        pairs = [(int(a), int(b)) for a, b in value]
    except (TypeError, ValueError):
        raise InterventionError(f"{name} must be (layer, head) pairs, e.g. [(1, 0), (2, 5)]; got {value!r}") from None
    out = []
    for layer, h in pairs:
        if not (-f.n_layers <= layer < f.n_layers and -f.heads <= h < f.heads):
            raise InterventionError(
                f"{name}: (layer, head) ({layer}, {h}) out of range: the model has {f.n_layers} layers of {f.heads} heads"
            )
        out.append((layer % f.n_layers, h % f.heads))
    return out


def _head_list(heads: Any, f: Any) -> list[int]:
    if heads is not None and not isinstance(heads, int) and any(isinstance(x, tuple) for x in heads):
        raise InterventionError("with scale=, heads= lists query heads (ints) of the chosen layers")
    return normalize_selection("heads", heads, f.heads) or list(range(f.heads))


def _patch_maps(patch: Any, heads: Any, f: Any) -> list[tuple[tuple[int, int], torch.Tensor, tuple[int, ...] | None]]:
    """``[((layer, head), maps, their generation steps)]`` from a capture with full maps (``[step, B, T, S]``) or a
    dict of per-head maps (``[B, T, S]``, or ``[step, B, T, S]`` for steps ``0, 1, ...``)."""
    if isinstance(patch, dict):
        out = []
        for lh, m in zip(_pairs("patch", list(patch), f), patch.values()):
            m = torch.as_tensor(m)
            if m.ndim not in (3, 4):
                raise InterventionError(f"patch map of {lh}: expected [batch, frames, keys] or [step, ...]; {m.ndim}-d")
            out.append((lh, m, None))
        return out
    maps = getattr(patch, "maps", None)
    if maps is None:
        raise InterventionError(
            "patch= takes a capture with full maps (al.capture(..., maps=True)) or a dict {(layer, head): map}"
        )
    if heads is None:
        raise InterventionError("patch= needs heads=[(layer, head), ...]: which heads take the captured maps")
    out = []
    for layer, h in _pairs("heads", heads, f):
        if layer not in patch.layers or h not in patch.heads:
            raise InterventionError(
                f"the patch capture has no map of (layer, head) ({layer}, {h}): it kept layers {patch.layers}, "
                f"heads {patch.heads}"
            )
        m = maps[:, patch.layers.index(layer), :, patch.heads.index(h)]  # [step, B, T, S]
        out.append(((layer, h), m, tuple(patch.steps)))
    return out


def intervene(
    model: Any,
    ablate: Any = None,
    mode: Mode = "zero",
    segment: str | None = None,
    scale: dict[str, float] | None = None,
    patch: Any = None,
    layers: Any = None,
    heads: Any = None,
    steps: Any = None,
    num_steps: int | None = None,
    layout: Any = None,
    adapter: Any = None,
) -> Intervention:
    """Change cross-attention heads of ``model`` (a pipeline or a bare transformer of a known family) inside a
    ``with`` block (see the module docstring).

    Args:
        ablate: ``(layer, head)`` pairs to ablate with ``mode``: ``"zero"`` (output 0), ``"mean"`` (the head's output
            averaged over the call's frames), ``"uniform"`` (uniform attention over the item's non-padding keys, or
            over ``segment``'s keys).
        scale: ``{segment: weight}``: steer ``layers`` × ``heads`` (``None`` = all) by adding ``log weight`` to the
            logits of that segment's keys (rows still sum to 1; weight 1 changes nothing, 0 removes the keys).
        patch: a capture with full maps (its maps of ``heads``, pairs, at the same kept steps) or
            ``{(layer, head): map [batch, frames, keys] or [step, batch, frames, keys]}``: the head attends with
            that map.
        steps: the generation steps to change (``None`` = every step; negative counts from the end).
        layout: for a bare transformer, the key layout (steering and uniform attention over segments need it).
        adapter: the model family, when the registry should not pick it.
    """
    return Intervention(model, ablate, mode, segment, scale, patch, layers, heads, steps, num_steps, layout, adapter)
