"""Lazy attributes of a package: a name is imported from its submodule on first use (so that ``import attnlens``
stays cheap and heavy dependencies load only when needed). A leaf module: no attnlens imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(
    package: str, table: dict[str, tuple[str, str | None]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to ``(module, attribute)`` (a module
    path relative to the package when it starts with ``.``; attribute ``None`` for the module itself). A loaded
    value is stored in ``namespace`` (the package's globals), so each name is resolved once; ``dir()`` lists the
    package's ``__all__``."""

    def __getattr__(name: str) -> Any:
        try:
            module, attr = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        mod = importlib.import_module(module, package)
        value = mod if attr is None else getattr(mod, attr)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # the package's __all__ (its public names, lazy ones included)
        return list(namespace.get("__all__", sorted(table)))

    return __getattr__, __dir__
