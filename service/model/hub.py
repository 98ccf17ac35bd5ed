"""Checkpoints by Hugging Face repo id: the snapshot in the hub cache, and where a converted copy lives.

``--model`` (and ``vlreward convert``) take a local directory or a repo id such as
``Skywork/Skywork-VL-Reward-7B`` (revision pinnable with ``--revision``; the token comes from ``HF_TOKEN``
as everywhere in the Hugging Face stack). The snapshot lands in the usual hub cache (``HF_HOME`` /
``HF_HUB_CACHE``). Offline (``HF_HUB_OFFLINE=1`` or no network) the cache is used, and a model that is not
in it is named in a clear error. Turning a snapshot into a servable checkpoint (converting Skywork's layout
once and stamping its probe) is :mod:`vlreward.service.resolve`, above the backends it stamps with.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlreward.service.model.checkpoint import (
    HEAD_WEIGHT,
    REWARD_ARCHITECTURE,
    CheckpointError,
    checkpoint_tensor_names,
    read_config,
)
from vlreward.service.model.probe import PROBE_FILE

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# What serving needs from a repository (no other weight formats, no images of its README, no remote code).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]


def is_repo_id(spec: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(_REPO_ID.match(spec)) and not Path(spec).expanduser().exists()


def download(repo_id: str, revision: str | None = None) -> Path:
    """The repository's snapshot in the hub cache (downloaded when missing and the hub is reachable)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=SNAPSHOT_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be reached "
            f"(offline: HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}); download it where there is network "
            f"(`hf download {repo_id}`) and copy the cache, or pass a local directory"
        ) from exc
    except GatedRepoError as exc:
        raise CheckpointError(f"{where} is gated: accept its terms on the hub and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"{where}: no such repository on the hub (or it is private: set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{where}: no such revision") from exc


def is_reward_checkpoint(directory: Path) -> bool:
    """Whether a directory already follows the checkpoint contract (architecture and head)."""
    config = read_config(directory)
    return REWARD_ARCHITECTURE in (config.architectures or []) and HEAD_WEIGHT in checkpoint_tensor_names(directory)


def converted_dir(home: Path, repo_id: str, snapshot: Path) -> Path:
    """Where a repository's snapshot is converted to: one folder per commit."""
    return home.expanduser() / "models" / "hub" / repo_id.replace("/", "--") / snapshot.name


def is_converted(directory: Path) -> bool:
    """Whether a conversion into ``directory`` finished: its probe is written last, inside a temporary folder
    that is renamed into place only when whole."""
    return (directory / PROBE_FILE).is_file()
