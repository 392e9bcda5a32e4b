"""Hook bookkeeping: every handle kept, all removed together (reverse order) in ``finally``.

:class:`HookSet` holds the handles; :class:`HookScope` is the one context manager every consumer of hooks builds on
(the capture, the training entropy penalty, the demo's head guide): it registers on entry, guards against a second
scope of the same kind on one model, and removes everything on exit, also when registering or the block raised.
attnlens' hooks carry a mark attribute, by which :func:`attnlens_hooks` finds any left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

ATTNLENS_MARK = "__attnlens_hook__"
HOOKED_ATTR = "_attnlens_hooked"  # on every module that holds attnlens hooks, while it does


class HookedModuleCopyError(RuntimeError):
    """A module was copied while attnlens hooks are registered on it."""


class _HookedMark:
    """Set on a hooked module while its hooks live: counts the hook sets on it, and refuses to be copied (a copy
    would carry the hooks, which call back into the original's capture, and the capture's "active" flag)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def __bool__(self) -> bool:
        return True

    def __deepcopy__(self, memo: dict) -> Any:
        raise HookedModuleCopyError(
            f"this module is being copied while attnlens hooks are on it ({self.what}): the copy would carry them. "
            "Copy the model before or after the `with al.capture(...)` block (the capture goes on unchanged)"
        )

    def __reduce__(self) -> Any:
        raise HookedModuleCopyError(f"a module with attnlens hooks on it ({self.what}) cannot be pickled or copied")


def _hold(module: nn.Module, what: str) -> None:
    mark = module.__dict__.get(HOOKED_ATTR)
    if mark is None:
        mark = _HookedMark(what)
        module.__dict__[HOOKED_ATTR] = mark
    mark.count += 1


def _release(module: nn.Module) -> None:
    mark = module.__dict__.get(HOOKED_ATTR)
    if mark is not None:
        mark.count -= 1
        if mark.count <= 0:
            del module.__dict__[HOOKED_ATTR]


class HookSet:
    """A set of PyTorch hooks registered by attnlens on one model; ``remove()`` undoes all of them."""

    def __init__(self, what: str = "attnlens hooks") -> None:
        self.handles: list[RemovableHandle] = []
        self.modules: list[nn.Module] = []  # modules marked as hooked (one entry per registration)
        self.what = what

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
        self._held(module)

    def forward_pre(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> None:
        self.handles.append(module.register_forward_pre_hook(self._mark(fn), with_kwargs=with_kwargs))
        self._held(module)

    def _held(self, module: nn.Module) -> None:
        _hold(module, self.what)
        self.modules.append(module)

    def remove(self) -> None:
        while self.modules:
            _release(self.modules.pop())
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


class HookScope:
    """Base of a context manager that hooks a model for the duration of a ``with`` block.

    A subclass implements :meth:`_register` (add its hooks to ``hooks``), may name :attr:`exclusive_mark` (an
    attribute set on :meth:`_scope_target` while the scope is active: a second scope with the same mark on the
    same module is refused with :meth:`_busy`), and may override :meth:`_entered` (the value of ``with ... as``)
    and :meth:`_exited` (runs after every hook is removed, with the block's exception type or ``None``).
    """

    exclusive_mark: str | None = None

    def __init__(self) -> None:
        self.hooks = HookSet()

    # -- to implement
    def _register(self, hooks: HookSet) -> None:
        raise NotImplementedError

    def _scope_target(self) -> nn.Module | None:
        return None

    def _busy(self, target: nn.Module) -> Exception:
        return RuntimeError(f"attnlens hooks of this kind are already active on this {type(target).__name__}")

    def _entered(self) -> Any:
        return self

    def _exited(self, exc_type: type[BaseException] | None) -> None:
        pass

    # -- the lifecycle
    def __enter__(self) -> Any:
        target, mark = self._scope_target(), self.exclusive_mark
        if mark is not None and target is not None and getattr(target, mark, False):
            raise self._busy(target)
        try:
            if mark is not None and target is not None:
                target.__dict__[mark] = _HookedMark(f"{type(self).__name__} active")
            self._register(self.hooks)
        except BaseException:
            self._detach()
            raise
        return self._entered()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._detach()
        finally:
            self._exited(exc_type)

    def _detach(self) -> None:
        try:
            self.hooks.remove()
        finally:
            target, mark = self._scope_target(), self.exclusive_mark
            if mark is not None and target is not None:
                target.__dict__.pop(mark, None)


def attnlens_hooks(model: nn.Module) -> list[tuple[str, str]]:
    """``(module name, hook kind)`` of every attnlens hook (by its mark) still registered anywhere in ``model``."""
    found = []
    for name, m in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            for fn in getattr(m, kind, {}).values():
                if getattr(fn, ATTNLENS_MARK, False):
                    found.append((name, kind))
    return found
