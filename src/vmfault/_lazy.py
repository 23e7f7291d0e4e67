"""Lazy package attributes (PEP 562): a package names its public API without importing it.

`import vmfault.faults` must not start loading QEMU's machinery through `vmfault/__init__`,
so packages whose API spans heavy modules resolve each name on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, resolving each name in `exports` (name ->
    module) on first access; AttributeError for any other name."""

    def resolve(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def names() -> list[str]:
        return sorted(exports)

    return resolve, names
