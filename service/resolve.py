"""``--model`` -> a servable checkpoint directory: a local directory as is; a Hugging Face repo id through
the hub cache, served from the snapshot when it already follows the checkpoint contract, else (Skywork-VL-
Reward's layout) converted once into ``$VLREWARD_HOME/models/hub/<owner>--<name>/<commit>`` with its probe
and served from that copy on every later start. Above the backends: stamping a probe runs the float32
transformers model (:func:`~vlreward.service.backends.transformers.stamp_reference_probe`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vlreward.service.backends.transformers import stamp_reference_probe
from vlreward.service.model.checkpoint import REWARD_ARCHITECTURE, SKYWORK_VALUE_HEAD, CheckpointError
from vlreward.service.model.convert import convert_skywork
from vlreward.service.model.hub import converted_dir, download, is_converted, is_repo_id, is_reward_checkpoint


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


def convert_into(source: Path, destination: Path, probe_device: str = "cpu") -> Path:
    """Convert a Skywork-layout directory into ``destination`` with its probe, once; safe for several
    processes converting into one shared volume at the same time (replicas' init containers):

    - a finished conversion (its probe file present) is kept and nothing is done;
    - each process writes its own unique temporary folder beside ``destination`` and renames it into place
      (atomic on one file system); when another process got there first, its copy is kept and ours dropped;
    - a finished model is never deleted, and neither is another process's temporary folder."""
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
