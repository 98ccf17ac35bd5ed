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
    load_verdict_rows,
    load_weights,
    read_config,
    write_weights,
)
from vlreward.service.model.encoding import EncodedSample, collate, encode_shared
from vlreward.service.model.formatting import format_judged_orders, format_sample
from vlreward.service.prepare import load_images
from vlreward.training.data.schema import PreferenceRecord

POINTWISE, PAIRWISE = "pointwise", "pairwise"


@dataclass
class JudgeExample:
    """One question the judge learns to answer: its input and the index of the right verdict token among
    the judge's outputs."""

    encoded: EncodedSample
    form: str
    target: int


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
    return [JudgeExample(e, form, target) for e, (_, form, target) in zip(encoded, questions, strict=True)]


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

    def __call__(self, records: list[list[JudgeExample]]) -> dict[str, torch.Tensor]:
        examples = [example for questions in records for example in questions]
        batch = collate([e.encoded for e in examples], self.pad_token_id, padding_side="right")
        batch["targets"] = torch.tensor([e.target for e in examples])
        batch["pointwise"] = torch.tensor([e.form == POINTWISE for e in examples])
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


def heldout_preferences(model: Any, dataset: JudgeDataset, batch_records: int = 8) -> list[tuple[float, float]]:
    """Each held-out pair's (P(chosen > rejected), P(rejected > chosen)), asked in both orders and debiased,
    read from logits as the server reads them."""
    judge = dataset.judge
    scores: list[tuple[float, float]] = []
    for start in range(0, len(dataset), batch_records):
        records = [dataset[i] for i in range(start, min(len(dataset), start + batch_records))]
        logits = model.score_batch([e.encoded for questions in records for e in questions])
        row = 0
        for questions in records:
            pairwise = [logits[row + k] for k, e in enumerate(questions) if e.form == PAIRWISE]
            row += len(questions)
            prob = judge.prob_a(pairwise)
            scores.append((prob, 1.0 - prob))
    return scores


def judge_model_from_base(base_dir: str | Path, judge: JudgeDeclaration, device: str = "cpu") -> tuple[Any, Any]:
    """A judge to train from a base directory (a generative base, or a reward checkpoint whose backbone is
    kept and whose head is not): its head starts as the base's LM head rows of the verdict tokens."""
    from transformers import AutoProcessor

    base_dir = Path(base_dir)
    config = read_config(base_dir)
    processor = AutoProcessor.from_pretrained(base_dir)
    model = build_judge_model(config, judge, processor.tokenizer, device, torch.float32, base_dir)
    tensors = iter_checkpoint_tensors(base_dir)
    backbone = ((name, t) for name, t in tensors if not name.startswith("language_model.score"))
    load_weights(model, backbone, base_dir, allow_missing_head=True)
    load_verdict_rows(model, base_dir, checkpoint_tensor_names(base_dir), model.verdict_ids)
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
        if not k.startswith("score.")
    }
    names = checkpoint_tensor_names(base_dir)
    if LM_HEAD_WEIGHT in names:
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
