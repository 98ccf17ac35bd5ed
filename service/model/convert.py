"""Import published reward checkpoints into the contract of :mod:`vlreward.service.model.checkpoint`."""

from __future__ import annotations

from pathlib import Path

from vlreward.service.model.checkpoint import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    SKYWORK_VALUE_HEAD,
    CheckpointError,
    checkpoint_key,
    copy_support_files,
    module_key,
    read_checkpoint_tensors,
    read_config,
    write_reward_config,
    write_weights,
)

SKYWORK_WEIGHT = "v_head.summary.weight"
SKYWORK_BIAS = "v_head.summary.bias"
SOURCES = ("skywork",)


def convert_skywork(source: str | Path, destination: str | Path) -> Path:
    """Skywork-VL-Reward layout (a Qwen2_5_VLForConditionalGeneration directory plus
    ``value_head.safetensors`` with ``v_head.summary.weight/bias``) -> reward checkpoint. Bias kept."""
    from safetensors.torch import load_file

    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise CheckpointError("convert into a new directory, not over the source")
    head_path = source / SKYWORK_VALUE_HEAD
    if not head_path.is_file():
        raise CheckpointError(f"{source}: no {SKYWORK_VALUE_HEAD} (is this a Skywork-VL-Reward checkpoint?)")
    head = load_file(head_path)
    if SKYWORK_WEIGHT not in head:
        raise CheckpointError(f"{head_path}: no tensor named {SKYWORK_WEIGHT!r} (found {sorted(head)})")
    config = read_config(source)
    hidden = config.text_config.hidden_size
    if tuple(head[SKYWORK_WEIGHT].shape) != (1, hidden):
        raise CheckpointError(
            f"{head_path}: {SKYWORK_WEIGHT} has shape {tuple(head[SKYWORK_WEIGHT].shape)}, expected (1, {hidden})"
        )

    tensors = {}
    for name, tensor in read_checkpoint_tensors(source).items():
        key = module_key(name)
        if key is not None:
            tensors[checkpoint_key(key)] = tensor  # canonical on-disk names
    tensors[HEAD_WEIGHT] = head[SKYWORK_WEIGHT].to(tensors[next(iter(tensors))].dtype)
    if SKYWORK_BIAS in head:
        tensors[HEAD_BIAS] = head[SKYWORK_BIAS].reshape(1).to(tensors[HEAD_WEIGHT].dtype)

    copy_support_files(source, destination)
    write_weights(tensors, destination)
    write_reward_config(config, destination)
    return destination
