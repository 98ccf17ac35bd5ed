"""Old import paths kept working for a while: a module that moved leaves a shim that warns and forwards."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward(old: str, new: str) -> Callable[[str], Any]:
    """Warn that ``old`` moved to ``new`` and return a module ``__getattr__`` that reads ``new``'s names."""
    warnings.warn(
        f"{old} moved to {new}: import {new} instead ({old} will be removed)", DeprecationWarning, stacklevel=3
    )
    module = importlib.import_module(new)

    def __getattr__(name: str) -> Any:
        return getattr(module, name)

    return __getattr__
