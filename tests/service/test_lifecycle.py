"""The service's life: a checkpoint whose probe is off never serves (the start-up check), and the
model's own failures end serving (see test_fault_isolation.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import LiveServer, copy_with_tensors
from vlreward.service.model.checkpoint import HEAD_BIAS


def test_a_checkpoint_whose_probe_is_off_never_becomes_ready(tiny_reward, tmp_path):
    def shift_bias(tensors):
        tensors[HEAD_BIAS] = tensors[HEAD_BIAS] + 0.5  # loads fine; scores 0.5 off what the probe says

    shifted = copy_with_tensors(tiny_reward, tmp_path / "shifted", shift_bias)
    server = LiveServer(model=str(shifted))
    with pytest.raises(RuntimeError, match="start-up of model .* failed.*expected"):
        server.__enter__()
    assert not server.state.is_ready() and "expected" in server.state.failure
    with LiveServer(model=str(tiny_reward)) as intact:  # the same checkpoint, untouched, serves
        assert httpx.get(intact.url + "/ready").status_code == 200
