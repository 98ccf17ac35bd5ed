"""The checkpoint contract: how a reward model is laid out on disk, saved and loaded.

A reward checkpoint is a Hugging Face directory with
- ``config.json``: a Qwen2.5-VL config, ``architectures: ["Qwen2_5_VLForSequenceClassification"]``,
  ``num_labels: 1`` (a multi-head model: ``num_labels`` K, ``id2label`` its head names and
  ``vlreward_heads``, see :class:`~vlreward.service.kinds.Heads`);
- safetensors weights: the backbone under the names transformers writes for
  ``Qwen2_5_VLForConditionalGeneration`` (old ``model.layers.*``/``visual.*`` or new
  ``model.language_model.*``/``model.visual.*``; both load) and the head as
  ``language_model.score.weight`` (+ optional ``language_model.score.bias``), the names vLLM loads;
- tokenizer, chat template and image-processor files;
- ``vlreward_probe.json`` (see :mod:`vlreward.service.model.probe`).
Loading refuses a checkpoint whose head is missing or whose weights do not all fit the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlreward.service.judge import JudgeDeclaration, JudgeError, verdict_token_ids
from vlreward.service.kinds import (
    PROCESS,
    SCALAR,
    Heads,
    ModelKind,
    ProcessHead,
    UnknownKind,
    checkpoint_heads,
    checkpoint_kind,
    declare_kind,
)

REWARD_ARCHITECTURE = "Qwen2_5_VLForSequenceClassification"
BASE_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
SKYWORK_VALUE_HEAD = "value_head.safetensors"
"""Skywork-VL-Reward's published head file (``v_head.summary.weight/bias``): converted, never loaded as weights."""
HEAD_WEIGHT = "language_model.score.weight"
HEAD_BIAS = "language_model.score.bias"
REWARD_LABEL = "LABEL_0"
"""The one label of the head (config ``id2label``; vLLM's /classify answers it)."""
WEIGHTS_NAME = "model.safetensors"
MAX_SHARD_SIZE = "5GB"
HASH_CACHE = "vlreward_hash.json"
"""The checkpoint's content hash, cached (see :func:`checkpoint_hash`)."""
# Files that hold weights or the config; everything else in a checkpoint directory (tokenizer,
# chat template, processor, probe) is carried over verbatim by conversions.
_WEIGHT_FILE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    HASH_CACHE,
)


class CheckpointError(ValueError):
    """The directory does not satisfy the checkpoint contract; the message says what is wrong."""


def module_key(checkpoint_key: str) -> str | None:
    """Map a checkpoint tensor name to the reward model's parameter name (None: not used)."""
    if checkpoint_key == HEAD_WEIGHT:
        return "score.weight"
    if checkpoint_key == HEAD_BIAS:
        return "score.bias"
    if checkpoint_key.startswith("lm_head."):
        return None  # the generation head is not part of a reward model
    if checkpoint_key.startswith("visual."):
        return "model." + checkpoint_key
    if checkpoint_key.startswith(("model.visual.", "model.language_model.")):
        return checkpoint_key
    if checkpoint_key.startswith("model."):
        return "model.language_model." + checkpoint_key.removeprefix("model.")
    return checkpoint_key  # unknown: reported as unexpected by the loader


def checkpoint_key(module_key_: str) -> str:
    """Map a reward-model parameter name to its name on disk (what save_pretrained writes + the head)."""
    if module_key_.startswith("score."):
        return "language_model." + module_key_
    if module_key_.startswith("model.visual."):
        return module_key_.removeprefix("model.")
    if module_key_.startswith("model.language_model."):
        return "model." + module_key_.removeprefix("model.language_model.")
    return module_key_


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory (sharded or not), in a stable order."""
    index = directory / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    files = sorted(p for p in directory.glob("*.safetensors") if p.name != SKYWORK_VALUE_HEAD)
    if not files:
        raise CheckpointError(f"{directory}: no safetensors weights found")
    return files


def read_checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint under their on-disk names (small models and conversions only)."""
    return dict(iter_checkpoint_tensors(directory))


def iter_checkpoint_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint's tensors one at a time, in file order: a 7B checkpoint never sits in memory whole."""
    from safetensors import safe_open

    for path in weight_files(directory):
        with safe_open(path, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, handle.get_tensor(name)


def checkpoint_tensor_names(directory: Path) -> set[str]:
    """The tensor names of a checkpoint, read from the safetensors headers only."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in weight_files(directory):
        with safe_open(path, "pt") as handle:
            names.update(handle.keys())
    return names


def read_config(directory: str | Path) -> Any:
    """The Qwen2.5-VL config of a checkpoint or base directory."""
    from transformers import Qwen2_5_VLConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no config.json (not a model directory)")
    config = Qwen2_5_VLConfig.from_pretrained(directory)
    if config.text_config.pad_token_id is None:
        # Batches larger than one need the pad id on the text config (not only the top level).
        config.text_config.pad_token_id = config.text_config.eos_token_id
    return config


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point tensors in ``dtype`` inside the block (parameters are born in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    config: Any,
    head_bias: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    outputs: int = 1,
    head_index: list[int] | None = None,
) -> Any:
    """An uninitialised reward model, its backbone allocated in ``dtype`` on ``device`` (weights are
    loaded right after, so no random init is run and no float32 copy of a 16-bit model ever exists).
    The head stays float32 (see :class:`Qwen2_5_VLRewardModel`)."""
    from transformers.initialization import no_init_weights

    from vlreward.service.model.reward_model import Qwen2_5_VLRewardModel

    with no_init_weights(), torch.device(device), default_dtype(dtype):
        return Qwen2_5_VLRewardModel(config, head_bias=head_bias, outputs=outputs, head_index=head_index)


def load_weights(
    model: Any, tensors: Iterable[tuple[str, torch.Tensor]], source: Path, allow_missing_head: bool = False
) -> None:
    """Copy on-disk tensors, one at a time, into the model's parameters (converting to their dtype and
    device); refuse missing, unexpected or misshapen weights by name."""
    targets = model.state_dict()
    loaded: set[str] = set()
    unexpected: list[str] = []
    misshapen: list[str] = []
    with torch.no_grad():
        for name, tensor in tensors:
            key = module_key(name)
            if key is None:
                continue
            target = targets.get(key)
            if target is None:
                unexpected.append(name)
            elif target.shape != tensor.shape:
                misshapen.append(f"{name} {tuple(tensor.shape)} != {tuple(target.shape)}")
            else:
                target.copy_(tensor)
                loaded.add(key)
    missing = [k for k in targets if k not in loaded and not (allow_missing_head and k.startswith("score."))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {', '.join(checkpoint_key(k) for k in missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:5])})")
    if misshapen:
        problems.append(f"{len(misshapen)} weights of the wrong shape (e.g. {', '.join(misshapen[:3])})")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(problems))


ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


def step_tag_id(tokenizer: Any, step_tag: str) -> int:
    """The token id of a process model's step tag: one token of the checkpoint's tokenizer, or the
    checkpoint does not satisfy the contract."""
    ids = tokenizer(step_tag, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CheckpointError(f"step tag {step_tag!r} is {len(ids)} tokens of this tokenizer; it must be one token")
    return int(ids[0])


def load_reward_model(
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    judge: JudgeDeclaration | None = None,
) -> tuple[Any, Any]:
    """Load a reward checkpoint and its processor: the model is built in ``dtype`` on ``device`` and the
    weights streamed in one tensor at a time. Refuses a missing head or any weight mismatch. With
    ``judge``, a generative checkpoint whose head becomes its LM head's rows for the verdict tokens."""
    from transformers import AutoProcessor

    directory = Path(directory)
    config = read_config(directory)
    try:
        checkpoint_kind(directory)
    except UnknownKind as exc:
        raise CheckpointError(str(exc)) from None
    architectures = config.architectures or []
    names = checkpoint_tensor_names(directory)
    if judge is not None:
        require_generative(directory, config, names)
    elif REWARD_ARCHITECTURE not in architectures:
        raise CheckpointError(
            f"{directory}: config architectures are {architectures}, not [{REWARD_ARCHITECTURE!r}] "
            "(a base model? convert it with `vlreward convert`, train a head first, or serve it as a judge "
            "with the `judge` setting)"
        )
    elif HEAD_WEIGHT not in names:
        raise CheckpointError(f"{directory}: the reward head is missing (no tensor named {HEAD_WEIGHT!r})")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise CheckpointError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise CheckpointError("attn_implementation flash_attention_2 needs the flash-attn package; it is not installed")
    config._attn_implementation = attn_implementation
    processor = AutoProcessor.from_pretrained(directory)
    if judge is None:
        heads = checkpoint_heads(directory)
        outputs = 1 if heads is None else len(heads.names)
        model = build_model(config, head_bias=HEAD_BIAS in names, device=device, dtype=dtype, outputs=outputs)
        load_weights(model, iter_checkpoint_tensors(directory), directory)
    else:
        model = build_judge_model(config, judge, processor.tokenizer, device, dtype, directory)
        load_weights(model, iter_checkpoint_tensors(directory), directory, allow_missing_head=True)
        load_verdict_rows(model, directory, names, model.verdict_ids)
    if attn_implementation == "sdpa":
        from vlreward.service.model.causal_attention import use_blocked_causal_attention
        from vlreward.service.model.vision_attention import use_windowed_vision_attention

        use_windowed_vision_attention(model.model.visual)  # one sdpa call per window size, not per window
        use_blocked_causal_attention(model.model.language_model)  # CPU: no work on the masked-out half
    model.eval()
    return model, processor


LM_HEAD_WEIGHT = "lm_head.weight"


def build_judge_model(
    config: Any, judge: JudgeDeclaration, tokenizer: Any, device: Any, dtype: torch.dtype, source: Path
) -> Any:
    """An uninitialised judge: its head has one row per distinct verdict token (``model.verdict_ids``) and
    its outputs are the declaration's verdict tokens in order."""
    try:
        ids = verdict_token_ids(judge, tokenizer)
    except JudgeError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    distinct = list(dict.fromkeys(ids))
    index = [distinct.index(token) for token in ids]
    model = build_model(config, head_bias=False, device=device, dtype=dtype, outputs=len(distinct), head_index=index)
    model.verdict_ids = distinct
    return model


def require_generative(directory: Path, config: Any, names: set[str]) -> None:
    """A judge is a generative checkpoint: its LM head is a tensor, or its input embeddings (tied)."""
    architectures = config.architectures or []
    if BASE_ARCHITECTURE not in architectures:
        raise CheckpointError(
            f"{directory}: a judge is a generative checkpoint ({BASE_ARCHITECTURE}); its architectures are "
            f"{architectures}"
        )
    tied = config.tie_word_embeddings or config.text_config.tie_word_embeddings
    if LM_HEAD_WEIGHT not in names and not tied:
        raise CheckpointError(f"{directory}: the LM head is missing (no tensor named {LM_HEAD_WEIGHT!r}, not tied)")


def load_verdict_rows(model: Any, directory: Path, names: set[str], token_ids: list[int]) -> None:
    """Copy the LM head's rows of the (distinct) verdict tokens into the judge's head (read row by row from disk: a
    7B LM head is 545M numbers, the head 2 to 128 rows); tied checkpoints' rows are the input embeddings'."""
    from safetensors import safe_open

    rows = []
    if LM_HEAD_WEIGHT in names:
        for path in weight_files(directory):
            with safe_open(path, "pt") as handle:
                if LM_HEAD_WEIGHT in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    head = handle.get_slice(LM_HEAD_WEIGHT)
                    rows = [head[token : token + 1] for token in token_ids]
    else:
        embeddings = model.model.get_input_embeddings().weight
        rows = [embeddings[token : token + 1] for token in token_ids]
    with torch.no_grad():
        model.score.weight.copy_(torch.cat([row.to(model.score.weight) for row in rows]))


def load_lm_head(model: Any, directory: Path, names: set[str]) -> torch.Tensor:
    """A generative checkpoint's whole LM head, [vocab, hidden], in the backbone's dtype and on its device
    (a judge's generate mode; tied checkpoints: the input embeddings themselves, shared, not copied)."""
    from safetensors import safe_open

    embeddings = model.model.get_input_embeddings().weight
    if LM_HEAD_WEIGHT not in names:
        return embeddings.detach()
    for path in weight_files(directory):
        with safe_open(path, "pt") as handle:
            if LM_HEAD_WEIGHT in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return handle.get_tensor(LM_HEAD_WEIGHT).to(device=embeddings.device, dtype=embeddings.dtype)
    raise CheckpointError(f"{directory}: no tensor named {LM_HEAD_WEIGHT!r} in its weight files")


def save_reward_model(
    model: Any, processor: Any, directory: str | Path, process: ProcessHead | None = None, heads: Heads | None = None
) -> Path:
    """Write a model + processor as a reward checkpoint (weights in the model's dtype); with ``process``,
    a process model whose head is read at that step tag; with ``heads``, a multi-head model (its head has one
    output per name)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    outputs = model.score.weight.shape[0]
    if outputs != (1 if heads is None else len(heads.names)):
        raise CheckpointError(f"the model's head has {outputs} outputs; declared heads: {heads}")
    state = {checkpoint_key(k): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_weights(state, directory)
    write_reward_config(model.config, directory, SCALAR if process is None else PROCESS, process, heads)
    processor.save_pretrained(directory)
    return directory


def write_weights(state: dict[str, torch.Tensor], directory: Path) -> None:
    """Write tensors (on-disk names) as safetensors, sharded like transformers does for big models."""
    from huggingface_hub import save_torch_state_dict

    for stale in directory.glob("*.safetensors*"):
        stale.unlink()
    save_torch_state_dict(state, directory, max_shard_size=MAX_SHARD_SIZE)


def write_reward_config(
    config: Any, directory: Path, kind: ModelKind = SCALAR, process: ProcessHead | None = None,
    heads: Heads | None = None,
) -> None:  # fmt: skip
    """Write config.json with the reward architecture, its labels (one, or a multi-head model's head names)
    and the model's kind (a process model's with its :class:`~vlreward.service.kinds.ProcessHead`)."""
    data = declare_kind(config.to_dict(), kind, process, heads=heads)
    labels = [REWARD_LABEL] if heads is None else list(heads.names)
    data["architectures"] = [REWARD_ARCHITECTURE]
    data["num_labels"] = len(labels)
    data["id2label"] = {str(k): label for k, label in enumerate(labels)}
    data["label2id"] = {label: k for k, label in enumerate(labels)}
    (directory / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_support_files(source: Path, destination: Path) -> None:
    """Copy tokenizer, chat-template and processor files (everything but weights and config)."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if not path.is_file() or path.name == "config.json":
            continue
        if any(path.match(pattern) for pattern in _WEIGHT_FILE_PATTERNS):
            continue
        shutil.copy2(path, destination / path.name)


def _file_stamps(files: list[Path]) -> list[list]:
    """Name, size and modification time of each file: what the cached hash is keyed by."""
    stamps = []
    for path in files:
        stat = path.stat()
        stamps.append([path.name, stat.st_size, stat.st_mtime_ns])
    return stamps


def _hash_cache_paths(directory: Path) -> list[Path]:
    """Beside the weights, or (read-only model volumes) under the vlreward home, keyed by the path."""
    home = Path(os.environ.get("VLREWARD_HOME", "~/.cache/vlreward")).expanduser()
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return [directory / HASH_CACHE, home / "hashes" / f"{key}.json"]


def checkpoint_hash(directory: str | Path) -> str:
    """A short content hash of the weights and config (for /info and evaluation outputs).

    It is a true content hash, computed once (a 7B checkpoint is ~16 GB) and cached beside the
    weights (or under the vlreward home when the folder is read-only), keyed by every file's name,
    size and modification time: a later start reads only the cache and the files' metadata.
    """
    directory = Path(directory)
    files = [directory / "config.json", *weight_files(directory)]
    stamps = _file_stamps(files)
    caches = _hash_cache_paths(directory)
    for cache in caches:
        try:
            cached = json.loads(cache.read_text())
        except (OSError, ValueError):
            continue
        if cached.get("files") == stamps and isinstance(cached.get("hash"), str):
            return cached["hash"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 (used at once)
                digest.update(block)
    value = digest.hexdigest()[:16]
    for cache in caches:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"hash": value, "files": stamps}, indent=2) + "\n")
            break
        except OSError:
            continue
    return value


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def model_name(directory: str | Path) -> str:
    """A display name for a checkpoint: its folder name, or for a folder named by a commit (a Hugging Face
    snapshot, or its conversion) the repository's name."""
    path = Path(directory).resolve()
    if _COMMIT.match(path.name):
        parent = path.parent.parent if path.parent.name == "snapshots" else path.parent
        return _SAFE_NAME.sub("-", parent.name.split("--")[-1]) or "model"
    return _SAFE_NAME.sub("-", path.name) or "model"
