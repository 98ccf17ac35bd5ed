"""Checkpoints by Hugging Face repo id: downloaded into the hub cache, converted once, then served.

``--model`` (and ``vlreward convert``) take a local directory or a repo id such as
``Skywork/Skywork-VL-Reward-7B`` (revision pinnable with ``--revision``; the token comes from ``HF_TOKEN``
as everywhere in the Hugging Face stack). The snapshot lands in the usual hub cache (``HF_HOME`` /
``HF_HUB_CACHE``); a snapshot that already follows the checkpoint contract is served from there, and a
Skywork-VL-Reward layout is converted once into ``$VLREWARD_HOME/models/hub/<owner>--<name>/<commit>``
(with its probe) and served from that copy on every later start. Offline (``HF_HUB_OFFLINE=1`` or no
network) the cache is used, and a model that is not in it is named in a clear error.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from vlreward.service.model.checkpoint import (
    HEAD_WEIGHT,
    REWARD_ARCHITECTURE,
    CheckpointError,
    checkpoint_tensor_names,
    read_config,
)
from vlreward.service.model.convert import SKYWORK_VALUE_HEAD, convert_skywork
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


def resolve_checkpoint(spec: str, home: Path, revision: str | None = None, probe_device: str = "cpu") -> Path:
    """A servable checkpoint directory for ``spec``: a local directory as is, a repo id via the cache
    (converted once when it is in Skywork's layout)."""
    local = Path(spec).expanduser()
    if local.exists():
        return local
    if not is_repo_id(spec):
        raise CheckpointError(f"{spec}: no such directory, and not a Hugging Face repo id (owner/name)")
    snapshot = download(spec, revision)
    if is_reward_checkpoint(snapshot):
        return snapshot
    if not (snapshot / SKYWORK_VALUE_HEAD).is_file():
        raise CheckpointError(
            f"{spec}: neither a reward checkpoint ({REWARD_ARCHITECTURE} with a head) nor Skywork-VL-Reward's "
            f"layout ({SKYWORK_VALUE_HEAD})"
        )
    destination = converted_dir(home, spec, snapshot)
    return convert_into(snapshot, destination, probe_device)


def is_converted(directory: Path) -> bool:
    """Whether a conversion into ``directory`` finished: its probe is written last, inside a temporary folder
    that is renamed into place only when whole."""
    return (directory / PROBE_FILE).is_file()


def convert_into(source: Path, destination: Path, probe_device: str = "cpu") -> Path:
    """Convert a Skywork-layout directory into ``destination`` with its probe, once; safe for several
    processes converting into one shared volume at the same time (replicas' init containers):

    - a finished conversion (its probe file present) is kept and nothing is done;
    - each process writes its own unique temporary folder beside ``destination`` and renames it into place
      (atomic on one file system); when another process got there first, its copy is kept and ours dropped;
    - a finished model is never deleted, and neither is another process's temporary folder."""
    from vlreward.service.backends.transformers import stamp_reference_probe

    if is_converted(destination):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        convert_skywork(source, partial)
        stamp_reference_probe(partial, device=probe_device)
        try:
            partial.rename(destination)  # replaces an empty folder; fails on a non-empty one
        except OSError:
            if not is_converted(destination):  # neither ours nor a finished one: something else is there
                raise CheckpointError(
                    f"{destination} exists and is not a converted model; remove it or choose another"
                ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when the rename succeeded
    return destination
