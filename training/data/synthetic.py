"""Seeded synthetic preference data whose right answer depends on the image.

Categories follow VL-RewardBench:
- *hallucination*: the rejected response names a colour the image does not have, asked about
  ("What color is the circle?") or in a caption ("A red circle on a white background."); held-out
  items also carry a counterfactual image that matches the rejected response;
- *reasoning*: bar charts (which bar is tallest) and simple geometry (which of two shapes is larger),
  the paper's Figure 3 style, with coarse differences and colour-named answers;
- *general*: a concise correct answer vs. a verbose, self-repeating one (the paper's "Wait, ..." loop);
plus *text*-only pairs for stage 2. Sized so a tiny model learns it in minutes from 3x3 image tokens:
it demonstrates the pipeline end to end; it is not a test of intelligence. Shape-name and position
hallucinations are left out: with a frozen random vision encoder and 3x3 image tokens, neither was
learned inside the 5-minute budget, and mixed in they held every other subtype back (one-thread runs:
hallucination 0.52 after 5,000 steps with shape and left/right pairs in, 0.875 after 4,000 without;
the bootstrap recipe with "colour on the left/right" pairs: those at 0.54, hallucination 0.64 overall).
Count pairs ("There are two circles.") are left out for the same reason: with them, seed 0 of the
bootstrap (one thread) ended at held-out 0.808 (hallucination 0.76; count pairs 0.71 in a longer
batch-1 run), and the outcome swung with the seed (0.84 to 0.98); with caption pairs in their place,
seeds 0-3 gave 0.936 / 0.986 / 0.982 / 0.996 (seed 0 with two threads: 0.968).
Train and held-out never share an item.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlreward.training.data.schema import IMAGES_DIR, PreferenceRecord, Turn, write_records

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZE = 84
CATEGORIES = ("hallucination", "reasoning", "general")
HALLUCINATION_SUBTYPES = ("colour", "caption")
# The synthetic set of the embedded default model (`vlreward bootstrap`); `vlreward eval --benchmark
# synthetic` regenerates the held-out split from the same seed.
SYNTHETIC_SEED = 0
TRAIN_PER_CATEGORY = {"hallucination": 3000, "reasoning": 3000, "general": 300, "text": 500}
HELDOUT_PER_CATEGORY = {"hallucination": 200, "reasoning": 200, "general": 100}


@dataclass
class Item:
    """One generated pair before it is written: images are drawn lazily by ``draw``."""

    key: tuple
    category: str
    subtype: str
    prompt: str
    chosen: str
    rejected: str
    draw: list[Callable[[], Image.Image]]
    counter: Callable[[], Image.Image] | None = None


def _canvas(width: int = SIZE, height: int = SIZE) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: str) -> None:
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _one_shape(shape: str, colour: str, cx: int, cy: int, r: int) -> Callable[[], Image.Image]:
    def draw() -> Image.Image:
        image, pen = _canvas()
        draw_shape(pen, shape, (cx - r, cy - r, cx + r, cy + r), colour)
        return image

    return draw


def _other(rng: random.Random, options, value):
    return rng.choice([o for o in options if o != value])


def _hallucination(rng: random.Random) -> Item:
    subtype = rng.choice(HALLUCINATION_SUBTYPES)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    r = rng.randint(14, 22)
    cx, cy = rng.randint(r + 2, SIZE - r - 2), rng.randint(r + 2, SIZE - r - 2)
    if subtype == "colour":
        wrong = _other(rng, list(COLOURS), colour)
        return Item(
            ("h-colour", colour, shape, cx, cy, r), "hallucination", subtype,
            f"What color is the {shape}?", f"The {shape} is {colour}.", f"The {shape} is {wrong}.",
            [_one_shape(shape, colour, cx, cy, r)], _one_shape(shape, wrong, cx, cy, r),
        )  # fmt: skip
    wrong = _other(rng, list(COLOURS), colour)
    prompt = rng.choice(("Describe the picture briefly.", "What do you see?", "Give a short caption."))
    return Item(
        ("h-caption", colour, shape, cx, cy, r, prompt), "hallucination", subtype,
        prompt, f"A {colour} {shape} on a white background.", f"A {wrong} {shape} on a white background.",
        [_one_shape(shape, colour, cx, cy, r)], _one_shape(shape, wrong, cx, cy, r),
    )  # fmt: skip


def _reasoning(rng: random.Random) -> Item:
    """Answers name a colour, and the comparison is coarse (a tall bar vs. short ones, a big shape vs. a
    small one): a tiny model can learn to read it from 3x3 image tokens in minutes."""
    if rng.random() < 0.6:
        n = rng.choice((2, 3))
        colours = rng.sample(list(COLOURS), n)
        heights = [rng.randrange(16, 44, 4) for _ in range(n)]
        tallest_index = rng.randrange(n)
        heights[tallest_index] = rng.randrange(64, 80, 4)
        tallest = colours[tallest_index]
        wrong = _other(rng, colours, tallest)

        def draw() -> Image.Image:
            image, pen = _canvas()
            width = 60 // n
            for i, (colour, height) in enumerate(zip(colours, heights, strict=True)):
                x0 = 8 + i * (width + 6)
                pen.rectangle((x0, SIZE - 4 - height, x0 + width, SIZE - 4), fill=COLOURS[colour])
            return image

        return Item(
            ("r-bars", tuple(colours), tuple(heights)), "reasoning", "bars",
            "The chart shows bars. Which bar is the tallest?",
            f"Comparing the heights, the {tallest} bar is the tallest.",
            f"Comparing the heights, the {wrong} bar is the tallest.", [draw],
        )  # fmt: skip
    (colour_a, colour_b), (shape_a, shape_b) = rng.sample(list(COLOURS), 2), rng.choices(SHAPES, k=2)
    big, small = rng.randint(18, 22), rng.randint(6, 10)
    a_bigger = rng.random() < 0.5
    r_a, r_b = (big, small) if a_bigger else (small, big)
    a_left = rng.random() < 0.5

    def draw_geometry() -> Image.Image:
        image, pen = _canvas()
        x_a, x_b = (22, 62) if a_left else (62, 22)
        draw_shape(pen, shape_a, (x_a - r_a, 42 - r_a, x_a + r_a, 42 + r_a), colour_a)
        draw_shape(pen, shape_b, (x_b - r_b, 42 - r_b, x_b + r_b, 42 + r_b), colour_b)
        return image

    name_a, name_b = f"{colour_a} {shape_a}", f"{colour_b} {shape_b}"
    answer, wrong = (name_a, name_b) if a_bigger else (name_b, name_a)
    return Item(
        ("r-geometry", name_a, name_b, r_a, r_b, a_left), "reasoning", "geometry",
        f"Which shape has the larger area, the {name_a} or the {name_b}?",
        f"The {answer} is larger, so the {answer} has the larger area.",
        f"The {wrong} is larger, so the {wrong} has the larger area.", [draw_geometry],
    )  # fmt: skip


_FILLERS = (
    "Wait, let me check again.",
    "Wait, let me think about it once more.",
    "Hmm, wait, I should look again.",
)


def _verbose(rng: random.Random, answer: str) -> str:
    loop = rng.choice(_FILLERS)
    return " ".join([answer] + [loop, answer] * rng.randint(2, 4))


def _general(rng: random.Random) -> Item:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    r = rng.randint(14, 22)
    cx, cy = rng.randint(r + 2, SIZE - r - 2), rng.randint(r + 2, SIZE - r - 2)
    prompt = rng.choice(("Describe the picture briefly.", "What do you see?", "Give a short caption."))
    answer = f"A {colour} {shape} on a white background."
    return Item(
        ("g", colour, shape, cx, cy, r, prompt), "general", "concise",
        prompt, answer, _verbose(rng, answer), [_one_shape(shape, colour, cx, cy, r)],
    )  # fmt: skip


_WORDS = ("apple", "river", "stone", "cloud", "green", "seven", "table", "music", "light", "paper")


def _text(rng: random.Random) -> Item:
    if rng.random() < 0.5:
        word = rng.choice(_WORDS)
        wrong = _other(rng, _WORDS, word)
        return Item(
            ("t-repeat", word, wrong), "text", "repeat",
            f"Repeat the word {word}.", f"{word}", f"{wrong}", [],
        )  # fmt: skip
    word = rng.choice(_WORDS)
    answer = f"The word is {word}."
    return Item(
        ("t-concise", word, rng.randint(0, 10**6)), "text", "concise",
        f"Say the word {word} once.", answer, _verbose(rng, answer), [],
    )  # fmt: skip


GENERATORS = {"hallucination": _hallucination, "reasoning": _reasoning, "general": _general, "text": _text}


def new_items(
    generators: dict[str, Callable[[random.Random], Item]],
    per_category: dict[str, int],
    rng: random.Random,
    exclude: set[tuple],
    keys: set[tuple],
) -> Iterator[tuple[str, int, Item]]:
    """(category, index in it, item) for ``per_category`` items drawn from ``generators``, none of them in
    ``exclude`` and none twice; ``keys`` collects the items' keys."""
    for category, count in per_category.items():
        made = 0
        while made < count:
            item = generators[category](rng)
            if item.key in exclude or item.key in keys:
                continue
            keys.add(item.key)
            yield category, made, item
            made += 1


def drawn_items(
    out_dir: Path,
    generators: dict[str, Callable[[random.Random], Item]],
    per_category: dict[str, int],
    rng: random.Random,
    split: str,
    exclude: set[tuple] | None = None,
    keys: set[tuple] | None = None,
) -> Iterator[tuple[str, int, str, Item, list[str]]]:
    """(category, index in it, record id ``split-category-index``, item, image paths) of each item
    :func:`new_items` draws, its images saved into ``out_dir`` first."""
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    keys = set() if keys is None else keys
    for category, made, item in new_items(generators, per_category, rng, exclude or set(), keys):
        record_id = f"{split}-{category}-{made:05d}"
        yield category, made, record_id, item, save_images(item, out_dir, record_id)


def save_images(item: Item, out_dir: Path, record_id: str) -> list[str]:
    """Draw the item's images into ``out_dir``; their paths relative to it, in order."""
    paths = []
    for index, draw in enumerate(item.draw):
        relative = f"{IMAGES_DIR}/{record_id}-{index}.png"
        draw().save(out_dir / relative)
        paths.append(relative)
    return paths


def generate(
    out_dir: Path,
    per_category: dict[str, int],
    seed: int,
    split: str,
    exclude: set[tuple] | None = None,
    counterfactuals: bool = False,
    ratings: tuple[float, float] | None = None,
    critiques: bool = False,
    heads: bool = False,
) -> tuple[list[PreferenceRecord], set[tuple]]:
    """Write ``per_category`` pairs (and their images) into ``out_dir``; items in ``exclude`` are skipped.
    With ``ratings`` (chosen's, rejected's: :data:`SYNTHETIC_RATINGS`) each pair also rates its responses;
    with ``critiques`` it carries short templated critiques (:func:`templated_critiques`); with ``heads`` it
    labels the head of :data:`SYNTHETIC_HEADS` its category feeds.

    Returns the records and the keys used. Chosen/rejected positions are what they are: the model sees
    each separately, so there is no position bias to balance.
    """
    rng = random.Random(f"{seed}-{split}")
    records, keys = [], set()
    drawn = drawn_items(out_dir, GENERATORS, per_category, rng, split, exclude, keys)
    for category, _, record_id, item, paths in drawn:
        meta = {"subtype": item.subtype, "split": split}
        if counterfactuals and item.counter is not None:
            meta["counter_image"] = f"{IMAGES_DIR}/{record_id}-counter.png"
            item.counter().save(out_dir / meta["counter_image"])
        records.append(
            PreferenceRecord(
                id=record_id,
                source="synthetic",
                category=category,
                images=paths,
                conversation=[Turn(role="user", content=item.prompt)],
                chosen=item.chosen,
                rejected=item.rejected,
                scores=None if ratings is None else {"chosen": ratings[0], "rejected": ratings[1]},
                critiques=templated_critiques(category) if critiques else None,
                meta=meta,
                **(head_labels(category) if heads else {}),
            )
        )
    write_records(records, out_dir)
    return records, keys


CRITIQUE_CLAIMS = {"hallucination": "matches the image", "reasoning": "reasons correctly"}
"""What a synthetic chosen response does and its rejected one does not, by category (else: answers the question)."""


def templated_critiques(category: str) -> dict[str, str]:
    """A pair's short critiques, one template per question (the judge learns to write one, then its verdict)."""
    claim = CRITIQUE_CLAIMS.get(category, "answers the question")
    return {
        "chosen_first": f"Response 1 {claim}; response 2 does not.",
        "rejected_first": f"Response 2 {claim}; response 1 does not.",
        "chosen": f"The response {claim}.",
        "rejected": "The response does not; it is wrong.",
    }


SYNTHETIC_HEADS = {
    "general": ("concise", "preference"),
    "text": ("concise", "preference"),
    "hallucination": ("grounded", "preference"),
    "reasoning": ("correct", "rating"),
}
"""The head each category's pairs train in a multi-head model (``vlreward data synthetic --heads``), and how:
by the pair's preference, or by its responses' ratings (:data:`SYNTHETIC_RATINGS`)."""
SYNTHETIC_HEAD_NAMES = ("concise", "grounded", "correct")
"""Those heads, the default first (``vlreward train --heads concise,grounded,correct``)."""


def head_labels(category: str) -> dict:
    """The multi-head labels of a pair of ``category``: its preference head or its attribute ratings."""
    head, how = SYNTHETIC_HEADS[category]
    return {"head": head} if how == "preference" else {"attributes": {head: SYNTHETIC_RATINGS}}


SYNTHETIC_RATINGS = (5.0, 1.0)
"""The ratings of a synthetic pair's chosen and rejected responses on a 1-5 scale, for the judges that learn
pointwise rating from it: every rejected response is plainly wrong (a wrong colour, count or comparison) and
every chosen one right."""


def build_synthetic(
    out_dir: Path,
    train_per_category: dict[str, int],
    heldout_per_category: dict[str, int],
    seed: int = 0,
    ratings: tuple[float, float] | None = None,
    critiques: bool = False,
    heads: bool = False,
) -> tuple[Path, Path]:
    """Held-out first (with counterfactual images), then a train split that shares no item with it
    (``ratings``, ``critiques``, ``heads``: see :func:`generate`)."""
    heldout_dir, train_dir = out_dir / "heldout", out_dir / "train"
    labels = {"ratings": ratings, "critiques": critiques, "heads": heads}
    _, heldout_keys = generate(heldout_dir, heldout_per_category, seed, "heldout", counterfactuals=True, **labels)
    generate(train_dir, train_per_category, seed, "train", exclude=heldout_keys, **labels)
    return train_dir, heldout_dir
