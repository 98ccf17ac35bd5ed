"""Request mixes for the load generator: distinct samples as users send them, seeded and reproducible.

A :class:`Mix` says what each sample looks like (text-only or 1-2 images of chosen sizes, prompt and
response lengths in words) and how samples make requests: one sample per ``/score`` call, GRPO groups
of G responses sharing one prompt and image, or ``/rank`` best-of-N. Mixes load from a JSON spec
(``Mix.from_spec``). Every image is drawn fresh (random shapes, colours, positions and noise), so no
two requests repeat a sample unless the mix says they share one (a GRPO group).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from PIL import Image, ImageDraw

from vlreward.service.media import image_to_data_uri

WORDS = (
    "the a of to and in is it that for on with as was be at by this have from or one had not but what all were "
    "when we there can an your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men say small every "
    "found still between name should home big give air line set own under read last never us left end along "
    "while might next sound below saw something thought both few those always looked show large often "
    "together asked house world going want school important until form food keep children feet land side "
    "without boy once animals life enough took sometimes four head above kind began almost live page got earth"
).split()


@dataclass(frozen=True)
class Mix:
    """What the samples of a run look like and how they are grouped into requests."""

    samples: int = 96
    """Distinct samples (responses) in the run."""
    image_fraction: float = 0.5
    """Share of prompts with images."""
    images: tuple[int, int] = (1, 1)
    """Images per prompt that has images: min, max."""
    image_size: tuple[int, int] = (112, 112)
    prompt_words: tuple[int, int] = (20, 80)
    response_words: tuple[int, int] = (20, 120)
    group: int = 1
    """Responses per prompt + images: 1 = every sample distinct; G = GRPO groups of G."""
    shared_images: bool = True
    """Whether a group's responses share the prompt's images (False: each gets its own, same size)."""
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: dict | str | Path) -> Mix:
        """A mix from a dict or a JSON file with any of the fields above."""
        if not isinstance(spec, dict):
            spec = json.loads(Path(spec).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown mix fields {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        return cls(**values)

    def with_(self, **changes) -> Mix:
        return replace(self, **changes)

    def describe(self) -> dict:
        return asdict(self)


def _words(rng: random.Random, bounds: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*bounds))).capitalize() + "."


def _image(rng: random.Random, size: tuple[int, int]) -> str:
    image = Image.new("RGB", size, tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        box = (x0, y0, x0 + rng.randint(8, size[0] // 2), y0 + rng.randint(8, size[1] // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    for _ in range(size[0] * size[1] // 50):  # a little noise: no two images are alike
        image.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), tuple(rng.randrange(256) for _ in range(3)))
    return image_to_data_uri(image)


def make_groups(mix: Mix) -> list[list[dict]]:
    """The run's samples (Sample dicts for /score), in groups of ``mix.group`` that share a prompt."""
    rng = random.Random(mix.seed)
    groups = []
    for _ in range(-(-mix.samples // mix.group)):
        prompt = _words(rng, mix.prompt_words)
        count = rng.randint(*mix.images) if rng.random() < mix.image_fraction else 0
        images = [_image(rng, mix.image_size) for _ in range(count)]
        group = []
        for _ in range(mix.group):
            own = images if mix.shared_images else [_image(rng, mix.image_size) for _ in range(count)]
            sample = {"prompt": prompt, "response": _words(rng, mix.response_words)}
            if own:
                sample["images"] = own
            group.append(sample)
        groups.append(group)
    return groups


def make_samples(mix: Mix) -> list[dict]:
    return [sample for group in make_groups(mix) for sample in group][: mix.samples]


def chat_messages(sample: dict) -> list[dict]:
    """A Sample dict as OpenAI chat messages (what ``vllm serve``'s /classify takes)."""
    parts = [{"type": "image_url", "image_url": {"url": ref}} for ref in sample.get("images", [])]
    parts.append({"type": "text", "text": sample["prompt"]})
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": sample["response"]}]
