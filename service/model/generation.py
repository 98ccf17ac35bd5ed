"""A judge's generate mode on transformers: the reward model's backbone with the checkpoint's whole LM head,
run by transformers' ``generate`` (batched, left-padded, key/value cache).

Each answer samples from its own ``torch.Generator`` seeded per answer (:class:`SeededSampler`), so a
seeded request's answers depend on its seed, not on which thread or batch ran them; ``generate`` itself
runs greedy over the sampler's choice. A :class:`threading.Event` stops a generation between tokens (the
request's deadline passed or its client left).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from vlreward.service.judge import Generation, GenerationParams
from vlreward.service.model.encoding import EncodedSample, collate
from vlreward.service.model.formatting import IM_END


class GenerationStopped(Exception):
    """A generation was stopped before it finished (its request's deadline passed or its client left)."""


class SeededSampler(LogitsProcessor):
    """Samples every row's next token from softmax(scores / temperature) with that row's generator (None:
    torch's global one) and leaves only the chosen token possible: greedy decoding then takes it."""

    def __init__(self, generators: list[torch.Generator | None], temperature: float):
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        rows = zip(probs, self.generators, strict=True)
        chosen = [torch.multinomial(row, 1, generator=generator) for row, generator in rows]
        only = torch.full_like(scores, float("-inf"))
        only[torch.arange(len(chosen)), torch.cat(chosen).to(scores.device)] = 0.0
        return only


class StopWhenSet(StoppingCriteria):
    """Every row is done as soon as ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generative_model(reward_model: Any, lm_head: torch.Tensor) -> Any:
    """A ``Qwen2_5_VLForConditionalGeneration`` around the reward model's backbone (shared, not copied) and
    ``lm_head`` ([vocab, hidden]): what ``generate`` runs."""
    import copy

    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    config = copy.deepcopy(reward_model.config)  # built with stock attention; the backbone keeps its own
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.model = reward_model.model
    model.lm_head = nn.Linear(lm_head.shape[1], lm_head.shape[0], bias=False, device="meta")
    model.lm_head.weight = nn.Parameter(lm_head, requires_grad=False)
    model.generation_config = GenerationConfig()
    return model.eval()


class JudgeGenerator:
    """Generates a judge's answers for encoded questions, ``max_batch_size`` answers per ``generate`` call."""

    def __init__(self, reward_model: Any, lm_head: torch.Tensor, tokenizer: Any, max_batch_size: int):
        self.model = generative_model(reward_model, lm_head)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        ends = [tokenizer.convert_tokens_to_ids(token) for token in (IM_END, "<|endoftext|>")]
        self.eos_ids = [token for token in ends if token is not None and token != tokenizer.unk_token_id]
        self.pad_id = reward_model.config.text_config.pad_token_id
        self.stopped = 0
        """Generations stopped before they finished (a deadline passed or a client left)."""

    @torch.inference_mode()
    def generate(
        self, questions: list[EncodedSample], params: GenerationParams, stop: threading.Event | None = None
    ) -> list[list[Generation]]:
        """``params.samples`` answers to every question, in order. Raises :class:`GenerationStopped` when
        ``stop`` is set before the answers are complete."""
        stop = stop or threading.Event()
        rows = [(q, s) for q in range(len(questions)) for s in range(params.samples)]
        answers: list[Generation] = []
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            answers += self._generate_rows([questions[q] for q, _ in chunk], chunk, params, stop)
        return params.per_question(answers)

    def _generate_rows(
        self, samples: list[EncodedSample], rows: list[tuple[int, int]], params: GenerationParams, stop: threading.Event
    ) -> list[Generation]:
        device = self.model.lm_head.weight.device
        batch = {k: v.to(device) for k, v in collate(samples, self.pad_id, padding_side="left").items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.model.dtype)
        processors = LogitsProcessorList()
        if params.temperature > 0:
            generators = []
            for question, sample in rows:
                seed = params.sample_seed(question, sample)
                generators.append(None if seed is None else torch.Generator().manual_seed(seed))
            processors.append(SeededSampler(generators, params.temperature))
        out = self.model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]),
        )
        if stop.is_set():
            self.stopped += 1
            raise GenerationStopped("generation stopped")
        prompt_length = batch["input_ids"].shape[1]
        return [self._answer(row[prompt_length:].tolist(), params.max_new_tokens) for row in out]

    def _answer(self, tokens: list[int], max_new_tokens: int) -> Generation:
        """One row's new tokens as an answer: its text up to its end token (padding after it dropped)."""
        ended = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
        kept = tokens if ended is None else tokens[:ended]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        written = len(tokens) if ended is None else ended + 1  # its end token counts, as vLLM counts it
        return Generation(text=text, truncated=ended is None and len(tokens) >= max_new_tokens, tokens=written)
