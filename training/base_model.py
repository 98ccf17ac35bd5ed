"""Build a tiny, self-contained Qwen2.5-VL base model directory with no download.

The directory looks like a real Qwen2.5-VL-*-Instruct checkpoint (a
``Qwen2_5_VLForConditionalGeneration`` with tokenizer, chat template and image processor), only
small and randomly initialised. Tests, the default model and benchmarks start from it.
Everything is seeded: the same call writes the same files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Qwen2's special tokens, in Qwen's order (their ids follow the learned vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template (the one Qwen2.5-VL-Instruct ships), default system prompt included.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenisation regex (splits words, numbers digit by digit, punctuation, spaces).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class BaseSize:
    """Dimensions of a generated base model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    min_pixels: int
    max_pixels: int
    rope_theta: float = 1000000.0
    """Qwen2.5-VL's 1e6 rotates the height/width sections of M-RoPE by at most 0.03 rad per image row or
    column at head_dim 64: a 2-layer model cannot tell left from right in a 3x3-token image. The tiny base
    uses 100 (measured: left/right pairs alone 0.70 -> 1.00 held-out after 3,000 steps)."""


# head_dim = hidden / heads = 64 in both: vLLM's CPU attention rejects smaller head sizes.
SIZES: dict[str, BaseSize] = {
    "tiny": BaseSize(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        vision_depth=2,
        vision_hidden=32,
        vision_heads=2,
        vision_intermediate=64,
        min_pixels=4 * 28 * 28,
        max_pixels=64 * 28 * 28,
        rope_theta=100.0,
    ),
    "bench": BaseSize(
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        vision_depth=4,
        vision_hidden=128,
        vision_heads=4,
        vision_intermediate=256,
        min_pixels=16 * 28 * 28,
        max_pixels=256 * 28 * 28,
    ),
}

_COLOURS = "red green blue yellow purple orange black white gray pink brown cyan".split()
_SHAPES = "circle square triangle star rectangle bar line dot ellipse diamond".split()
_WORDS = (
    "the a an is are was were what which where how many much who why when does do did not no yes "
    "image picture photo chart graph shows show there this that these those of in on at to from with "
    "left right top bottom middle center above below next largest longest shortest tallest smallest "
    "bigger smaller more less than equal value values answer question response because so and or but "
    "first second third one two three four five six seven eight nine ten zero number count color colour "
    "shape object objects background foreground wait let me check again think step therefore correct "
    "wrong true false you assistant user system helpful please describe explain compare total sum "
    "area angle triangle side length width height degree degrees percent label axis bars tall short"
).split()


def _tokenizer_corpus(seed: int, n_lines: int = 4000) -> list[str]:
    """Deterministic English-like lines covering the words our prompts and data use."""
    rng = random.Random(seed)
    vocab = _COLOURS + _SHAPES + _WORDS
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(vocab) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice([".", "?", "!", ",", ":"]))
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0):
    """Train a byte-level BPE tokenizer with Qwen's special tokens and pre-tokenisation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def base_config(dims: BaseSize, vocab_size: int, ids: dict[str, int]) -> Any:
    """The Qwen2.5-VL config of a generated base model (``ids``: the special tokens' ids)."""
    from transformers import Qwen2_5_VLConfig

    head_dim = dims.hidden_size // dims.num_heads
    # M-RoPE splits half the rotary dimension into (temporal, height, width) sections, like 7B's 16/24/24.
    half = head_dim // 2
    mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": dims.hidden_size,
            "intermediate_size": dims.intermediate_size,
            "num_hidden_layers": dims.num_layers,
            "num_attention_heads": dims.num_heads,
            "num_key_value_heads": dims.num_kv_heads,
            "max_position_embeddings": 32768,
            "max_window_layers": dims.num_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": dims.rope_theta, "mrope_section": mrope_section},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": dims.vision_depth,
            "hidden_size": dims.vision_hidden,
            "intermediate_size": dims.vision_intermediate,
            "num_heads": dims.vision_heads,
            "out_hidden_size": dims.hidden_size,
            "fullatt_block_indexes": [dims.vision_depth - 1],
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


COLOUR_CHANNEL_SCALE = 3.0


def colour_patch_embedding(patch_embed: Any) -> None:
    """Make the first three channels of the patch embedding each patch's mean R, G and B.

    A random patch embedding hides a patch's colour in random projections of its 1,176 pixel values, so
    what the frozen encoder passes on depended on the seed, and so did whether the tiny model learned the
    image tasks in its budget (held-out 0.84 to 0.98 over seeds and machines). A pretrained encoder has
    colour features; these three channels are the smallest stand-in (scaled to dominate the random ones,
    whose spread is about 0.7). The other channels stay random.
    """
    import torch

    weight = patch_embed.proj.weight  # [embed_dim, 3 colour channels, temporal, patch, patch]
    with torch.no_grad():
        for channel in range(3):
            weight[channel].zero_()
            weight[channel, channel].fill_(COLOUR_CHANNEL_SCALE / weight[channel, channel].numel())


def build_processor(tokenizer: Any, dims: BaseSize) -> Any:
    """The Qwen2.5-VL processor of a generated model: its tokenizer, pixel bounds and chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=dims.min_pixels, max_pixels=dims.max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=dims.min_pixels, max_pixels=dims.max_pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_base_model(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a self-contained Qwen2.5-VL base directory (``Qwen2_5_VLForConditionalGeneration``)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    dims = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(dims.vocab_size, seed=seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = base_config(dims, len(tokenizer), ids)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    colour_patch_embedding(model.model.visual.patch_embed)
    model.save_pretrained(out, safe_serialization=True)

    build_processor(tokenizer, dims).save_pretrained(out)
    _canonicalise_json_files(out)
    return out


def _canonicalise_json_files(directory: Path) -> None:
    """Rewrite JSON files with sorted keys so that identical content gives identical bytes."""
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
