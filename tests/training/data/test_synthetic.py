"""The synthetic generator: seeded, disjoint splits, images that decide the answer, loadable with datasets."""

from __future__ import annotations

import hashlib

from PIL import Image

from vlreward.training.data.schema import load_hf_dataset, read_records
from vlreward.training.data.synthetic import HALLUCINATION_SUBTYPES, build_synthetic

SIZES = {"hallucination": 40, "reasoning": 20, "general": 10, "text": 10}
HELD = {"hallucination": 20, "reasoning": 10, "general": 5}


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_same_seed_same_files_and_splits_share_no_item(tmp_path):
    train_a, held_a = build_synthetic(tmp_path / "a", SIZES, HELD, seed=4)
    train_b, _ = build_synthetic(tmp_path / "b", SIZES, HELD, seed=4)
    assert _digest(train_a) == _digest(train_b)
    train = list(read_records(train_a))
    held = list(read_records(held_a))
    assert len(train) == sum(SIZES.values()) and len(held) == sum(HELD.values())
    image_hashes = lambda records, root: {  # noqa: E731
        (r.prompt, hashlib.sha256((root / r.images[0]).read_bytes()).hexdigest()) for r in records if r.images
    }
    assert not image_hashes(train, train_a) & image_hashes(held, held_a)


def test_every_category_and_subtype_is_present_and_pairs_differ(tmp_path):
    train_dir, held_dir = build_synthetic(tmp_path, SIZES, HELD, seed=1)
    records = list(read_records(train_dir))
    assert {r.category for r in records} == set(SIZES)
    subtypes = {r.meta["subtype"] for r in records if r.category == "hallucination"}
    assert subtypes == set(HALLUCINATION_SUBTYPES) == {"colour", "caption"}
    assert {r.meta["subtype"] for r in records if r.category == "reasoning"} == {"bars", "geometry"}
    assert all(r.chosen != r.rejected for r in records)
    assert all(not r.images for r in records if r.category == "text")
    assert all(r.images for r in records if r.category != "text")


def test_heldout_hallucination_pairs_carry_a_counterfactual_image(tmp_path):
    _, held_dir = build_synthetic(tmp_path, SIZES, HELD, seed=2)
    for record in read_records(held_dir):
        if record.category == "hallucination":
            counter = Image.open(held_dir / record.meta["counter_image"])
            original = Image.open(held_dir / record.images[0])
            assert counter.size == original.size and counter.tobytes() != original.tobytes()


def test_records_load_with_datasets(tmp_path):
    train_dir, _ = build_synthetic(tmp_path, SIZES, HELD, seed=3)
    dataset = load_hf_dataset(train_dir)
    assert len(dataset) == sum(SIZES.values())
    assert {"id", "source", "category", "images", "conversation", "chosen", "rejected", "tie"} <= set(
        dataset.column_names
    )
