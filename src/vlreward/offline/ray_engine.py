"""Offline scoring on Ray Data: read → prepare → score → write, resumable, every row exactly once.

The pipeline is a Ray Dataset of the shards still to do (one row per :class:`~vlreward.offline.inputs.Shard`):

1. **prepare** (:class:`ShardPreparer`, CPU workers holding the model's processor): read the shard's rows, check
   them, decode their images, apply the chat template; rows that fail become errors;
2. **score** (:class:`ShardScorer`, a pool of actors each holding one backend on its CPU threads or its GPU):
   score the prepared samples and write the shard's Parquet and errors files whole;
3. the driver records each finished shard in the manifest as results stream back.

Ray Data restarts a dead actor and retries its shard (its files are rewritten under the same names), and a
rerun of the same command skips the shards the manifest holds. Without ``--address`` the command starts a
local Ray with explicit CPU counts, and stops it when done.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlreward.offline.inputs import DEFAULT_SHARD_ROWS, InputSource, Shard
from vlreward.offline.shards import Manifest, prepare_shard, score_prepared, score_shift, write_shard


class RunInterrupted(RuntimeError):
    """The run stopped before every shard finished (Ctrl-C, a signal); the manifest holds the finished ones, so
    rerunning the same command resumes."""


@dataclass
class RayOptions:
    """How the run uses Ray."""

    address: str | None = None
    """A running cluster to join (``ray://...`` or ``auto``); None: start a local Ray."""
    num_cpus: int | None = None
    """A local Ray's CPUs (None: this machine's)."""
    actors: int = 1
    """Scoring actors, each with one backend (one per GPU on a GPU cluster)."""
    actor_gpus: float = 0.0
    """GPUs each scoring actor reserves."""
    preparers: int = 1
    """CPU workers preparing shards ahead of the scorers."""
    threads: int | None = None
    """Torch threads in each scoring actor on the CPU (None: the machine's cores; Ray would give it one)."""


def settings_of(options: dict) -> Any:
    from vlreward.service.settings import Settings

    return Settings(**options)


class ShardPreparer:
    """Ray Data map worker: a shard's rows → a pickled :class:`~vlreward.offline.shards.PreparedShard`."""

    def __init__(self, input_path: str, model_dir: str, settings: dict, media_root: str | None = None):
        from transformers import AutoProcessor

        from vlreward.service.judge import declared_judge
        from vlreward.service.kinds import process_head
        from vlreward.service.media import MediaPolicy

        self.source = InputSource(input_path)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        process = process_head(Path(model_dir))
        self.step_tag = None if process is None else process.step_tag
        parsed = settings_of(settings)
        self.judge = declared_judge(Path(model_dir), parsed.judge)
        # The service's media rules (sizes, URLs), with paths relative to the input's folder (or media_root).
        root = Path(media_root) if media_root else self.source.media_root
        self.policy = dataclasses.replace(MediaPolicy.from_settings(parsed), media_root=root)

    def __call__(self, row: dict) -> dict:
        shard = Shard(**{k: int(row[k]) for k in ("index", "start", "stop", "file", "offset", "line")})
        prepared = prepare_shard(self.source, shard, self.processor, self.policy, self.step_tag, self.judge)
        return {"index": shard.index, "prepared": pickle.dumps(prepared)}


class ShardScorer:
    """Ray Data map worker: one backend; a prepared shard → its files written, and its counts."""

    def __init__(self, output: str, model_dir: str, settings: dict, threads: int | None, adapter: str | None = None):
        import torch

        from vlreward.service.offline import offline_backend, pointwise_judge_check

        if threads:
            torch.set_num_threads(threads)
        self.output = Path(output)
        self.settings = settings_of(settings)
        self.backend = offline_backend(self.settings, Path(model_dir), adapter and Path(adapter))
        pointwise_judge_check(self.backend)

    def __call__(self, row: dict) -> dict:
        prepared = pickle.loads(row["prepared"])
        records, errors = score_prepared(self.backend, prepared, self.settings.max_batch_size)
        write_shard(self.output, prepared.shard.index, records, errors)
        return {"index": prepared.shard.index, "rows": len(records), "errors": len(errors)}


def score_with_ray(
    input_path: Path, output: Path, model_dir: Path, settings: dict, options: RayOptions,
    rows_per_shard: int = DEFAULT_SHARD_ROWS, progress: bool = True, media_root: Path | None = None,
    adapter: Path | None = None,
) -> Manifest:  # fmt: skip
    """Score ``input_path`` into the folder ``output`` with the model in ``model_dir`` (``settings``: the
    backend's settings as keyword arguments), resuming the run the folder holds. Image paths are read under
    ``media_root`` (default: the input's folder). ``adapter``: a LoRA adapter of ``model_dir`` scores instead.
    Returns the manifest (complete unless interrupted)."""
    import ray

    source = InputSource(input_path)
    source.ids()  # every id, duplicates refused, before any work
    shards = source.shards(rows_per_shard)
    model = str(model_dir) if adapter is None else f"{adapter} on {model_dir}"
    manifest = Manifest.open(output, source, model, rows_per_shard, len(shards))
    todo = [shard for shard in shards if shard.index not in manifest.done]
    if todo:
        started = not ray.is_initialized()
        if started:
            if options.address:
                ray.init(address=options.address, log_to_driver=False)
            else:
                ray.init(num_cpus=options.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ended = False  # the run ended, finished or failed, rather than being interrupted
        try:
            _run(todo, source, output, model_dir, settings, options, manifest, progress, media_root, adapter)
            ended = manifest.complete  # Ray Data may end the iteration early on a signal instead of raising
        except KeyboardInterrupt:
            pass  # reported below, as a run that ended early is
        except BaseException:
            ended = True
            raise
        finally:
            # After a signal, Ray's own exit hook shuts it down once the caller has said how to resume: a CI
            # run once saw the process end inside this shutdown with that line never written.
            if started and ended:
                ray.shutdown()
        if not ended:
            raise RunInterrupted(f"interrupted with {len(manifest.done)} of {manifest.shards} shards finished "
                                 f"(in {output}): rerun the same command to resume")  # fmt: skip
    if manifest.complete:
        manifest.collect_errors()
        score_shift(output)
    return manifest


def _run(todo: list[Shard], source: InputSource, output: Path, model_dir: Path, settings: dict, options: RayOptions,
         manifest: Manifest, progress: bool, media_root: Path | None, adapter: Path | None,
         ) -> None:  # fmt: skip
    import ray.data
    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts shards and rows
    context.execution_options.preserve_order = False
    shards = ray.data.from_items([shard.as_dict() for shard in todo], override_num_blocks=len(todo))
    prepared = shards.map(
        ShardPreparer, fn_constructor_kwargs={"input_path": str(source.path), "model_dir": str(model_dir),
                                              "settings": settings, "media_root": media_root and str(media_root)},
        compute=ray.data.ActorPoolStrategy(size=options.preparers), num_cpus=1,
    )  # fmt: skip
    scored = prepared.map(
        ShardScorer, fn_constructor_kwargs={"output": str(output), "model_dir": str(model_dir), "settings": settings,
                                            "threads": options.threads or os.cpu_count(),
                                            "adapter": adapter and str(adapter)},
        compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=1,
        **({"num_gpus": options.actor_gpus} if options.actor_gpus else {}),
    )  # fmt: skip
    total = sum(shard.stop - shard.start for shard in todo)
    with tqdm(total=total, desc="scoring", unit="row", disable=not progress) as bar:
        for result in scored.iter_rows():
            manifest.finish(int(result["index"]), int(result["rows"]), int(result["errors"]))
            bar.update(int(result["rows"]) + int(result["errors"]))
