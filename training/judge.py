"""Training a generative judge from preference pairs: the judge's questions, the loss on its verdict token,
its held-out pairwise accuracy read from logits, and its export as a generative checkpoint.

Each pair becomes the judge's pairwise question in both orders (the chosen response first: answer 1;
second: answer 2) and, where the record rates its responses (``scores: {"chosen": x, "rejected": y}``), its
pointwise question for each (the nearest rating token). The loss is cross-entropy on the verdict token
only, over the verdict tokens of the question's form: what the served judge reads (a softmax restricted to
them). The questions are formatted and encoded by the service's own code (:mod:`vlreward.service.model`),
so a trained judge sees exactly what it will be served with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vlreward.service.judge import JudgeDeclaration
from vlreward.service.kinds import JUDGE, declare_kind
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import (
    BASE_ARCHITECTURE,
    LM_HEAD_WEIGHT,
    build_judge_model,
    checkpoint_key,
    checkpoint_tensor_names,
    iter_checkpoint_tensors,
    load_lm_head,
    load_verdict_rows,
    load_weights,
    read_config,
    write_weights,
)
from vlreward.service.model.encoding import EncodedSample, collate, encode_shared
from vlreward.service.model.formatting import IM_END, format_judged_orders, format_sample
from vlreward.service.prepare import load_images
from vlreward.training.data.schema import PreferenceRecord

POINTWISE, PAIRWISE = "pointwise", "pairwise"


@dataclass
class JudgeExample:
    """One question the judge learns to answer: its input and the index of the right verdict token among
    the judge's outputs; or, with ``labels``, an answer it learns to write (generate mode)."""

    encoded: EncodedSample
    form: str
    target: int
    labels: torch.Tensor | None = None
    """An answer's tokens to learn (critique, answer prefix, verdict, end of turn); -100 on the question's."""


CRITIQUE_KEYS = {PAIRWISE: ("chosen_first", "rejected_first"), POINTWISE: ("chosen", "rejected")}
"""A record's ``critiques`` keys: the pairwise question in each order, then the pointwise question of each side."""


def written_answer(judge: JudgeDeclaration, form: str, critique: str, verdict: str) -> str:
    """What a judge writes in generate mode after its ``generate_prefix``: the critique, then on a line of its
    own the form's answer prefix and the verdict token (what its default parse rule reads), then the turn's end."""
    return f"{critique}\n{judge.answer_prefix(form)}{verdict}{IM_END}"


def answer_example(question: Any, answer: str, processor: Any, form: str, target: int) -> JudgeExample:
    """A generate-mode question (its text ends where the judge starts writing) and the answer to learn."""
    tokenizer = processor.tokenizer
    asked = tokenizer(question.text, add_special_tokens=False)["input_ids"]
    whole = tokenizer(question.text + answer, add_special_tokens=False)["input_ids"]
    if whole[: len(asked)] != asked:
        raise ValueError(f"the answer merges with the question's last token: {answer[:40]!r}")
    encoded = encode_shared([type(question)(text=question.text + answer, images=question.images)], processor)[0]
    labels = torch.full_like(encoded.input_ids, -100)
    written = len(whole) - len(asked)
    labels[-written:] = encoded.input_ids[-written:]
    return JudgeExample(encoded, form, target, labels)


def critique_examples(
    record: PreferenceRecord, chosen: Any, rejected: Any, images: list, processor: Any, judge: JudgeDeclaration
) -> list[JudgeExample]:
    """The answers a record's ``critiques`` teach: each question of generate mode, answered with its critique
    and the right verdict."""
    critiques = record.critiques or {}
    writer = judge.for_generation()
    n = len(judge.ratings)
    examples = []
    if judge.compares and not record.tie:
        orders = format_judged_orders(chosen, rejected, images, processor, writer)
        for question, key, target in zip(orders, CRITIQUE_KEYS[PAIRWISE], (n, n + 1), strict=True):
            if key in critiques:
                answer = written_answer(judge, PAIRWISE, critiques[key], judge.pair_tokens[target - n])
                examples.append(answer_example(question, answer, processor, PAIRWISE, target))
    if judge.rates and record.scores:
        tokens = list(judge.ratings)
        for key, sample in zip(CRITIQUE_KEYS[POINTWISE], (chosen, rejected), strict=True):
            if key in critiques and key in record.scores:
                target = nearest_rating(judge, record.scores[key])
                question = format_sample(sample, images, processor, judge=writer)
                answer = written_answer(judge, POINTWISE, critiques[key], tokens[target])
                examples.append(answer_example(question, answer, processor, POINTWISE, target))
    return examples


def has_critiques(folder: str | Path) -> bool:
    """Whether a dataset folder's records carry critiques (a judge trained on it then learns to write them)."""
    from vlreward.training.data.schema import read_records

    return any(record.critiques for record in read_records(Path(folder)))


def nearest_rating(judge: JudgeDeclaration, value: float) -> int:
    """The index of the rating token whose value is nearest ``value``."""
    values = list(judge.ratings.values())
    return min(range(len(values)), key=lambda k: abs(values[k] - value))


def judge_examples(record: PreferenceRecord, root: Path, processor: Any, judge: JudgeDeclaration) -> list[JudgeExample]:
    """A record's questions: pairwise in both orders (not for a tie), pointwise where it rates a response;
    the images decoded and preprocessed once for all of them."""
    chosen, rejected = record.sample(record.chosen, root=root), record.sample(record.rejected, root=root)
    images = load_images(chosen.image_refs(), chosen.image_params(), MediaPolicy(media_root=root), 1 << 30, None)
    n = len(judge.ratings)
    questions = []
    if judge.compares and not record.tie:  # chosen first: answer 1; second: answer 2
        orders = format_judged_orders(chosen, rejected, images, processor, judge)
        questions += [(question, PAIRWISE, target) for question, target in zip(orders, (n, n + 1), strict=True)]
    if judge.rates:
        for side, sample in (("chosen", chosen), ("rejected", rejected)):
            if record.scores and side in record.scores:
                target = nearest_rating(judge, record.scores[side])
                questions.append((format_sample(sample, images, processor, judge=judge), POINTWISE, target))
    if not questions:
        return []
    encoded = encode_shared([question for question, _, _ in questions], processor)
    examples = [JudgeExample(e, form, target) for e, (_, form, target) in zip(encoded, questions, strict=True)]
    if record.critiques:
        examples += critique_examples(record, chosen, rejected, images, processor, judge)
    return examples


class JudgeDataset(Dataset):
    """A dataset folder's records, each encoded as its questions on first access and kept."""

    def __init__(self, records: list[PreferenceRecord], root: Path, processor: Any, judge: JudgeDeclaration):
        self.records = records
        self.root = Path(root)
        self.processor = processor
        self.judge = judge
        self.cache: dict[int, list[JudgeExample]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> list[JudgeExample]:
        if index not in self.cache:
            self.cache[index] = judge_examples(self.records[index], self.root, self.processor, self.judge)
        return self.cache[index]


class JudgeCollator:
    """Records' questions -> one padded batch, with each row's target and whether it is pointwise."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, records: list[list[JudgeExample]]) -> dict[str, Any]:
        examples = [example for questions in records for example in questions if example.labels is None]
        batch: dict[str, Any] = collate([e.encoded for e in examples], self.pad_token_id, padding_side="right")
        batch["targets"] = torch.tensor([e.target for e in examples])
        batch["pointwise"] = torch.tensor([e.form == POINTWISE for e in examples])
        answers = [example for questions in records for example in questions if example.labels is not None]
        if answers:  # answers to write (generate mode): their own padded batch and labels
            batch["answers"] = collate([e.encoded for e in answers], self.pad_token_id, padding_side="right")
            width = batch["answers"]["input_ids"].shape[1]
            labels = torch.full((len(answers), width), -100, dtype=torch.long)
            for row, example in enumerate(answers):
                labels[row, : len(example.labels)] = example.labels
            batch["answer_labels"] = labels
        return batch


def judge_loss(
    logits: torch.Tensor, targets: torch.Tensor, pointwise: torch.Tensor, ratings: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the verdict token over its form's verdict tokens (the ratings for a pointwise row,
    the two answers for a pairwise one), and the share of pairwise rows answered right."""
    columns = torch.arange(logits.shape[-1], device=logits.device)
    allowed = torch.where(pointwise.unsqueeze(-1), columns < ratings, columns >= ratings)
    loss = F.cross_entropy(logits.masked_fill(~allowed, float("-inf")), targets)
    pairwise = ~pointwise
    right = (logits[:, ratings:].argmax(-1) + ratings == targets) & pairwise
    return loss, right.float().sum() / pairwise.sum().clamp(min=1)


def answer_loss(model: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answers a judge learns to write (critique + verdict), next token over the whole
    vocabulary: the LM head's rows, the verdict tokens' being the judge's head (trained by both losses)."""
    hidden = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=model.position_ids(
            batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch.get("image_grid_thw")
        ),
        pixel_values=None if batch.get("pixel_values") is None else batch["pixel_values"].to(model.dtype),
        image_grid_thw=batch.get("image_grid_thw"),
    ).last_hidden_state
    verdicts = torch.tensor(model.verdict_ids, device=hidden.device)
    weight = model.lm_head.weight.index_copy(0, verdicts, model.score.weight.to(model.lm_head.weight.dtype))
    logits = hidden[:, :-1].to(weight.dtype) @ weight.T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def heldout_preferences(model: Any, dataset: JudgeDataset, batch_records: int = 8) -> list[tuple[float, float]]:
    """Each held-out pair's (P(chosen > rejected), P(rejected > chosen)), asked in both orders and debiased,
    read from logits as the server reads them."""
    judge = dataset.judge
    scores: list[tuple[float, float]] = []
    for start in range(0, len(dataset), batch_records):
        records = [
            [e for e in dataset[i] if e.labels is None]  # the questions read from logits, not answers to write
            for i in range(start, min(len(dataset), start + batch_records))
        ]
        logits = model.score_batch([e.encoded for questions in records for e in questions])
        row = 0
        for questions in records:
            pairwise = [logits[row + k] for k, e in enumerate(questions) if e.form == PAIRWISE]
            row += len(questions)
            prob = judge.prob_a(pairwise)
            scores.append((prob, 1.0 - prob))
    return scores


def judge_model_from_base(
    base_dir: str | Path, judge: JudgeDeclaration, device: str = "cpu", critiques: bool = False
) -> tuple[Any, Any]:
    """A judge to train from a base directory (a generative base, or a reward checkpoint whose backbone is
    kept and whose head is not): its head starts as the base's LM head rows of the verdict tokens. With
    ``critiques`` it also gets the base's whole LM head (float32, trainable: ``model.lm_head``), to learn to
    write critiques (a reward checkpoint has none: its input embeddings then, as a tied base's)."""
    from transformers import AutoProcessor

    base_dir = Path(base_dir)
    config = read_config(base_dir)
    processor = AutoProcessor.from_pretrained(base_dir)
    model = build_judge_model(config, judge, processor.tokenizer, device, torch.float32, base_dir)
    tensors = iter_checkpoint_tensors(base_dir)
    backbone = ((name, t) for name, t in tensors if not name.startswith("language_model.score"))
    load_weights(model, backbone, base_dir, allow_missing_head=True)
    names = checkpoint_tensor_names(base_dir)
    load_verdict_rows(model, base_dir, names, model.verdict_ids)
    if critiques:
        head = load_lm_head(model, base_dir, names).to(torch.float32).clone()
        model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False, dtype=torch.float32)
        with torch.no_grad():
            model.lm_head.weight.copy_(head)
    return model, processor


def save_judge_model(
    model: Any, processor: Any, directory: str | Path, judge: JudgeDeclaration, base_dir: Path
) -> Path:
    """Write a trained judge as a generative checkpoint (``Qwen2_5_VLForConditionalGeneration``) whose
    config.json declares it: the backbone as trained, and an untied LM head: the base's (its input
    embeddings when tied), the verdict tokens' rows replaced by the trained head's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        checkpoint_key(k): v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith(("score.", "lm_head."))
    }
    names = checkpoint_tensor_names(base_dir)
    if getattr(model, "lm_head", None) is not None:  # trained on critiques: the head as trained
        head = model.lm_head.weight.detach().to("cpu").clone()
    elif LM_HEAD_WEIGHT in names:
        head = next(t for name, t in iter_checkpoint_tensors(base_dir) if name == LM_HEAD_WEIGHT).clone()
    else:
        head = model.model.get_input_embeddings().weight.detach().to("cpu").clone()
    head = head.to(torch.float32)
    head[model.verdict_ids] = model.score.weight.detach().to("cpu", torch.float32)
    state[LM_HEAD_WEIGHT] = head.to(state["model.embed_tokens.weight"].dtype).contiguous()
    write_weights(state, directory)
    config = model.config.to_dict()
    for key in ("num_labels", "id2label", "label2id"):
        config.pop(key, None)
    config["architectures"] = [BASE_ARCHITECTURE]
    config["tie_word_embeddings"] = False
    config["text_config"]["tie_word_embeddings"] = False
    config = declare_kind(config, JUDGE, judge=judge)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor.save_pretrained(directory)
    return directory
