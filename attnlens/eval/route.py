"""``al.route(pipe, router, adapters=...)``: every pipeline call inside the block runs with the adapter the router
picks for its prompt.

::

    router = al.eval.Router.load("router.json")
    with al.route(pipe, router, adapters={"baseline": None, "lora": "runs/x/adapter"}) as log:
        pipe(prompt="acoustic folk, warm voice", lyrics="[verse]\\n...", audio_duration=30, ...)
    log.choices          # ["lora"]

Per call: the router reads the prompt (its words, lyric facts and, for a router with attention features, one
sampling step of the base model with a copy of the call's generator), picks a variant, and the adapter is activated
the way :func:`attnlens.eval.run` does it (loaded once under the variant's name, then ``enable_lora`` +
``set_adapters([name], weights=[scale])``; ``disable_lora`` for a variant without adapter). On leaving the block the
adapters it loaded are deleted and LoRA is disabled. Every prompt of one batched call must be routed to the same
variant (one adapter is active per call).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .router import Router
from .router_features import PromptInfo, one_step_call
from .runner import AdapterSwitch, Variant, parse_variants


def router_variants(router: Router, adapters: Mapping[str, Any] | None) -> dict[str, Variant]:
    """The variant (adapter path and scale) behind each of the router's choices: from ``adapters`` (name -> path /
    None / ``{"path", "scale"}``), else as recorded in the router. Paths are checked here."""
    given = dict(adapters or {})
    specs: dict[str, Any] = {}
    for name in router.variants:
        if name in given:
            specs[name] = given[name]
        elif name in router.adapters:
            specs[name] = router.adapters[name]
        else:
            raise KeyError(
                f"the router may choose {name!r} but no adapter was given for it (adapters={sorted(given)}) and the "
                "router recorded none; pass adapters={name: path or None, ...}"
            )
    return {v.name: v for v in parse_variants(specs)}


def choose_for_call(pipe: Any, router: Router, call: Mapping[str, Any], switch: AdapterSwitch) -> str:
    """The variant the router picks for the call ``pipe(**call)``; the attention pass (if the router reads
    attention) runs here with adapters off. Refuses a batch whose prompts are routed differently."""
    prompts = call.get("prompt")
    prompts = [prompts] if isinstance(prompts, str) or prompts is None else list(prompts)
    n = len(prompts)

    def item(key: str, default: Any, i: int) -> Any:
        v = call.get(key, default)
        return v[i] if isinstance(v, (list, tuple)) else v

    infos = [
        PromptInfo(
            f"item{i}",
            str(prompts[i] or ""),
            str(item("lyrics", "", i) or ""),
            float(call.get("audio_duration", 60.0)),
            str(item("vocal_language", "en", i)),
        )
        for i in range(n)
    ]
    extra = None
    if router.attention is not None:
        switch.deactivate()
        extra = one_step_call(pipe, call, router.attention)
    scores = router.predict(infos, extra).to_numpy()
    picks = [router.variants[int(j)] for j in scores.argmin(axis=1)]
    if len(set(picks)) > 1:
        raise ValueError(
            f"the prompts of this batched call are routed to different variants {picks}; one adapter is active per "
            "call, so call the pipeline once per prompt (or per group of prompts routed alike)"
        )
    return picks[0]


@dataclass
class RouteLog:
    """What :func:`route` did: the variant chosen for each call, in order."""

    choices: list[str] = field(default_factory=list)


@contextlib.contextmanager
def route(
    pipe: Any, router: Router | str | os.PathLike, adapters: Mapping[str, Any] | None = None
) -> Iterator[RouteLog]:
    """Within the block, each ``pipe(...)`` call runs with the adapter ``router`` picks for its prompt.

    Args:
        pipe: a diffusers pipeline whose ``transformer`` loads LoRA adapters (``load_lora_adapter``).
        router: a :class:`~attnlens.eval.Router` or the path of one saved as JSON.
        adapters: variant name -> adapter path / None (no adapter) / ``{"path", "scale"}``, for every variant the
            router may choose (default: the adapters the router recorded from its evaluation table).

    Yields a :class:`RouteLog` whose ``choices`` grow by one per call.
    """
    router = Router.load(router) if isinstance(router, (str, os.PathLike)) else router
    variants = router_variants(router, adapters)
    switch = AdapterSwitch(pipe)
    log = RouteLog()
    cls = type(pipe)
    signature = inspect.signature(cls.__call__)
    var_kw = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]

    choosing = []  # non-empty while the router reads a call (its attention pass calls the pipeline unrouted)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if choosing:
            return cls.__call__(self, *args, **kwargs)
        call = signature.bind(self, *args, **kwargs)
        call.apply_defaults()
        named = {k: v for k, v in call.arguments.items() if k != "self"}
        for k in var_kw:
            named.update(named.pop(k, None) or {})
        choosing.append(True)
        try:
            choice = choose_for_call(self, router, named, switch)
        finally:
            choosing.clear()
        switch.activate(variants[choice])
        log.choices.append(choice)
        return cls.__call__(self, *args, **kwargs)

    pipe.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    try:
        yield log
    finally:
        pipe.__class__ = cls
        switch.close()
