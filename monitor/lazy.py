"""Names a package loads on first use (so that importing it stays cheap)."""

from __future__ import annotations

from importlib import import_module
from typing import Any


def lazy_attribute(package: str, exports: dict[str, str], name: str) -> Any:
    """``package``'s attribute ``name``, imported from its module in ``exports`` (name ->
    module relative to ``package``); AttributeError for any other name."""
    if name not in exports:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(import_module(exports[name], package), name)
