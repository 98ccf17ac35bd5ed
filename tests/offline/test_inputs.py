"""Input rows for offline scoring: ids (given, or file:line), duplicates refused before any work, shards our
code defines, the same rows from JSONL, Parquet and a datasets folder (images as bytes, paths or data URIs),
and a hash that changes with the input."""

from __future__ import annotations

import base64
import io
import json

import pytest

from tests.helpers import shape_image, uri
from vlreward.offline.inputs import InputFileError, InputSource, image_reference


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    shape_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def rows(count: int) -> list[dict]:
    return [{"prompt": f"q{i}", "response": f"a{i}", "n": i} | ({"id": f"row-{i}"} if i % 2 else {})
            for i in range(count)]  # fmt: skip


def test_jsonl_ids_fall_back_to_file_and_line_and_shards_cover_every_row_once(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in rows(7)]
    lines.insert(3, "")  # a blank line: not a row, but it counts in line numbers
    path.write_text("\n".join(lines) + "\nnot json\n")
    source = InputSource(path)
    ids = source.ids()
    assert ids[:5] == ["in.jsonl:1", "row-1", "in.jsonl:3", "row-3", "in.jsonl:6"] and ids[-1] == "in.jsonl:9"
    shards = source.shards(3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 8)]
    read = [row for shard in shards for row in source.rows(shard)]
    assert [row.id for row in read] == ids
    assert read[4].columns == rows(7)[4] and read[-1].columns is None and "not valid JSON" in read[-1].problem


def test_a_duplicate_id_is_refused_naming_it_and_its_rows(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": "x", "prompt": "p", "response": str(i)}) + "\n" for i in range(3)))
    with pytest.raises(InputFileError, match="id 'x' is used by rows 1 and 2"):
        InputSource(path).ids()


def test_parquet_and_datasets_inputs_give_the_same_rows_and_images_as_bytes_become_references(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": f"q{i}", "response": f"a{i}", "image": png("red") if i % 2 else None} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet")
    features = datasets.Features({"prompt": datasets.Value("string"), "response": datasets.Value("string"),
                                  "image": datasets.Image()})  # fmt: skip
    images = [None if r["image"] is None else {"bytes": r["image"], "path": None} for r in records]
    dataset = datasets.Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                                          "response": [r["response"] for r in records], "image": images},
                                         features=features)  # fmt: skip
    dataset.save_to_disk(str(tmp_path / "ds"))
    for path, name in ((tmp_path / "in.parquet", "in.parquet"), (tmp_path / "ds", "ds")):
        source = InputSource(path)
        assert source.ids() == [f"{name}:{i}" for i in range(1, 6)]
        got = [row for shard in source.shards(2) for row in source.rows(shard)]
        assert [row.columns["prompt"] for row in got] == [r["prompt"] for r in records]
        references = [image_reference(row.columns["image"]) for row in got]
        assert references[1] == base64.b64encode(png("red")).decode() and references[0] is None


def test_the_hash_changes_with_the_input_and_strings_pass_as_references(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(rows(2)[0]) + "\n")
    before = InputSource(path).digest()
    path.write_text(json.dumps(rows(2)[1]) + "\n")
    assert InputSource(path).digest() != before
    assert image_reference(uri(shape_image("red"))).startswith("data:image/png;base64,")
    assert image_reference("pictures/a.png") == "pictures/a.png"
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputFileError, match="unknown input format"):
        InputSource(tmp_path / "x.csv")


def test_a_folder_of_files_is_one_input_whose_shards_never_span_files(tmp_path):
    folder = tmp_path / "capture"
    folder.mkdir()
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(3)))
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(5)[3:]))
    (folder / "notes.txt").write_text("not an input file")
    source = InputSource(folder)
    assert source.ids() == ["row-3", "a.jsonl:2", "b.jsonl:1", "row-1", "b.jsonl:3"]  # files in name order
    shards = source.shards(2)
    assert [(s.file, s.start, s.stop) for s in shards] == [(0, 0, 2), (1, 0, 2), (1, 2, 3)]
    assert [row.id for shard in shards for row in source.rows(shard)] == source.ids()
    (folder / "c.jsonl").write_text(json.dumps({"id": "row-1", "prompt": "p", "response": "r"}) + "\n")
    with pytest.raises(InputFileError, match="id 'row-1' is used by rows 2 and 1 of b.jsonl and c.jsonl"):
        InputSource(folder).ids()


def test_a_parquet_shard_reads_the_row_groups_that_hold_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": f"r{i}", "prompt": f"q{i}", "response": f"a{i}"} for i in range(23)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet", row_group_size=5)
    source = InputSource(tmp_path / "in.parquet")
    assert source.ids() == [r["id"] for r in records]
    got = [row.columns for shard in source.shards(7) for row in source.rows(shard)]  # shards cross row groups
    assert got == records
