"""The client and the RLHF adapters moved out of the service package: their old import paths (named in
users' code and verl configs) keep working and warn."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "vlreward.service.client": ("vlreward.client", "RewardClient"),
    "vlreward.service.adapters": ("vlreward.adapters", "__doc__"),
    "vlreward.service.adapters.conversation": ("vlreward.adapters.conversation", "to_messages"),
    "vlreward.service.adapters.trl": ("vlreward.adapters.trl", "VLRewardFunction"),
    "vlreward.service.adapters.verl": ("vlreward.adapters.verl", "compute_score"),
}


@pytest.mark.parametrize("old", list(MOVED))
def test_an_old_path_warns_and_gives_the_same_objects(old, monkeypatch):
    new, name = MOVED[old]
    for module in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        shim = importlib.import_module(old)
    if name != "__doc__":
        assert getattr(shim, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        shim.no_such_name  # noqa: B018
