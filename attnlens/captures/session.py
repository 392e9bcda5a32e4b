"""``al.capture``: the context manager that taps a model's cross-attention during generation.

    with al.capture(pipe, layers=None, heads=None, steps=None, maps=False) as cap:
        pipe(...)

Hooks (all removed in ``finally``, also when the pipeline raises):

- a forward pre-hook on the transformer starts a step: reads ``t`` (through the model family), decides whether the
  step is kept, labels CFG halves when the batch is doubled, reads the call's key mask;
- forward hooks on each selected layer's query and key modules (the family's tap point: ACE-Step's ``norm_q`` /
  ``norm_k``, Stable Audio's ``to_q`` / ``to_k``) receive the query and key exactly as the attention's softmax sees
  them and hand them to the reducer; the model's own attention keeps running on SDPA / flash and its outputs are
  untouched;
- on a pipeline, the family's layout recorder hooks what the key layout needs (text encoder, condition encoder).

Nothing here knows a model: the family (:mod:`attnlens.families`) is found by the registry or passed as
``adapter=``.

The session is the conductor of the capture's parts — hook lifecycle (:class:`~attnlens.taps.hooks.HookScope`),
steps (:mod:`.steps`), batch rows (:mod:`.batch`), device tables and key masks (:mod:`.device_tables`), host
blocks and copies (:mod:`.host`), maps (:mod:`.maps`) — and keeps the per-layer path (stash, flush, kernel launch)
in one class on purpose: it runs once per layer and step in a loop bound by the host, where each indirection
costs time the benchmarks see. That keeps this module above 400 lines.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

from .. import __version__
from ..devices import TableArena
from ..families import resolve
from ..reducers.fused import StatsLauncher, fused_available, new_outputs
from ..reducers.stats import layer_probabilities, reduce_reference
from ..segments import MASKED_CODE
from ..taps.hooks import HookScope, HookSet
from ..taps.query_key import tap_query_key
from .batch import BatchLayoutError, call_keys
from .device_tables import DEVICE_HEADS as _DEVICE_HEADS  # noqa: F401 (cleared by tests)
from .device_tables import DEVICE_LAYOUTS as _DEVICE_LAYOUTS  # noqa: F401
from .device_tables import device_heads, device_layout, key_valid, masked_layout
from .host import HostBlock, HostCopies
from .layout import Layout
from .maps import MapsKeeper, layers_per_group
from .result import STAT_NAMES, Capture
from .selection import CaptureError, as_layout, normalize_selection
from .steps import StepClock

_HostBlock = HostBlock  # the name tests and benchmarks use

MapsMode = bool | Literal["mean"]

_ACTIVE_ATTR = "_attnlens_capture_active"  # set on the transformer while a capture is active


class CaptureSession(HookScope):
    """State of one capture. Use :func:`capture`.

    ``stash_budget_bytes`` (default 128 MiB): on the fused path, layers' queries and keys wait in a stash and go to
    the statistics kernel together. A step whose queries and keys fit in the budget (judged from its first layer
    times the number of layers) goes in one launch at its end; a larger step goes in chunks of half the budget, so
    that the stash and the step's output buffers together stay a few percent of the model's memory. A larger
    budget means fewer kernel launches per step and more GPU memory held (0: one launch per layer).

    With ``maps=True`` the maps of the selected heads are computed at each flush, a group of layers at a time (the
    group's inputs and temporaries within the budget), and copied to pinned host memory on a side stream. Maps
    whose copies are still running are held to twice the budget: past that, the host waits for the oldest copies
    (only a selection whose maps outgrow the copy engine's pace, e.g. every head at long audio, ever waits).
    """

    exclusive_mark = _ACTIVE_ATTR

    def __init__(
        self,
        model: Any,
        layers: Any = None,
        heads: Any = None,
        steps: Any = None,
        maps: MapsMode = False,
        layout: Any = None,
        num_steps: int | None = None,
        stats: bool = True,
        reducer: str = "auto",
        adapter: Any = None,
    ):
        self.adapter = resolve(model, adapter)
        f = self.adapter.facts
        self.layers = normalize_selection("layers", layers, f.n_layers) or list(range(f.n_layers))
        self.heads = normalize_selection("heads", heads, f.heads) or list(range(f.heads))
        self.steps_req = normalize_selection("steps", steps, None)
        if maps not in (True, False, "mean"):
            raise ValueError(f"maps must be True, False or 'mean'; got {maps!r}")
        self.maps_mode = maps
        self.keep_stats = stats
        self.user_layout = as_layout(layout)
        self.num_steps = num_steps
        if reducer not in ("auto", "reference", "fused"):
            raise ValueError(f"reducer must be 'auto', 'reference' or 'fused'; got {reducer!r}")
        self.reducer = reducer
        if (
            self.steps_req
            and any(s < 0 for s in self.steps_req)
            and num_steps is None
            and self.adapter.pipeline is None
        ):
            raise ValueError(
                f"steps={self.steps_req} counts from the end, but a bare transformer does not say how many steps "
                "will run: pass num_steps=... (or capture the pipeline)"
            )
        super().__init__()
        self.recorder = self.adapter.layout_recorder()
        self.vocabulary = self.adapter.segments
        self.capture = Capture(
            layers=list(self.layers),
            heads=list(self.heads),
            steps=[],
            timesteps=[],
            layout=self.user_layout or Layout(items=[], source="unknown", vocabulary_=self.vocabulary),
            frame_rate=self.adapter.frame_rate,
            model=self.adapter.model_info(),
            meta={"attnlens": __version__, "maps": maps, "reducer": None},
        )
        # per-step state
        self.clock = StepClock(self.steps_req, self._total_steps, self.capture.timesteps, self.capture.steps)
        self._active = False
        self._in_call = False  # inside a transformer call (between its pre-hook and its end)
        self._unfinished: list[int] = []  # generation steps whose call raised or was interrupted
        self._step_pos = -1
        self._parts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._layout_cache: tuple[Any, ...] | None = None
        self._layer_pos = {layer: i for i, layer in enumerate(self.layers)}
        self._step_bufs: list[dict[str, torch.Tensor]] = []
        self._pending_copies = False
        self._host: dict[str, _HostBlock] | None = None
        self._fused: bool | None = None
        self._done: dict[int, set[int]] = {}  # step position -> layer slots reduced by the fused kernel
        self._stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stash_bytes = self._step_flushed = 0
        self._pending_q: dict[int, torch.Tensor] = {}  # queries waiting for their keys (taps.query_key)
        self._copies = HostCopies()  # device -> host copies on a side stream, maps in flight bounded
        self._maps = MapsKeeper(
            maps, len(self.layers), self._copies, self.clock.expected, lambda: 2 * self.stash_budget_bytes
        )
        self.stash_budget_bytes = 128 << 20
        self._flush_at = self.stash_budget_bytes  # this step's flush size (set at its first layer)
        self._n_layers = len(self.layers)
        self._tables: TableArena | None = None  # the layers' offset tables (fused path)
        self._launcher: tuple[Any, Any] | None = None  # (layout cache it was built for, statistics launcher)
        dev = next(self.adapter.transformer.parameters()).device
        self._q_index, self._kv_index, self._heads_i32 = device_heads(tuple(self.heads), f.group, dev)

    # ----------------------------------------------------------- lifecycle (taps.hooks.HookScope)
    def _scope_target(self) -> Any:
        return self.adapter.transformer

    def _busy(self, target: Any) -> Exception:
        return CaptureError(
            f"a capture is already active on this {type(target).__name__}: nested captures on one model are not "
            "supported; capture everything you need in one al.capture(...) call"
        )

    def _register(self, hooks: HookSet) -> None:
        tr = self.adapter.transformer
        hooks.forward_pre(tr, self._on_step_begin, with_kwargs=True)
        hooks.forward(tr, self._on_step_end, always_call=True)
        for layer in self.layers:
            tap_query_key(hooks, self.adapter, layer, self._reduce, self._is_active, self._pending_q)
        if self.recorder is not None:
            self.recorder.attach(hooks)

    def _entered(self) -> Capture:
        return self.capture

    def _exited(self, exc_type: Any) -> None:
        try:
            if exc_type is None:
                self._finalize()
        finally:
            self._release()

    def _release(self) -> None:
        self._parts.clear()
        self._maps.clear()
        self._step_bufs = []
        self._stash = {}
        self._pending_q = {}
        self._done = {}
        self._host = None
        self._layout_cache = None
        self._copies.clear()
        self._tables = None
        self._launcher = None

    # --------------------------------------------------------------- steps
    def _total_steps(self) -> int | None:
        if self.num_steps is not None:
            return self.num_steps
        pipe = self.adapter.pipeline
        if pipe is not None and getattr(pipe, "scheduler", None) is not None:
            ts = getattr(pipe.scheduler, "timesteps", None)
            if ts is not None:
                return len(ts)
        return None

    def _on_step_begin(self, module, args, kwargs):
        if self._in_call:  # the call before never reached its end (an interrupt caught inside the block)
            self._abandon_call()
        self._in_call = True
        pos = self.clock.begin(self.adapter.timestep_of_call(args, kwargs))
        self._active = pos is not None
        if pos is None:
            return
        self._step_pos = pos
        self._prepare_layout(args, kwargs)
        grid = getattr(self.adapter, "query_grid", None)  # queries that tile an image: (rows, cols), row-major
        if grid is not None and (rc := grid(args, kwargs)) is not None:
            self.capture.model["query_grid"] = [int(rc[0]), int(rc[1])]

    def _abandon_call(self) -> None:
        """The current transformer call did not finish: what it stashed is dropped, and the step is named if the
        capture ends incomplete."""
        self._unfinished.append(self.clock.step)
        self._stash.clear()
        self._stash_bytes = 0
        self._pending_q.clear()
        self._active = self._in_call = False

    def _on_step_end(self, module, args, output):
        if output is None:  # the call raised (an always-called hook sees no output)
            self._abandon_call()
            return
        self._in_call = False
        if self._active and self._stash:  # layers the step skipped leave a partial stash: reduce what was seen
            self._flush_stash()
        self._stash.clear()
        self._pending_q.clear()
        if self._active and self._step_bufs and len(self._step_bufs) > self._step_pos:
            self._offload_step(self._step_pos)
        self._active = False

    def _offload_step(self, pos: int) -> None:
        """Move a finished step's statistics to (pinned) CPU memory without waiting: GPU memory stays flat."""
        bufs = self._step_bufs[pos]
        if not bufs["entropy"].is_cuda:
            return
        host = self._host
        if host is None:
            host = self._host = {name: HostBlock(self.clock.expected()) for name in bufs}
        with self._copies.side_stream(bufs["entropy"]):  # (all five are views of one allocation)
            self._step_bufs[pos] = {name: host[name].put((pos,), buf) for name, buf in bufs.items()}
        self._pending_copies = True

    def _prepare_layout(self, args, kwargs) -> None:
        ad = self.adapter
        call = call_keys(ad, self.recorder, self.user_layout, args, kwargs)
        if self._layout_cache is not None and self._layout_cache[0] == call.key:
            return  # as in the step before: labels, layout and device tensors stand
        try:
            rows = call.rows(self.vocabulary, ad.cfg_order)
        except BatchLayoutError as e:
            raise CaptureError(str(e)) from None
        if not rows.known and not self.capture.meta.get("layout_warning"):
            self.capture.meta["layout_warning"] = "layout unknown: segment masses and lyric statistics are empty"
        if self.capture.batch_labels and self.capture.batch_labels != rows.labels:
            raise CaptureError(f"batch changed inside one capture: {self.capture.batch_labels} -> {rows.labels}")
        self.capture.batch_labels = rows.labels
        self.capture.layout = rows.layout
        dev = self._q_index.device
        tensors = device_layout(rows.layout.items, len(self.vocabulary), dev)
        if call.mask is not None:
            tensors = masked_layout(tensors, key_valid(call.mask, call.batch, call.n_keys, dev))
            self.capture.meta["key_mask"] = True
        self._layout_cache = (call.key, *tensors)

    # ------------------------------------------------------------- reducers
    def _is_active(self) -> bool:
        return self._active

    def _use_fused(self, q: torch.Tensor) -> bool:
        if self.reducer == "reference" or not self.keep_stats:
            return False
        if not self.adapter.facts.scale > 0:  # the kernel folds a positive scale into its exponent: reference path
            return False
        # "auto" takes the kernel on CUDA only; "fused" also accepts Triton's CPU interpreter (for tests)
        ok = fused_available(q) and (q.is_cuda or self.reducer == "fused")
        if self.reducer == "fused" and not ok:
            raise CaptureError(
                "reducer='fused' needs a CUDA device, Triton and a power-of-two head_dim >= 16; "
                f"got device {q.device.type}, head_dim {q.shape[-1]}"
            )
        return ok

    def _reduce(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        # runs once per layer and step: the loop it sits in is bound by the host, so this path stays short
        li = self._layer_pos[layer]
        fused = self._fused
        if fused is None:
            fused = self._fused = self._use_fused(q)
            self.capture.meta["reducer"] = "fused" if fused else "reference"
            if fused:
                self._tables = TableArena(q.device)
        if not fused:
            self._reduce_reference(li, q, k)
            return
        if len(self._step_bufs) <= self._step_pos:  # the step's first layer
            self._new_step_buffers(q)
            self._stash_bytes = self._step_flushed = 0
            budget = self.stash_budget_bytes
            whole = (q.nbytes + k.nbytes) * self._n_layers <= budget
            self._flush_at = budget if whole else budget // 2
        # layers wait in a stash and go to the kernel together (one launch for many layers: the loop is bound by
        # kernel launches on the host); the stash is flushed once it holds `_flush_at` bytes of q and k
        stash = self._stash
        stash[li] = (q.detach() if q.requires_grad else q, k.detach() if k.requires_grad else k)
        self._stash_bytes += q.nbytes + k.nbytes
        if self._stash_bytes >= self._flush_at or len(stash) + self._step_flushed >= self._n_layers:
            self._flush_stash()  # (len(stash) + flushed: the distinct layers of this step seen so far)

    def _reduce_reference(self, li: int, q: torch.Tensor, k: torch.Tensor) -> None:
        _, codes, onehot, lyr_index, n_lyric = self._layout_cache[:5]
        keep_maps = self.maps_mode is not False
        with torch.no_grad():
            qs = q.detach().index_select(2, self._q_index.to(q.device))  # [B, T, h, D]
            stats, maps = reduce_reference(
                qs,
                k.detach(),
                self.adapter.facts.scale,
                self._kv_index.to(q.device),
                onehot,
                lyr_index,
                n_lyric,
                keep_maps,
                key_valid=self._key_valid_now(),
            )
        if self.keep_stats:
            self._parts[(self._step_pos, li)] = stats
        if maps is not None:
            self._maps.keep(self._step_pos, li, maps.unsqueeze(0))

    def _maps_of_run(self, run: list[int]) -> None:
        """Maps of the selected heads for a run of consecutive stashed layers, a few layers per batched product
        (:func:`layer_probabilities`, groups sized by :func:`layers_per_group`)."""
        q0, k0 = self._stash[run[0]]
        n = layers_per_group(q0, k0, len(self.heads), self.stash_budget_bytes)
        scale = self.adapter.facts.scale
        with torch.no_grad():
            for i in range(0, len(run), n):
                group = run[i : i + n]
                qs = [self._stash[li][0] for li in group]
                ks = [self._stash[li][1] for li in group]
                probs = layer_probabilities(
                    qs, ks, self._q_index, self._kv_index, scale, key_valid=self._key_valid_now()
                )
                self._maps.keep(self._step_pos, group[0], probs)

    def _flush_stash(self) -> None:
        """Run the kernel over the stashed layers: one launch per run of consecutive slots (layers arrive in the
        model's order; a selection listed out of order can split a stash)."""
        launch = self._stats_launcher()
        out = self._step_bufs[self._step_pos]
        slots = sorted(self._stash)
        runs: list[list[int]] = []
        for li in slots:
            if runs and li == runs[-1][-1] + 1:
                runs[-1].append(li)
            else:
                runs.append([li])
        for run in runs:
            qs = [self._stash[li][0] for li in run]
            ks = [self._stash[li][1] for li in run]
            launch(qs, ks, out=out, slot=run[0])
            if self.maps_mode is not False:
                self._maps_of_run(run)
        self._done.setdefault(self._step_pos, set()).update(slots)
        self._step_flushed += len(slots)
        self._stash.clear()
        self._stash_bytes = 0

    def _stats_launcher(self) -> Any:
        """The statistics kernel for this capture's layout and heads, resolved once per layout."""
        lc = self._layout_cache
        if self._launcher is None or self._launcher[0] is not lc:
            seg32, lidx32, nl32 = lc[5:8]
            f = self.adapter.facts
            fn = StatsLauncher(
                f.scale,
                self._heads_i32,
                f.group,
                seg32,
                lidx32,
                nl32,
                heads_list=self.heads,
                tables=self._tables,
                n_seg=len(self.vocabulary),
            )
            self._launcher = (lc, fn)
        return self._launcher[1]

    def _new_step_buffers(self, q: torch.Tensor) -> None:
        """Per-step output buffers ``[layer, batch, head, frame(, segment)]`` for the fused reducer (views of one
        allocation, :func:`~attnlens.reducers.fused.new_outputs`)."""
        B, T = q.shape[0], q.shape[1]
        self._step_bufs.append(new_outputs(q.device, (len(self.layers),), B, len(self.heads), T, len(self.vocabulary)))

    def _key_valid_now(self) -> torch.Tensor | None:
        """This step's key mask ``[B, S]`` (True: in the softmax), or ``None`` when the call passed none."""
        return None if not self.capture.meta.get("key_mask") else self._layout_cache[1] != MASKED_CODE

    # ------------------------------------------------------------- finalize
    def _finalize(self) -> None:
        cap = self.capture
        if self._pending_copies or self._maps.pending:
            dev = self._q_index.device
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)  # the model's device (also the side stream's)
        self.clock.resolve_timesteps()
        ns = len(cap.steps)
        if self.clock.step >= 0:  # calls ran: requested steps that did not are an error, not an empty capture
            self._check_requested_steps()
        if ns == 0:
            warnings.warn(
                "the capture saw no kept transformer step (was the model called inside the `with` block?)",
                stacklevel=3,
            )
            return
        if self.keep_stats:
            self._check_complete()
            cap.stats = self._assemble_stats()
            self._flag_nonfinite()
        self._maps.assemble(cap, ns)
        dtype = None
        try:
            dtype = str(next(self.adapter.transformer.parameters()).dtype).replace("torch.", "")
        except StopIteration:
            pass
        cap.meta["dtype"] = dtype

    def _check_complete(self) -> None:
        """Every kept step has every selected layer, and every requested step ran; else a :class:`CaptureError`
        that says why (an unfinished call, a compiled transformer, a step that never ran)."""
        if self._in_call:
            self._abandon_call()
        cap = self.capture
        ns, nl = len(cap.steps), len(self.layers)
        missing = [
            (cap.steps[s], self.layers[li])
            for s in range(ns)
            for li in range(nl)
            if (s, li) not in self._parts and li not in self._done.get(s, ())
        ]
        if missing:
            where = f"(step, layer) {missing[:4]}{' ...' if len(missing) > 4 else ''}"
            steps = sorted({s for s, _ in missing})
            if set(steps) <= set(self._unfinished):
                raise CaptureError(
                    f"incomplete capture: the transformer call of step(s) {steps} did not finish (it raised or was "
                    f"interrupted inside the block), so no cross-attention was seen for {where}; run the generation "
                    "again in a new al.capture(...)"
                )
            if _is_compiled(self.adapter.transformer):
                raise CaptureError(
                    f"incomplete capture: no cross-attention seen for {where}: the transformer is compiled "
                    "(torch.compile), and compiled code does not call hooks registered after it was compiled; "
                    "capture the model before compiling it (or call torch._dynamo.reset() before the capture)"
                )
            raise CaptureError(
                f"incomplete capture: no cross-attention seen for {where} (did the transformer skip cross-attention?)"
            )
        self._check_requested_steps()

    def _check_requested_steps(self) -> None:
        """Requested steps that never ran are an error naming the steps that did."""
        kept = self.clock.kept
        if self.steps_req is None or kept is None:
            return
        ran = self.clock.step + 1
        never = sorted(s for s, r in zip(self.steps_req, self.clock.resolved_requests()) if not 0 <= r < ran)
        if never:
            raise CaptureError(
                f"steps {never} did not run: the generation ran {ran} step(s) (0..{ran - 1}, or -{ran}..-1 from the "
                "end)"
            )

    def _assemble_stats(self) -> dict[str, torch.Tensor]:
        """Every statistic as one CPU tensor ``[step, layer, batch, head, frame(, segment)]``."""
        ns, nl = len(self.capture.steps), len(self.layers)
        if self._step_bufs:  # fused path: per-step buffers [layer, batch, head, frame(, segment)]
            blocks = {name: h.complete(ns) for name, h in (self._host or {}).items()}
            if blocks and all(b is not None for b in blocks.values()):
                return blocks  # every slot written in place: no copy
            return {name: torch.stack([b[name] for b in self._step_bufs]).cpu() for name in STAT_NAMES}
        return {
            name: torch.stack([torch.stack([self._parts[(s, li)][name] for li in range(nl)]) for s in range(ns)]).cpu()
            for name in STAT_NAMES
        }

    def _flag_nonfinite(self) -> None:
        """Both reducers carry NaN/Inf logits into the entropy: name the (step, layer) where that happened.

        A sum over a (step, layer)'s entropies is finite exactly when all of them are (each lies in [0, 1] unless
        non-finite, so the sum cannot overflow): one pass of additions, several times faster on the CPU than a
        per-element test followed by a reduction."""
        cap = self.capture
        ent = cap.stats["entropy"]  # [step, layer, batch, head, frame]
        bad = ~torch.isfinite(ent.flatten(2).sum(-1))  # [step, layer]
        if bad.any():
            where = [(cap.steps[s], self.layers[li]) for s, li in bad.nonzero().tolist()]
            cap.meta["nonfinite"] = where
            warnings.warn(
                f"non-finite attention logits (NaN/Inf in the model's query/key) at (step, layer) {where[:6]}; "
                "their statistics are not finite",
                stacklevel=4,
            )


def _is_compiled(model: Any) -> bool:
    """True for a module compiled in place (``model.compile()``) or wrapped by ``torch.compile``."""
    return getattr(model, "_compiled_call_impl", None) is not None or type(model).__name__ == "OptimizedModule"


def capture(
    model: Any,
    layers: Any = None,
    heads: Any = None,
    steps: Any = None,
    maps: MapsMode = False,
    layout: Any = None,
    num_steps: int | None = None,
    reducer: str = "auto",
    adapter: Any = None,
) -> CaptureSession:
    """Capture cross-attention from a pipeline or a bare transformer of a known model family (ACE-Step:
    ``AceStepPipeline`` / ``AceStepTransformer1DModel``; Stable Audio: ``StableAudioPipeline`` /
    ``StableAudioDiTModel``; PixArt: ``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` / ``PixArtTransformer2DModel``;
    or a family registered with ``al.adapters.register``).

    Args:
        model: the pipeline or the transformer.
        layers, heads, steps: what to keep (``None`` = all; an int or list of ints; negative counts from the end;
            steps are generation steps, one per transformer call).
        maps: ``False`` keeps per-frame statistics only; ``True`` also keeps full probability maps
            ``[step, layer, batch, head, frame, key]`` on the CPU for what was selected; ``"mean"`` keeps the mean
            map over the kept steps.
        layout: for a bare transformer, the key layout (:class:`Layout` or :class:`ItemLayout`); without it the
            layout is unknown and says so.
        num_steps: for a bare transformer with negative ``steps``: how many steps will run.
        reducer: ``"auto"`` (fused Triton kernel on CUDA when possible, else the reference path), ``"reference"``
            (chunked PyTorch, fp32; forces the reference everywhere) or ``"fused"`` (error if unavailable).
        adapter: the model family, when the registry should not pick it: a family class (called with ``model``)
            or a family instance (see :mod:`attnlens.families`).

    Use as ``with al.capture(pipe) as cap: pipe(...)``; ``cap`` is filled when the block ends.
    """
    return CaptureSession(
        model,
        layers=layers,
        heads=heads,
        steps=steps,
        maps=maps,
        layout=layout,
        num_steps=num_steps,
        reducer=reducer,
        adapter=adapter,
    )
