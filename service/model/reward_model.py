"""The transformers reward model: Qwen2.5-VL backbone + one linear head on the last real token."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import DynamicCache, Qwen2_5_VLConfig, Qwen2_5_VLModel

from vlreward.service.model.causal_attention import BLOCKED_ATTENTION
from vlreward.service.model.cpu_kernels import choose_cpu_linears, torch_kernels
from vlreward.service.model.encoding import EncodedSample, collate, padded_positions
from vlreward.service.model.lora import LoraSet, row_slots, rows_adapters
from vlreward.service.model.packing import pack, packed_segments
from vlreward.service.model.patch_embed import embed_patches_as_linear
from vlreward.service.model.scored_token import score_at_last_layer_only, scoring_at

PREFIX_COPY_BYTES = 1 << 30
"""What the copies of a shared prefix's key/value cache may hold at once: each candidate of a chunk gets
one (1 GiB: 18k tokens of a 7B model's cache in bfloat16, all of a small model's)."""


@dataclass(frozen=True)
class CachedOpening:
    """Tokens many samples start with (the chat template's system turn) and their key/value cache."""

    input_ids: torch.Tensor
    """Shape [tokens]."""
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """Each decoder layer's keys and values of one row, [1, kv heads, tokens, head dim]; never written."""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    def starts(self, samples: list[EncodedSample]) -> bool:
        """Whether every sample starts with these tokens and has at least one more (the scored one)."""
        n = self.length
        return all(s.num_tokens > n and torch.equal(s.input_ids[:n], self.input_ids) for s in samples)

    def for_rows(self, rows: int) -> DynamicCache:
        """A cache for ``rows`` rows, to continue (see :func:`cache_for_rows`)."""
        return cache_for_rows(self.layers, rows)


def cache_layers(cache: DynamicCache) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """A cache's keys and values per layer."""
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def cache_for_rows(layers: tuple[tuple[torch.Tensor, torch.Tensor], ...], rows: int) -> DynamicCache:
    """A new cache whose ``rows`` rows each start from one row's keys and values per layer: one copy of them,
    which the cache's own updates then extend into new tensors, so ``layers`` is never written (cheaper than
    deep-copying a cache object and repeating it per row)."""
    return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers])


def read_positions(samples: list[EncodedSample], padding_side: Literal["left", "right"] = "right") -> torch.Tensor:
    """The step-tag positions of process samples in their padded batch, [batch, most tags]; a row with
    fewer repeats its last (its extra values are dropped)."""
    length = max(s.num_tokens for s in samples)
    shifts = [length - s.num_tokens if padding_side == "left" else 0 for s in samples]
    return padded_positions([s.read_at for s in samples], shifts)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position per row; right or left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.long) * positions).argmax(dim=-1)


class Qwen2_5_VLRewardModel(nn.Module):
    """Qwen2.5-VL with a scalar head reading the final hidden state of the last real token (a judge's head:
    its LM head's rows for the verdict tokens, read at the token after its prompt).

    ``forward`` returns one raw reward per row (no activation). The head may have a bias (kept when
    converting published checkpoints; it cancels in the pairwise loss). The head is float32 whatever the
    backbone's dtype: a bfloat16 head quantises rewards near 4-8 in steps of ~0.03, and it is 3,585
    numbers.
    """

    base_model_prefix = "model"
    """Where the backbone is (transformers' convention; peft reads it to name an adapter's weights)."""

    def __init__(
        self, config: Qwen2_5_VLConfig, head_bias: bool = False, outputs: int = 1, head_index: list[int] | None = None
    ):
        super().__init__()
        self.config = config
        self.model = Qwen2_5_VLModel(config)
        score_at_last_layer_only(self.model.language_model)  # the reward reads one token: see scored_token
        choose_cpu_linears(self.model)  # float32 inference on an AMD CPU: see cpu_kernels
        embed_patches_as_linear(self.model.visual)  # a product, not a convolution, in inference: see patch_embed
        self.score = nn.Linear(config.text_config.hidden_size, outputs, bias=head_bias, dtype=torch.float32)
        """The head: one output (a reward, or a process model's step logit), or a judge's rows of its LM head,
        one per distinct verdict token (:mod:`vlreward.service.judge`)."""
        self.head_index = head_index
        """A judge's outputs as rows of the head: a token that is both a rating and an answer (a digit) has
        one row, as it has in the LM head it is written back to (None: the head's outputs as they are)."""
        self.shared_prefix_runs = 0
        """Prefixes (prompt + images) computed once for several samples by :meth:`score_shared_prefix`."""
        self.opening: CachedOpening | None = None
        """The cached opening that :meth:`score_batch` continues from (:meth:`cache_opening`)."""
        self.opening_batches = 0
        """Batches :meth:`score_batch` ran from the cached opening."""
        self.pack_batches = False
        """Whether :meth:`score_batch` packs a padded batch's samples end to end (:mod:`.packing`)."""
        self.packed_batches = 0
        """Batches :meth:`score_batch` ran packed."""
        self.lora: LoraSet | None = None
        """LoRA adapters served on this model (:mod:`.lora`); the rows of a batch name theirs."""
        self.vision_in_every_step = False
        """Training across processes: run the vision tower on a dummy image when a batch has none, so
        every rank uses the same parameters each step (ZeRO-3/FSDP hang otherwise; DDP reports unused
        parameters). The dummy's output is multiplied by zero: scores do not change."""

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype (the head's is float32)."""
        return self.model.get_input_embeddings().weight.dtype

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on final hidden states, in the head's precision: shape [batch] (a judge's: [batch,
        verdict tokens], each logit minus the first verdict token's: only differences count, and so vLLM's
        log-probabilities give the same numbers)."""
        out = self.score(hidden.to(self.score.weight.dtype))
        if self.lora is not None:  # rows scored with an adapter read its head
            out = self.lora.heads(out, hidden)
        if self.head_index is None:
            return out.squeeze(-1)
        out = out[..., self.head_index]
        return out - out[..., :1]  # a judge's: relative to its first verdict token's, as log-probabilities are

    def position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor:
        """3-D M-RoPE positions that skip padding (so left padding and batching change nothing)."""
        positions, _ = self.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        plain: bool = False,
        opening: CachedOpening | None = None,
        read_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden state of each row's last real token, shape [batch, hidden]; with ``read_at``
        (positions [batch, k]: a process model's step tags) of those tokens, shape [batch, k, hidden].

        The last decoder layer runs at that token only (see :mod:`.scored_token`) and float32 linears on the
        CPU run on oneDNN (:mod:`.cpu_kernels`); ``plain`` is transformers' own forward pass instead, every
        token through every layer on torch's default kernels (the model card's loop; the same numbers to
        float rounding). With ``opening`` (every row, right-padded, starts with its tokens) the rows continue
        from its cache instead of computing those tokens again.
        """
        last = last_token_index(attention_mask) if read_at is None else read_at
        positions = self.position_ids(input_ids, attention_mask, mm_token_type_ids, image_grid_thw)
        skip, past = 0, None
        if opening is not None and not plain:
            skip, past = opening.length, opening.for_rows(len(input_ids))
            input_ids, positions = input_ids[:, skip:], positions[..., skip:]
        # Gradient checkpointing recomputes the layer in backward, outside the context: the full layer then.
        every_token = plain or (self.training and self.model.language_model.gradient_checkpointing)
        with (
            torch_kernels() if plain else contextlib.nullcontext(),
            contextlib.nullcontext() if every_token else scoring_at(last - skip),
        ):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                pixel_values=None if pixel_values is None else pixel_values.to(self.dtype),
                image_grid_thw=image_grid_thw,
                past_key_values=past,
                use_cache=past is not None,
            )
        if every_token:
            rows = torch.arange(len(last), device=last.device)
            return out.last_hidden_state[rows if read_at is None else rows.unsqueeze(1), last]
        return out.last_hidden_state[:, 0] if read_at is None else out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        read_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw rewards, shape [batch]; with ``read_at`` (step-tag positions [batch, k]) the head's logit at
        each, shape [batch, k] (training a process model)."""
        hidden = self.hidden_states(
            input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw, read_at=read_at
        )
        if pixel_values is None and self.vision_in_every_step and self.training:
            hidden = hidden + 0.0 * self._dummy_vision_output()
        return self.reward(hidden)

    def _dummy_vision_output(self) -> torch.Tensor:
        vision = self.config.vision_config
        merge = vision.spatial_merge_size
        patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
        pixels = torch.zeros((merge * merge, patch_dim), device=self.device, dtype=self.dtype)
        grid = torch.tensor([[1, merge, merge]], device=self.device)
        features = self.model.get_image_features(pixels, grid, return_dict=True).pooler_output
        return torch.cat(list(features)).sum()

    @torch.inference_mode()
    def score_batch(
        self, samples: list[EncodedSample], padding_side: Literal["left", "right"] = "right", plain: bool = False
    ) -> list[float]:
        """Score encoded samples as one padded batch; rewards in input order (``plain``: see
        :meth:`hidden_states`)."""
        batch = collate(samples, self.config.text_config.pad_token_id, padding_side)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        slots = row_slots([s.adapter for s in samples])
        if self._packs(samples, padding_side, plain, slots):
            return self._score_packed(samples, batch)
        opening = self.opening
        if plain or padding_side != "right" or opening is None or slots is not None or not opening.starts(samples):
            opening = None  # (the opening's cache is the base's: an adapter changes its keys and values)
        else:
            self.opening_batches += 1
        with rows_adapters(slots):
            if samples[0].read_at is not None:  # a process model: the head at every step tag of each row
                read_at = read_positions(samples, padding_side).to(self.device)
                rewards = self.reward(self.hidden_states(**batch, plain=plain, opening=opening, read_at=read_at))
                rows = rewards.float().cpu().tolist()
                return [row[: len(s.read_at)] for row, s in zip(rows, samples, strict=True)]
            return self.reward(self.hidden_states(**batch, plain=plain, opening=opening)).float().cpu().tolist()

    def _packs(self, samples: list[EncodedSample], padding_side: str, plain: bool, slots: Any) -> bool:
        """Whether to pack this batch: packing is on, the batch would carry padding, every row is the base
        model's (an adapter is chosen per row), and the language model attends with
        :mod:`.causal_attention` (which knows packed rows)."""
        lengths = [s.num_tokens for s in samples]
        return (
            self.pack_batches
            and not plain
            and padding_side == "right"
            and slots is None
            and max(lengths) * len(lengths) > sum(lengths)
            and self.model.language_model.config._attn_implementation == BLOCKED_ATTENTION
        )

    def _score_packed(self, samples: list[EncodedSample], batch: dict[str, torch.Tensor]) -> list:
        """A right-padded batch's samples scored packed end to end in one row (see :mod:`.packing`)."""
        steps = samples[0].read_at is not None
        positions = self.position_ids(
            batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch.get("image_grid_thw")
        )
        packed = pack(batch, positions, [list(s.read_at) for s in samples] if steps else None)
        pixels = batch.get("pixel_values")
        self.packed_batches += 1
        with packed_segments(packed.segments), scoring_at(packed.scored):
            hidden = self.model(
                input_ids=packed.input_ids,
                attention_mask=None,
                position_ids=packed.positions,
                pixel_values=None if pixels is None else pixels.to(self.dtype),
                image_grid_thw=batch.get("image_grid_thw"),
                use_cache=False,
            ).last_hidden_state[0]
        rewards = self.reward(hidden).float().cpu().tolist()
        if not steps:
            return rewards
        bounds = list(itertools.accumulate(packed.reads_per_sample, initial=0))
        return [rewards[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    @torch.inference_mode()
    def cache_opening(self, input_ids: torch.Tensor | None) -> None:
        """Compute the key/value cache of ``input_ids`` (text every sample without its own system prompt
        starts with: :func:`~vlreward.service.model.formatting.template_opening`) once; :meth:`score_batch`
        continues from it where every row starts with those tokens (15 of the bench mix's 358 tokens per
        sample). None forgets it."""
        if input_ids is None or len(input_ids) == 0:
            self.opening = None
            return
        ids = input_ids.to(self.device).unsqueeze(0)
        positions = torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
        cache = self.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=True
        ).past_key_values
        self.opening = CachedOpening(input_ids.cpu(), cache_layers(cache))

    @torch.inference_mode()
    def score_shared_prefix(
        self, samples: list[EncodedSample], max_batch_size: int | None = None, max_batch_tokens: int | None = None
    ) -> list[float]:
        """Score candidates that share a prefix (prompt + images) by running the prefix once.

        The prefix's key/value cache is computed once and every candidate's remaining tokens continue
        from it, so the vision tower and the prompt run once instead of once per candidate. Candidates
        run in chunks of at most ``max_batch_size`` whose own tokens (padded) stay within
        ``max_batch_tokens`` and whose copies of the prefix's cache stay within ``PREFIX_COPY_BYTES`` (64
        candidates of an 8k prefix would otherwise copy a 7B model's cache 64 times at once); a candidate
        repeated runs once. Gives the same scores as
        :meth:`score_batch` (within float tolerance).
        """
        slots = row_slots([s.adapter for s in samples])
        if isinstance(slots, torch.Tensor):  # candidates of different adapters share no computed prefix
            return self.score_batch(samples)
        with rows_adapters(slots):
            return self._score_shared_prefix(samples, max_batch_size, max_batch_tokens)

    def _score_shared_prefix(
        self, samples: list[EncodedSample], max_batch_size: int | None, max_batch_tokens: int | None
    ) -> list[float]:
        prefix_len = shared_prefix_length([s.input_ids for s in samples])
        first = samples[0]
        if first.image_grid_thw is not None and int(first.mm_token_type_ids[prefix_len:].sum()) != 0:
            return self.score_batch(samples)  # images after the shared part: nothing to share safely
        prefix_len = min(prefix_len, min(s.num_tokens for s in samples) - 1)  # every candidate keeps >= 1 token
        steps = first.read_at is not None  # a process model: every step tag is read, so none in the prefix
        if steps:
            prefix_len = min(prefix_len, min(s.read_at[0] for s in samples))
        if prefix_len <= 0:
            return self.score_batch(samples)
        device = self.device
        prefix_ids = first.input_ids[:prefix_len].unsqueeze(0).to(device)
        prefix_types = first.mm_token_type_ids[:prefix_len].unsqueeze(0).to(device)
        prefix_mask = torch.ones_like(prefix_ids)
        grid = None if first.image_grid_thw is None else first.image_grid_thw.to(device)
        prefix_positions = self.position_ids(prefix_ids, prefix_mask, prefix_types, grid)
        pixels = None if first.pixel_values is None else first.pixel_values.to(device, self.dtype)
        prefix = cache_layers(
            self.model(
                input_ids=prefix_ids,
                attention_mask=prefix_mask,
                position_ids=prefix_positions,
                pixel_values=pixels,
                image_grid_thw=grid,
                use_cache=True,
            ).past_key_values
        )
        self.shared_prefix_runs += 1
        start = int(prefix_positions.max()) + 1  # text after the prefix continues after its largest position
        # Identical candidates (best-of-N and GRPO samples repeat) run once and tie exactly.
        keys = [tuple(s.input_ids[prefix_len:].tolist()) for s in samples]
        unique = list(dict.fromkeys(keys))
        reads = (
            {key: [p - prefix_len for p in s.read_at] for key, s in zip(keys, samples, strict=True)} if steps else {}
        )
        # A chunk computes its candidates' own tokens (padded: the token budget) and holds a copy of the
        # prefix's cache per candidate (memory: PREFIX_COPY_BYTES).
        width = max(len(key) for key in unique)
        by_tokens = len(unique) if max_batch_tokens is None else max_batch_tokens // width
        by_memory = PREFIX_COPY_BYTES // (prefix_len * self.cache_bytes_per_token)
        chunk = max(1, min(max_batch_size or len(unique), by_tokens, by_memory))
        scores: list = []
        for offset in range(0, len(unique), chunk):
            chunk_keys = unique[offset : offset + chunk]
            suffixes = [torch.tensor(key, dtype=torch.long) for key in chunk_keys]
            read_at = [reads[key] for key in chunk_keys] if steps else None
            scores += self._score_suffixes(cache_for_rows(prefix, len(suffixes)), suffixes, prefix_len, start, read_at)
        by_key = dict(zip(unique, scores, strict=True))
        return [by_key[key] for key in keys]

    @property
    def cache_bytes_per_token(self) -> int:
        """Bytes of key/value cache one token takes (every layer's keys and values)."""
        text = self.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * self.dtype.itemsize

    def _score_suffixes(
        self,
        cache: Any,
        suffixes: list[torch.Tensor],
        prefix_len: int,
        start: int,
        read_at: list[list[int]] | None = None,
    ) -> list:
        """Continue a prefix cache of one row per suffix with each suffix (right-padded); rewards in order (with
        ``read_at``, a process model's step-tag positions in each suffix: each suffix's step logits)."""
        device = self.device
        rows = len(suffixes)
        width = max(len(s) for s in suffixes)
        suffix_ids = torch.full((rows, width), self.config.text_config.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            suffix_ids[row, : len(suffix)] = suffix
            suffix_mask[row, : len(suffix)] = 1
        positions = (start + torch.arange(width)).view(1, 1, -1).expand(3, rows, -1)
        mask = torch.cat([torch.ones((rows, prefix_len), dtype=torch.long), suffix_mask], dim=1)
        if read_at is None:
            scored = suffix_mask.sum(-1) - 1
        else:
            scored = padded_positions(read_at)
        with scoring_at(scored.to(device)):
            hidden = self.model(
                input_ids=suffix_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        if read_at is None:
            return self.reward(hidden[:, 0]).float().cpu().tolist()
        rows = self.reward(hidden).float().cpu().tolist()
        return [row[: len(r)] for row, r in zip(rows, read_at, strict=True)]


def shared_prefix_length(sequences: list[torch.Tensor]) -> int:
    """Length of the longest common prefix of token sequences."""
    length = min(len(s) for s in sequences)
    first = sequences[0]
    for other in sequences[1:]:
        differ = (first[:length] != other[:length]).nonzero()
        if len(differ):
            length = int(differ[0])
    return length
