"""Model kinds: how a checkpoint declares one, who reads it, and the refusal of fields a kind does not accept."""

from __future__ import annotations

import json
import shutil

import pytest

from vlreward.service.errors import ErrorKind, ServiceError
from vlreward.service.kinds import KIND_KEY, SCALAR, ModelKind, UnknownKind, checkpoint_kind, refuse_unaccepted
from vlreward.service.model.checkpoint import CheckpointError, load_reward_model


def _with_kind(source, destination, kind):
    shutil.copytree(source, destination)
    config = json.loads((destination / "config.json").read_text())
    if kind is None:
        config.pop(KIND_KEY)
    else:
        config[KIND_KEY] = kind
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def test_written_checkpoints_declare_scalar_and_an_undeclared_kind_reads_as_scalar(tiny_reward, tmp_path):
    assert json.loads((tiny_reward / "config.json").read_text())[KIND_KEY] == "scalar"
    assert checkpoint_kind(tiny_reward) is SCALAR
    assert checkpoint_kind(_with_kind(tiny_reward, tmp_path / "old", None)) is SCALAR


def test_a_kind_this_version_does_not_serve_is_refused_by_the_loader_and_the_backends(tiny_reward, tmp_path):
    future = _with_kind(tiny_reward, tmp_path / "future", "oracle")
    with pytest.raises(UnknownKind, match="unknown model kind 'oracle'; this version serves scalar"):
        checkpoint_kind(future)
    with pytest.raises(CheckpointError, match="oracle"):
        load_reward_model(future)
    from vlreward.service.backends.transformers import TransformersBackend

    with pytest.raises(ValueError, match="oracle"):
        TransformersBackend(future)


def test_the_backends_report_the_kind(hf_backend):
    assert hf_backend.info()["kind"] == "scalar"


def test_a_field_the_kind_does_not_accept_is_a_400_naming_the_field_and_the_model():
    narrow = ModelKind(name="narrow", score="test", item_fields=frozenset({"prompt", "response"}))
    refuse_unaccepted(narrow, "m", [("prompt", "items[0].prompt")])
    with pytest.raises(ServiceError) as caught:
        refuse_unaccepted(narrow, "m", [("prompt", "items[0].prompt"), ("system", "items[1].system")])
    error = caught.value
    assert (error.kind, error.param) == (ErrorKind.INVALID_REQUEST, "items[1].system")
    assert "model 'm' is a narrow model" in error.message and "`system`" in error.message
    with pytest.raises(ServiceError, match="does not accept `aggregate`") as caught:
        refuse_unaccepted(SCALAR, "m", request_fields=["aggregate"])
    assert caught.value.param == "aggregate"


def test_a_process_checkpoint_declares_its_head_and_passes_the_vllm_backends_checks(tiny_process):
    from vlreward.service.backends.vllm import require_reward_head
    from vlreward.service.kinds import PROCESS, ProcessHead, process_head

    assert checkpoint_kind(tiny_process) is PROCESS and process_head(tiny_process) == ProcessHead()
    require_reward_head(tiny_process)  # the vLLM backend serves process models (tests/service/backends/test_vllm.py)


def test_a_process_probe_holds_every_step_and_a_changed_head_fails_it(tiny_process, tmp_path):
    from tests.helpers import copy_with_tensors
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.checkpoint import HEAD_WEIGHT
    from vlreward.service.model.probe import ProbeMismatch, read_probe

    probe = read_probe(tiny_process)
    assert len(probe.step_scores) == len(probe.sample["steps"]) == 2 and probe.score == probe.step_scores[-1]
    assert TransformersBackend(tiny_process).check_probe() == pytest.approx(probe.score, abs=1e-5)
    shifted = copy_with_tensors(tiny_process, tmp_path / "shifted", lambda t: t[HEAD_WEIGHT].mul_(1.5))
    with pytest.raises(ProbeMismatch):
        TransformersBackend(shifted).check_probe()
