"""The model-family seam: what the capture core asks of a model family, and the registry that finds one.

A *family* (an adapter) is the only place that knows a model: which modules are its cross-attention layers, its
head structure, where the query and key can be read exactly as the attention's softmax sees them, what its keys
are (a :class:`~attnlens.segments.Segments` vocabulary and a layout per batch item), how query positions map to
seconds, what a denoising step is and how classifier-free guidance orders the batch. Everything downstream (taps,
reducers, :class:`~attnlens.captures.result.Capture`, analyzers, plots) reads those facts from the family or from
the capture, never from a model-specific constant.

The built-in families live in ``attnlens.adapters`` (one subpackage each); a user's own family is a class with the
attributes and methods of :class:`Family` (subclassing :class:`FamilyBase` gives the defaults), registered with
:func:`register` or passed to ``al.capture(model, adapter=...)``. See ``docs/families.md``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .segments import Segments


@dataclass(frozen=True)
class AttentionFacts:
    """Head structure of a model's cross-attention: ``probs = softmax(scale · q kᵀ + mask)``; query head ``h`` reads
    KV head ``h // group``."""

    n_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    scale: float

    def __post_init__(self) -> None:
        if min(self.n_layers, self.heads, self.kv_heads, self.head_dim) < 1:
            raise AdapterError(f"attention facts must be positive: {self}")
        if self.heads % self.kv_heads:
            raise AdapterError(f"query heads {self.heads} not a multiple of KV heads {self.kv_heads}")

    @property
    def group(self) -> int:
        """Query heads per KV head: query head ``h`` reads KV head ``h // group``."""
        return self.heads // self.kv_heads


class AdapterError(TypeError):
    """The model is not one a family knows (or a family is malformed)."""


@runtime_checkable
class Family(Protocol):
    """What the capture core asks of a model family (see :class:`FamilyBase` for the defaults)."""

    name: str
    transformer: nn.Module
    """the denoiser whose forward call is one diffusion step."""
    pipeline: Any | None
    facts: AttentionFacts
    frame_rate: float
    """cross-attention query frames per second (a family whose queries tile an image, not time, says 1.0 and gives
    :meth:`query_grid`)."""
    segments: Segments
    """the family's key-segment vocabulary."""
    cfg_order: tuple[str, str]
    """labels of the two halves of a batch doubled for classifier-free guidance, in batch order."""

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """True when ``model`` (a pipeline or a bare transformer) is one this family knows."""

    def cross_attention(self, layer: int) -> nn.Module:
        """The cross-attention module of ``layer``."""

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """Modules whose forward outputs :meth:`query_of` / :meth:`key_of` turn into the query and key."""

    def query_of(self, output: torch.Tensor) -> torch.Tensor:
        """The query ``[B, T, H, D]`` of the attention's frames, from the query module's output (no copy)."""

    def key_of(self, output: torch.Tensor) -> torch.Tensor:
        """The key ``[B, S, KVH, D]``, from the key module's output (no copy)."""

    def value_module(self, layer: int) -> nn.Module:
        """Module whose forward output is the value projection ``[B, S, KVH * D]``."""

    def key_mask_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The boolean key mask ``[B, S]`` (True: the key takes part in the softmax) of one transformer call, or
        ``None`` when every key does."""

    def timestep_of_call(self, args: tuple, kwargs: dict) -> Any:
        """The diffusion time ``t`` of one transformer call (a float, or a 0-d device tensor read later)."""

    def batch_of_call(self, args: tuple, kwargs: dict) -> int:
        """The transformer call's batch size."""

    def encoder_length_of_call(self, args: tuple, kwargs: dict) -> int | None:
        """The number of keys ``S`` of the call, when it can be read from its arguments."""

    def query_grid(self, args: tuple, kwargs: dict) -> tuple[int, int] | None:
        """``(rows, cols)`` when the call's query positions tile an image (row-major: query ``n`` is the patch at row
        ``n // cols``, column ``n % cols``), recorded as ``cap.model["query_grid"]``; ``None`` when they are frames in
        time."""

    def layout_recorder(self) -> Any | None:
        """An object with ``attach(hooks)`` and ``layout`` (and optionally ``labels``) that records the key layout
        of a pipeline call, or ``None`` (bare transformer)."""

    def model_info(self) -> dict[str, Any]:
        """Facts recorded in a capture (class, sizes, rates)."""


class FamilyBase:
    """Defaults for a family: identity query/key (``query_key_modules`` emit ``[B, T, H, D]`` / ``[B, S, KVH, D]``),
    no key mask, the ``timestep`` argument (keyword or second positional) as the step, the first positional
    argument's batch, ``encoder_hidden_states`` for the key count, conditional half first under CFG, queries in time
    (no image grid), no layout recorder, ``to_v`` as the value projection. A family sets ``name``, ``segments``,
    ``transformer``, ``pipeline``, ``facts``, ``frame_rate`` and implements ``accepts``, ``cross_attention`` and
    ``query_key_modules``."""

    name = "family"
    describes = "a model of this family"
    """what the family accepts, in words (for error messages)."""
    cfg_order: tuple[str, str] = ("cond", "uncond")
    timestep_arg: tuple[str, int] = ("timestep", 1)
    encoder_arg: tuple[str, int] = ("encoder_hidden_states", 2)
    mask_arg: tuple[str, int] | None = None

    pipeline: Any | None = None

    frame_slice: slice = slice(None)
    """The query positions that are frames (Stable Audio: ``slice(1, None)``, its first position is a global token)."""

    def value_module(self, layer: int) -> nn.Module:
        """The cross-attention module's ``to_v`` (diffusers' name for the value projection)."""
        return self.cross_attention(layer).to_v

    def value_of(self, output: torch.Tensor) -> torch.Tensor:
        """The value ``[B, S, KVH, D]`` from the value module's output ``[B, S, KVH · D]`` (a view)."""
        f = self.facts
        return output.view(output.shape[0], output.shape[1], f.kv_heads, f.head_dim)

    def out_module(self, layer: int) -> nn.Module:
        """The output projection, whose input ``[B, N, H · D]`` holds every query head's output side by side (head
        ``h`` at ``h·D .. h·D + D``): where an intervention replaces a head's output."""
        return self.cross_attention(layer).to_out[0]

    def query_of(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def key_of(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def key_mask_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The call's ``mask_arg`` argument (keyword or positional), or ``None`` (no ``mask_arg``: no mask)."""
        return None if self.mask_arg is None else _argument(args, kwargs, *self.mask_arg)

    def timestep_of_call(self, args: tuple, kwargs: dict) -> Any:
        """The call's ``t``: a float, or a 0-d tensor left on its device (reading it would synchronize a GPU): a copy,
        since a loop may refill one timestep tensor in place from step to step."""
        t = _argument(args, kwargs, *self.timestep_arg)
        if t is None:
            raise ValueError(
                f"transformer call without a `{self.timestep_arg[0]}` argument: cannot tell which step this is"
            )
        if hasattr(t, "reshape"):
            t = t.detach().reshape(-1)[0]
            return float(t) if t.device.type == "cpu" else t.clone()
        return float(t)

    def batch_of_call(self, args: tuple, kwargs: dict) -> int:
        hs = kwargs.get("hidden_states", args[0] if args else None)
        return int(hs.shape[0])

    def encoder_length_of_call(self, args: tuple, kwargs: dict) -> int | None:
        ehs = _argument(args, kwargs, *self.encoder_arg)
        return None if ehs is None else int(ehs.shape[1])

    def query_grid(self, args: tuple, kwargs: dict) -> tuple[int, int] | None:
        return None

    def layout_recorder(self) -> Any | None:
        return None

    def model_info(self) -> dict[str, Any]:
        f = self.facts
        return {
            "class": type(self.transformer).__name__,
            "adapter": self.name,
            "layers": f.n_layers,
            "heads": f.heads,
            "kv_heads": f.kv_heads,
            "head_dim": f.head_dim,
            "scale": f.scale,
            "frame_rate": self.frame_rate,
        }


def _argument(args: tuple, kwargs: dict, name: str, position: int) -> Any:
    v = kwargs.get(name)
    if v is None and len(args) > position:
        v = args[position]
    return v


# ------------------------------------------------------------------------------------------------------ registry
BUILTIN_FAMILIES: tuple[str, ...] = (
    "attnlens.adapters.acestep",
    "attnlens.adapters.stable_audio",
    "attnlens.adapters.pixart",
)
"""Modules of the built-in families, imported on the first lookup (each registers its family class)."""

_REGISTRY: list[type] = []
_builtins_loaded = False


def register(family: type) -> type:
    """Register a family class (usable as a decorator). It needs a ``name``, a ``segments`` vocabulary and a
    classmethod ``accepts(model)``; :func:`resolve` asks the families registered last first, so a user's family can
    take over a model a built-in one also accepts. Registering a class again (or another with its name) replaces
    it."""
    missing = [a for a in ("name", "segments", "accepts") if not hasattr(family, a)]
    if not isinstance(family, type) or missing:
        raise AdapterError(
            f"register() takes a family class with name, segments and accepts(model); {family!r} lacks {missing}"
        )
    if not isinstance(family.segments, Segments):
        raise AdapterError(f"{family.__name__}.segments must be an attnlens.segments.Segments")
    _REGISTRY[:] = [f for f in _REGISTRY if f is not family and f.name != family.name]
    _REGISTRY.append(family)
    return family


def unregister(family: type | str) -> None:
    """Remove a registered family (by class or name); unknown ones are an error."""
    name = family if isinstance(family, str) else family.name
    before = len(_REGISTRY)
    _REGISTRY[:] = [f for f in _REGISTRY if f.name != name]
    if len(_REGISTRY) == before:
        raise KeyError(f"no family named {name!r} is registered; registered: {[f.name for f in registered()]}")


def registered() -> list[type]:
    """The registered family classes, built-in ones included, in lookup order (last registered first)."""
    _load_builtins()
    return list(reversed(_REGISTRY))


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_FAMILIES:
            importlib.import_module(module)


def resolve(model: Any, adapter: Any = None) -> Any:
    """The family instance for ``model``: ``adapter`` when it is one already (an instance), ``adapter(model)`` when
    it is a family class, else the first registered family that accepts ``model``."""
    if adapter is not None:
        if isinstance(adapter, type):
            return adapter(model)
        return adapter
    if _is_family_instance(model):
        return model
    for fam in registered():
        if fam.accepts(model):
            return fam(model)
    known = "; ".join(f"{f.name}: {getattr(f, 'describes', f.__name__)}" for f in registered())
    raise AdapterError(
        f"attnlens knows no model family for a {type(model).__module__}.{type(model).__name__}; expected one of "
        f"({known}); pass adapter=... or register a family with al.adapters.register (see docs/families.md)"
    )


def _is_family_instance(obj: Any) -> bool:
    return not isinstance(obj, type) and all(
        hasattr(obj, a) for a in ("facts", "segments", "transformer", "query_key_modules")
    )
