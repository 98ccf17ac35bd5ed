"""Moved to :mod:`vlreward.client` (installed without torch); this path warns and forwards."""

from vlreward._moved import forward

__getattr__ = forward(__name__, "vlreward.client")
