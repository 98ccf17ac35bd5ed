"""One shard's work (prepare its rows, score them, write them) and the manifest of a run's finished shards.

Output folder of a run::

    manifest.jsonl        the input (path, sha256), the model, rows per shard; then a line per finished shard
    part-00000.parquet    shard 0's scored rows: the input's columns, then id, score and the kind's details
    errors-00000.jsonl    shard 0's rows that could not be scored: {"id", "reason"}
    errors.jsonl          every shard's errors, in shard order (written when the run completes)

A shard's files are written whole (a temporary name, then renamed) before the manifest records the shard, so
an interrupted run loses at most the shards in flight, and a rerun writes those again under the same names:
every input row ends up exactly once, in a part file or in ``errors.jsonl``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlreward.offline.inputs import IMAGE_FIELDS, InputSource, Shard, image_reference

MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
MANIFEST_VERSION = 1


class ResumeError(ValueError):
    """The output folder holds a run of another input, model or shard size; the message says which."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def errors_name(index: int) -> str:
    return f"errors-{index:05d}.jsonl"


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or is untouched (a temporary file, then an atomic rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass
class PreparedShard:
    """A shard's rows made ready for a backend: the ones that prepared (ids, input columns, formatted samples)
    and the ones that did not (id and reason)."""

    shard: Shard
    ids: list[str] = field(default_factory=list)
    columns: list[dict] = field(default_factory=list)
    formatted: list[Any] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def sample_fields(columns: dict) -> dict:
    """The row's columns the Sample schema reads (its images as references); the rest are only kept."""
    from vlreward.service.schemas import Sample

    fields = {k: v for k, v in columns.items() if k in Sample.model_fields and k != "id" and v is not None}
    for name in IMAGE_FIELDS:
        if name in fields:
            value = fields[name]
            fields[name] = [image_reference(v) for v in value] if isinstance(value, list) else image_reference(value)
    return fields


def reason_of(exc: ValidationError) -> str:
    """A validation error as one line naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "row"
    return f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def prepare_shard(source: InputSource, shard: Shard, processor: Any, policy: Any, step_tag: str | None,
                  judge: Any) -> PreparedShard:  # fmt: skip
    """Read the shard's rows, check them and decode their images, and format each for the model (the chat
    template; a process model's step tags; a judge's pointwise question). Rows that fail land in ``errors``."""
    from vlreward.service.media import MediaError
    from vlreward.service.prepare import prepare_sample
    from vlreward.service.schemas import Sample

    prepared = PreparedShard(shard)
    for row in source.rows(shard):
        if row.problem is not None:
            prepared.errors.append({"id": row.id, "reason": row.problem})
            continue
        try:
            sample = Sample.model_validate(sample_fields(row.columns))
            formatted = prepare_sample(sample, processor, policy, step_tag=step_tag, judge=judge)
        except ValidationError as exc:
            prepared.errors.append({"id": row.id, "reason": reason_of(exc)})
            continue
        except MediaError as exc:
            prepared.errors.append({"id": row.id, "reason": f"{exc.param or 'image'}: {exc.message}"})
            continue
        prepared.ids.append(row.id)
        prepared.columns.append(row.columns)
        prepared.formatted.append(formatted)
    return prepared


def score_prepared(backend: Any, prepared: PreparedShard, batch_size: int) -> tuple[list[dict], list[dict]]:
    """Score a prepared shard: its output records (input columns, then id, score, details) and its errors
    (the preparation's, and any sample the engine refuses, found by scoring a refused batch one by one)."""
    from vlreward.service.errors import ServiceError
    from vlreward.service.offline import score_record

    records, errors = [], list(prepared.errors)
    for start in range(0, len(prepared.formatted), batch_size):
        batch = prepared.formatted[start : start + batch_size]
        try:
            scores: list[Any] = backend.score_sync(batch)
        except ServiceError:  # one sample the engine refuses (too long for it): find it, keep the others
            scores = []
            for position, sample in enumerate(batch):
                try:
                    scores.append(backend.score_sync([sample])[0])
                except ServiceError as exc:
                    scores.append(exc)
                    errors.append({"id": prepared.ids[start + position], "reason": str(exc)})
        for offset, score in enumerate(scores):
            if isinstance(score, Exception):
                continue
            index = start + offset
            records.append(prepared.columns[index] | {"id": prepared.ids[index]} | score_record(backend, score))
    return records, errors


def column_array(values: list) -> Any:
    """One output column: Arrow's type for the values, or, when Arrow cannot type them (a chat message's
    ``content`` that is text in one row and a list of parts in another), each value as JSON text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if value is None else json.dumps(value) for value in values], type=pa.string())


def write_shard(output: Path, index: int, records: list[dict], errors: list[dict]) -> None:
    """Shard ``index``'s part file (when it has rows) and errors file, each written whole."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    output.mkdir(parents=True, exist_ok=True)
    if records:
        buffer = io.BytesIO()
        names = list(dict.fromkeys(name for record in records for name in record))  # every row's columns, in order
        columns = {name: column_array([r.get(name) for r in records]) for name in names}
        pq.write_table(pa.Table.from_pydict(columns), buffer)
        write_atomically(output / part_name(index), buffer.getvalue())
    write_atomically(output / errors_name(index), "".join(json.dumps(e) + "\n" for e in errors).encode())


@dataclass
class Manifest:
    """What a run scores and which of its shards are finished: ``manifest.jsonl`` in the output folder, a header
    line, then one line appended per finished shard (so recording a shard costs the same in a run of 25,000
    shards as in one of ten; a line cut short by a crash is ignored, and its shard is done again)."""

    path: Path
    input: str
    input_sha256: str
    model: str
    rows_per_shard: int
    shards: int
    done: dict[int, dict] = field(default_factory=dict)
    """Shard index -> {"rows": scored rows, "errors": rows in its errors file}."""

    @classmethod
    def open(cls, output: Path, source: InputSource, model: str, rows_per_shard: int, shards: int) -> Manifest:
        """The output folder's manifest: a new run's, or the run it holds when that run scores the same input
        (its bytes), model and shard size (anything else is refused, naming it)."""
        output.mkdir(parents=True, exist_ok=True)
        path = output / MANIFEST
        wanted = cls(path, str(source.path), source.digest(), model, rows_per_shard, shards)
        if not path.exists():
            header = {"version": MANIFEST_VERSION, "input": wanted.input, "input_sha256": wanted.input_sha256,
                      "model": model, "rows_per_shard": rows_per_shard, "shards": shards}  # fmt: skip
            write_atomically(path, (json.dumps(header) + "\n").encode())
            return wanted
        held, done = read_manifest(output)
        for name, label in (("input_sha256", "the input's contents"), ("model", "the model"),
                            ("rows_per_shard", "the rows per shard")):  # fmt: skip
            if held[name] != getattr(wanted, name):
                raise ResumeError(f"{output} holds a run whose {label} differ ({held[name]!r}, now "
                                  f"{getattr(wanted, name)!r}): give a new output folder")  # fmt: skip
        wanted.done = done
        return wanted

    def finish(self, index: int, rows: int, errors: int) -> None:
        """Record shard ``index`` as finished (its files are already written): one line appended."""
        self.done[index] = {"rows": rows, "errors": errors}
        with self.path.open("a") as out:
            out.write(json.dumps({"shard": index, "rows": rows, "errors": errors}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    @property
    def complete(self) -> bool:
        return len(self.done) == self.shards

    def collect_errors(self) -> int:
        """Join the shards' errors into ``errors.jsonl``, in shard order; the number of errors."""
        output = self.path.parent
        lines = []
        for index in range(self.shards):
            part = output / errors_name(index)
            if part.exists():
                lines += [line for line in part.read_text().splitlines() if line]
        write_atomically(output / ERRORS, "".join(line + "\n" for line in lines).encode())
        return len(lines)


def read_manifest(output: Path) -> tuple[dict, dict[int, dict]]:
    """An output folder's manifest: its header, and its finished shards (index -> rows, errors)."""
    lines = (output / MANIFEST).read_text().splitlines()
    header, done = json.loads(lines[0]), {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:  # the line a crash cut short: that shard is done again
            continue
        done[int(entry["shard"])] = {"rows": entry["rows"], "errors": entry["errors"]}
    return header, done


SHIFT = "shift.json"
CAPTURED = "captured_score"
"""The column a traffic capture stores each request's score in (:mod:`vlreward.service.capture`)."""


def score_shift(output: Path) -> dict | None:
    """For an input that carries scores from before (a traffic capture's ``captured_score``): how the new
    scores moved, written to ``shift.json`` (rows, mean and median of new − old, Pearson and Spearman
    correlation) with a scatter plot ``shift.png`` when matplotlib is installed. None: no such column."""
    import numpy as np

    table = read_output(output)
    if CAPTURED not in table.column_names or "score" not in table.column_names:
        return None
    pairs = [(old, new) for old, new in zip(table[CAPTURED].to_pylist(), table["score"].to_pylist(), strict=True)
             if old is not None and new is not None]  # fmt: skip
    if len(pairs) < 2:
        return None
    old, new = np.array(pairs, dtype=float).T
    delta = new - old
    ranks = [np.argsort(np.argsort(values)) for values in (old, new)]
    shift = {
        "rows": len(pairs), "mean_shift": float(delta.mean()), "median_shift": float(np.median(delta)),
        "mean_abs_shift": float(np.abs(delta).mean()), "pearson": float(np.corrcoef(old, new)[0, 1]),
        "spearman": float(np.corrcoef(*ranks)[0, 1]),
    }  # fmt: skip
    write_atomically(output / SHIFT, (json.dumps(shift, indent=1) + "\n").encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return shift
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(old, new, s=6, alpha=0.5)
    title = f"{len(pairs)} rows: shift {shift['mean_shift']:+.3f}, Spearman {shift['spearman']:.3f}"
    axes.set(xlabel="captured score", ylabel="new score", title=title)
    figure.tight_layout()
    figure.savefig(output / "shift.png", dpi=100)
    plt.close(figure)
    return shift


def read_output(output: str | Path) -> Any:
    """A finished run's scored rows as one pyarrow Table, in shard order (columns a shard lacks, or holds only
    nulls in, are unified across shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(Path(output).glob("part-*.parquet"))
    tables = [pq.read_table(part) for part in parts]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")
