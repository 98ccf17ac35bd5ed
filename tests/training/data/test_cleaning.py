"""Cleaning on fixtures with planted duplicates, near duplicates and ties: the right counts removed."""

from __future__ import annotations

from tests.helpers import shape_image
from training.data.cleaning import clean
from training.data.schema import PreferenceRecord, Turn


def _record(id_: str, prompt: str, chosen: str, rejected: str, image: str | None = None, tie: bool = False):
    return PreferenceRecord(
        id=id_, source="fixture", category="general", images=[image] if image else [],
        conversation=[Turn(role="user", content=prompt)], chosen=chosen, rejected=rejected, tie=tie,
    )  # fmt: skip


def test_planted_duplicates_near_duplicates_and_ties_are_removed(tmp_path):
    (tmp_path / "images").mkdir()
    shape_image("red").save(tmp_path / "images" / "red.png")
    shape_image("red").save(tmp_path / "images" / "red-copy.png")  # same content, other file
    shape_image("blue").save(tmp_path / "images" / "blue.png")
    long_answer = (
        "The picture shows a single red circle centred on a plain white background with nothing else in it. "
        "The circle is filled with one flat colour, it has no outline, no shadow and no texture, and it takes "
        "up roughly half of the width and half of the height of the square image, leaving white margins."
    )
    near_answer = long_answer.replace("roughly", "about")
    records = [
        _record("a", "Describe the image.", long_answer, "A blue square.", "images/red.png"),
        _record("a-dup", "describe  the IMAGE.", long_answer.lower(), "a blue square.", "images/red-copy.png"),
        _record("a-other-image", "Describe the image.", long_answer, "A blue square.", "images/blue.png"),
        _record("a-near", "Describe the image.", near_answer, "A blue square.", "images/red.png"),
        _record("tie", "Which is better?", "Both.", "Neither.", tie=True),
        _record("same-text", "Say hi.", "Hi!", " Hi! "),
        _record("b", "What is 2+2?", "4", "5"),
        _record("c", "Name a colour.", "Red.", "Seven."),
    ]
    kept, reports = clean(records, tmp_path, near_threshold=0.8)
    assert [r.id for r in kept] == ["a", "a-other-image", "b", "c"]
    assert [(r.count_in, r.count_out) for r in reports] == [(8, 6), (6, 5), (5, 4)]  # ties, exact, near
    assert [r.removed for r in reports] == [2, 1, 1]
