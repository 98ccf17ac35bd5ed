"""Moved to :mod:`vlreward.adapters.trl` (installed without torch); this path warns and forwards."""

from vlreward._moved import forward

__getattr__ = forward(__name__, "vlreward.adapters.trl")
