"""Hook bookkeeping: every handle kept, all removed together (reverse order) in ``finally``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

ATTNLENS_MARK = "__attnlens_hook__"


class HookSet:
    """A set of PyTorch hooks registered by attnlens on one model; ``remove()`` undoes all of them."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def _mark(self, fn: Callable) -> Callable:
        try:  # plain functions carry the mark themselves (no extra call layer on the hot path)
            setattr(fn, ATTNLENS_MARK, True)
            if "attnlens" not in getattr(fn, "__qualname__", ""):
                fn.__qualname__ = f"attnlens:{fn.__qualname__}"
            return fn
        except AttributeError:  # bound methods: wrap
            pass

        def hook(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        setattr(hook, ATTNLENS_MARK, True)
        hook.__qualname__ = f"attnlens:{getattr(fn, '__qualname__', 'hook')}"
        return hook

    def forward(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False, always_call: bool = False) -> None:
        self.handles.append(
            module.register_forward_hook(self._mark(fn), with_kwargs=with_kwargs, always_call=always_call)
        )

    def forward_pre(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> None:
        self.handles.append(module.register_forward_pre_hook(self._mark(fn), with_kwargs=with_kwargs))

    def adopt(self, handles: list[RemovableHandle]) -> None:
        """Take over handles registered elsewhere (they are removed with the rest)."""
        self.handles.extend(handles)

    def remove(self) -> None:
        errors = []
        while self.handles:
            h = self.handles.pop()
            try:
                h.remove()
            except Exception as e:  # keep removing the rest
                errors.append(e)
        if errors:
            raise RuntimeError(f"failed to remove {len(errors)} hook(s): {errors[0]!r}")

    def __len__(self) -> int:
        return len(self.handles)


def attnlens_hooks(model: nn.Module) -> list[tuple[str, str]]:
    """``(module name, hook kind)`` of every attnlens hook still registered anywhere in ``model``."""
    found = []
    for name, m in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            for fn in getattr(m, kind, {}).values():
                if getattr(fn, ATTNLENS_MARK, False) or "attnlens" in getattr(fn, "__qualname__", ""):
                    found.append((name, kind))
    return found
