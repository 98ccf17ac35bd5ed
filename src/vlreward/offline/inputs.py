"""Input rows for offline scoring: a JSONL or Parquet file, a folder of them (one format; files in name
order, e.g. a traffic capture), or a Hugging Face ``datasets`` folder (``save_to_disk``).

Every row has an id: its ``id`` column, or ``<file name>:<line>`` (JSONL: the line number; Parquet and
datasets: the row number, from 1). Duplicate ids are refused before any work starts. Work is split into
:class:`Shard` s our code defines (one file, a row range), so the output and the manifest do not depend on how
an engine splits data. Images may be data URIs, paths (relative to the input's folder), URLs or bytes (a
binary column, or a ``datasets`` Image feature); bytes are handed on as base64.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "parquet", "datasets")
DEFAULT_SHARD_ROWS = 256
"""Rows per shard: small enough that an interrupted run loses little, large enough to batch well."""
IMAGE_FIELDS = ("image", "images")


class InputFileError(ValueError):
    """The input cannot be read as a whole (unknown format, duplicate ids); the message says where."""


@dataclass(frozen=True)
class Shard:
    """Rows ``start`` (inclusive) to ``stop`` (exclusive) of the input's file ``file``, by position among its
    rows (a shard never spans files)."""

    index: int
    start: int
    stop: int
    file: int = 0
    offset: int = 0
    """JSONL: the byte offset of row ``start``'s line."""
    line: int = 0
    """JSONL: row ``start``'s line number (rows are non-empty lines; ids fall back to line numbers)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Row:
    """One input row: its id, its columns as given (None: a line that is not a JSON object), and why it cannot
    be read (None: it can)."""

    id: str
    columns: dict[str, Any] | None
    problem: str | None = None


SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def input_format(path: Path) -> str:
    """A file's (or a ``datasets`` folder's) format, from what ``path`` is."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "datasets"
        raise InputFileError(f"{path}: a folder input holds JSONL or Parquet files, or is a datasets folder")
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if path.suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputFileError(f"{path}: unknown input format (choose a .jsonl or .parquet file or a datasets folder)")


def input_files(path: Path) -> list[Path]:
    """The files (or the one ``datasets`` folder) an input path stands for."""
    if not path.exists():
        raise InputFileError(f"{path}: no such input")
    if path.is_file() or input_format_or_none(path) == "datasets":
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    formats = {SUFFIXES[p.suffix] for p in files}
    if not files:
        raise InputFileError(f"{path}: a folder input holds JSONL or Parquet files, or is a datasets folder")
    if len(formats) > 1:
        raise InputFileError(f"{path}: the folder mixes JSONL and Parquet files; give one format")
    return files


def input_format_or_none(path: Path) -> str | None:
    try:
        return input_format(path)
    except InputFileError:
        return None


class InputSource:
    """An input (a file, a folder of files, a ``datasets`` folder): its rows' ids, its shards, its rows by
    shard, its hash."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.files = [InputFile(file) for file in input_files(self.path)]

    @property
    def media_root(self) -> Path:
        """Image paths are relative to the input's folder."""
        return self.path if self.path.is_dir() else self.path.parent

    def ids(self) -> list[str]:
        """Every row's id, in order; duplicate ids are refused (naming one and where it is)."""
        ids, seen = [], {}
        for file in self.files:
            for position, row_id in enumerate(file.ids()):
                if row_id in seen:
                    where, first = seen[row_id]
                    raise InputFileError(
                        f"{self.path}: id {row_id!r} is used by rows {first} and {position + 1}"
                        + ("" if where is file else f" of {where.path.name} and {file.path.name}")
                    )
                seen[row_id] = (file, position + 1)
                ids.append(row_id)
        return ids

    def count(self) -> int:
        return sum(file.count() for file in self.files)

    def shards(self, rows_per_shard: int = DEFAULT_SHARD_ROWS) -> list[Shard]:
        """Each file cut into shards of ``rows_per_shard`` rows (a file's last may be shorter), numbered across
        files."""
        shards: list[Shard] = []
        for number, file in enumerate(self.files):
            for shard in file.shards(rows_per_shard):
                shards.append(dataclasses.replace(shard, index=len(shards), file=number))
        return shards

    def rows(self, shard: Shard) -> list[Row]:
        return self.files[shard.file].rows(shard)

    def digest(self) -> str:
        """sha256 of the input's bytes (a folder: of its files, in name order), so a resumed run can tell the
        input changed."""
        digest = hashlib.sha256()
        for file in self.files:
            paths = sorted(p for p in file.path.rglob("*") if p.is_file()) if file.path.is_dir() else [file.path]
            for path in paths:
                digest.update(str(path.relative_to(self.media_root)).encode() + b"\0")
                with path.open("rb") as handle:
                    for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                        digest.update(block)
        return digest.hexdigest()


class InputFile:
    """One JSONL or Parquet file, or a ``datasets`` folder: its ids, shards and rows."""

    def __init__(self, path: Path):
        self.path = path
        self.format = input_format(path)
        self._offsets: list[int] | None = None
        self._lines: list[int] | None = None

    def _scan_jsonl(self) -> list[str]:
        """Each non-empty line's byte offset, line number and id."""
        offsets, lines, ids = [], [], []
        with self.path.open("rb") as handle:
            offset = 0
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    offsets.append(offset)
                    lines.append(number)
                    ids.append(_jsonl_id(line, f"{self.path.name}:{number}"))
                offset += len(line)
        self._offsets, self._lines = offsets, lines
        return ids

    def _parquet_rows(self, start: int, stop: int) -> list[dict]:
        """Rows ``start`` to ``stop`` of a Parquet file, reading only the row groups that hold them."""
        parquet = self._parquet
        groups, first, position = [], None, 0
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if position < stop and position + size > start:
                groups.append(group)
                first = position if first is None else first
            position += size
        if not groups:
            return []
        return parquet.read_row_groups(groups).slice(start - first, stop - start).to_pylist()

    @functools.cached_property
    def _parquet(self) -> Any:
        """The Parquet file, opened once (its metadata read once) for every shard a worker reads from it."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path, memory_map=True)

    @functools.cached_property
    def _dataset(self) -> Any:
        """The ``datasets`` folder, loaded (and its image columns cast to undecoded) once per worker."""
        import datasets

        dataset = datasets.load_from_disk(str(self.path))
        for name, feature in dataset.features.items():  # images as their bytes/path, not decoded here
            if isinstance(feature, datasets.Image):
                dataset = dataset.cast_column(name, datasets.Image(decode=False))
        return dataset

    def ids(self) -> list[str]:
        """Every row's id, in order."""
        if self.format == "jsonl":
            ids = self._scan_jsonl()
        else:
            column = None
            if self.format == "parquet":
                import pyarrow.parquet as pq

                if "id" in pq.read_schema(self.path).names:  # the id column alone
                    column = pq.read_table(self.path, columns=["id"], memory_map=True)["id"].to_pylist()
            else:
                data = self._dataset
                column = list(data["id"]) if "id" in data.column_names else None
            ids = [
                str(column[i]) if column is not None and column[i] is not None else f"{self.path.name}:{i + 1}"
                for i in range(self.count())
            ]
        return ids

    def count(self) -> int:
        if self.format == "jsonl":
            if self._offsets is None:
                self._scan_jsonl()
            return len(self._offsets)
        if self.format == "parquet":
            return self._parquet.metadata.num_rows
        return len(self._dataset)

    def shards(self, rows_per_shard: int = DEFAULT_SHARD_ROWS) -> list[Shard]:
        """The input cut into shards of ``rows_per_shard`` rows (the last may be shorter)."""
        total = self.count()
        shards = []
        for index, start in enumerate(range(0, total, rows_per_shard)):
            stop = min(start + rows_per_shard, total)
            if self.format == "jsonl":
                shards.append(Shard(index, start, stop, offset=self._offsets[start], line=self._lines[start]))
            else:
                shards.append(Shard(index, start, stop))
        return shards

    def rows(self, shard: Shard) -> list[Row]:
        """The shard's rows, each with its id (a line that is not a JSON object becomes a row with its problem)."""
        if self.format == "jsonl":
            return self._jsonl_rows(shard)
        if self.format == "parquet":
            records = self._parquet_rows(shard.start, shard.stop)
        else:
            records = self._dataset.select(range(shard.start, shard.stop)).to_list()
        return [
            Row(_given_id(record) or f"{self.path.name}:{shard.start + i + 1}", record)
            for i, record in enumerate(records)
        ]

    def _jsonl_rows(self, shard: Shard) -> list[Row]:
        rows = []
        with self.path.open("rb") as handle:
            handle.seek(shard.offset)
            number = shard.line
            while len(rows) < shard.stop - shard.start:
                line = handle.readline()
                if not line:
                    break
                if line.strip():
                    rows.append(_jsonl_row(line, f"{self.path.name}:{number}"))
                number += 1
        return rows


def _given_id(record: dict) -> str | None:
    value = record.get("id")
    return None if value is None else str(value)


def _jsonl_id(line: bytes, fallback: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return fallback
    return (_given_id(record) if isinstance(record, dict) else None) or fallback


def _jsonl_row(line: bytes, fallback: str) -> Row:
    try:
        record = json.loads(line)
    except ValueError as exc:
        return Row(fallback, None, f"not valid JSON: {exc}")
    if not isinstance(record, dict):
        return Row(fallback, None, f"a line must hold a JSON object, not {type(record).__name__}")
    return Row(_given_id(record) or fallback, record)


def image_reference(value: Any) -> Any:
    """An image column's value as the Sample schema takes it: bytes (or a ``datasets`` Image's ``{"bytes",
    "path"}``) become base64; strings (data URI, path, URL) pass."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value
