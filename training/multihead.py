"""Training a multi-head reward model: K named linear heads on one backbone, one loss per head.

Each pair trains the heads it has labels for, and only those (the others are masked):

- a *preference* head (``record.head``; a pair without ``head`` or ``attributes`` trains the default head):
  the pairwise loss -log sigmoid(s_chosen - s_rejected) of that head;
- a *rating* head (``record.attributes[head]`` = (chosen's rating, rejected's)): the squared error of the
  head's score against each response's rating (HelpSteer2-style attribute regression).

The batch's loss is the mean pairwise loss over its preference labels plus the mean squared error over its
ratings. Held out, each head is measured on the pairs labelled for it: a pair is right when the head scores
the response its label prefers strictly higher (rating ties are left out).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vlreward.service.kinds import Heads
from vlreward.service.model.encoding import EncodedSample
from vlreward.training.collator import PairCollator, PairDataset
from vlreward.training.data.schema import PreferenceRecord

RUN_HEADS_FILE = "heads.json"
"""In a training run's folder: the heads a multi-head run trains (its export reads them)."""


class HeadLabelError(ValueError):
    """A record labels a head the model does not have."""


def pair_labels(record: PreferenceRecord, heads: Heads) -> tuple[int, list[float]]:
    """A pair's preference head (its index, -1: none) and its ratings row: chosen's then rejected's per head
    (NaN: no rating), length 2K."""
    unknown = [h for h in [record.head, *(record.attributes or {})] if h is not None and h not in heads.names]
    if unknown:
        raise HeadLabelError(f"record {record.id!r} labels head {unknown[0]!r}; the heads are {list(heads.names)}")
    preference = record.head if record.head is not None else (None if record.attributes else heads.default)
    ratings = [math.nan] * (2 * len(heads.names))
    for head, (chosen, rejected) in (record.attributes or {}).items():
        k = heads.index(head)
        ratings[k], ratings[len(heads.names) + k] = chosen, rejected
    return (-1 if preference is None else heads.index(preference)), ratings


class LabelledPairs(Dataset):
    """A :class:`PairDataset` whose items also carry each pair's head labels (:func:`pair_labels`)."""

    def __init__(self, pairs: PairDataset, heads: Heads):
        self.pairs = pairs
        self.records = pairs.records
        self.labels = [pair_labels(record, heads) for record in pairs.records]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[EncodedSample, EncodedSample, int, list[float]]:
        chosen, rejected = self.pairs[index]
        return chosen, rejected, *self.labels[index]


class HeadCollator(PairCollator):
    """Pairs -> the pair batch plus ``pair_heads`` [n] (each pair's preference head, -1: none) and
    ``ratings`` [2n, K] (rows as the batch's: chosen then rejected; NaN: no rating)."""

    def __call__(self, pairs: list) -> dict[str, torch.Tensor]:
        batch = super().__call__([(chosen, rejected) for chosen, rejected, _, _ in pairs])
        heads = len(pairs[0][3]) // 2
        batch["pair_heads"] = torch.tensor([head for _, _, head, _ in pairs], dtype=torch.long)
        chosen = [ratings[:heads] for _, _, _, ratings in pairs]
        rejected = [ratings[heads:] for _, _, _, ratings in pairs]
        batch["ratings"] = torch.tensor(chosen + rejected, dtype=torch.float32)
        return batch


def multihead_loss(
    scores: torch.Tensor, pair_heads: torch.Tensor, ratings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss (mean pairwise loss of each pair's preference head + mean squared error of the
    ratings it has) and the share of labelled pairs its heads order right. ``scores``: [2n, K]."""
    n = len(pair_heads)
    chosen, rejected = scores[:n], scores[n:]
    loss = scores.new_zeros(())
    right: list[torch.Tensor] = []
    preferring = pair_heads >= 0
    if preferring.any():
        rows = preferring.nonzero().squeeze(-1)
        margins = chosen[rows, pair_heads[rows]] - rejected[rows, pair_heads[rows]]
        loss = loss - F.logsigmoid(margins).mean()
        right.append(margins > 0)
    rated = ~torch.isnan(ratings)
    if rated.any():
        loss = loss + ((scores - torch.nan_to_num(ratings)) ** 2)[rated].mean()
        ordered = rated[:n] & rated[n:] & (ratings[:n] != ratings[n:])
        if ordered.any():
            wanted = ratings[:n] > ratings[n:]
            right.append(((chosen > rejected) == wanted)[ordered])
    accuracy = torch.cat(right).float().mean() if right else scores.new_zeros(())
    return loss, accuracy


def head_accuracy(heads: Heads, records: list[PreferenceRecord], scores: list[tuple[list, list]]) -> dict[str, Any]:
    """Held-out accuracy of each head on the pairs labelled for it (its preference pairs, and its rated pairs
    whose ratings differ), with counts; ``overall``: the mean over heads with pairs."""
    per: dict[str, list[bool]] = {name: [] for name in heads.names}
    for record, (chosen, rejected) in zip(records, scores, strict=True):
        head, ratings = pair_labels(record, heads)
        if head >= 0:
            per[heads.names[head]].append(chosen[head] > rejected[head])
        for k, name in enumerate(heads.names):
            good, bad = ratings[k], ratings[len(heads.names) + k]
            if not math.isnan(good) and good != bad:
                per[name].append((chosen[k] > rejected[k]) == (good > bad))
    table = {name: {"accuracy": sum(v) / len(v), "n": len(v)} for name, v in per.items() if v}
    overall = sum(t["accuracy"] for t in table.values()) / max(1, len(table))
    return {"overall": overall, "heads": table}


def write_run_heads(run_dir: Path, heads: Heads) -> None:
    """Record that the run in ``run_dir`` trains a multi-head model with these heads (its export reads them)."""
    import json

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / RUN_HEADS_FILE).write_text(json.dumps(heads.declaration()) + "\n")


def run_heads(run_dir: Path) -> Heads | None:
    """The heads the run in ``run_dir`` trained (None: a one-head run)."""
    import json

    path = Path(run_dir) / RUN_HEADS_FILE
    if not path.is_file():
        return None
    declared = json.loads(path.read_text())
    return Heads(tuple(declared["names"]), declared["default"])


def different_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ (or that only one side has), sorted."""
    names = set(first) | set(second)
    return sorted(k for k in names if k not in first or k not in second or not torch.equal(first[k], second[k]))


def stack_heads(checkpoints: dict[str, Path], output: Path, default: str | None = None) -> Path:
    """One multi-head checkpoint from one-head reward checkpoints that share their backbone exactly (heads
    trained on a frozen backbone, linear probes): head ``name`` is that checkpoint's head (weight and bias, a
    zero bias where it has none), so its scores are that model's. Refuses checkpoints whose other tensors
    differ in any value: separately fine-tuned models share no forward pass. The tensors are held in memory."""
    from safetensors import safe_open

    from vlreward.service.model.checkpoint import (
        HEAD_BIAS,
        HEAD_WEIGHT,
        CheckpointError,
        copy_support_files,
        iter_checkpoint_tensors,
        read_config,
        weight_files,
        write_reward_config,
        write_weights,
    )
    from vlreward.service.model.probe import PROBE_FILE
    from vlreward.service.reference import REFERENCE_FILE

    heads = Heads(tuple(checkpoints), default or next(iter(checkpoints)))
    paths = [Path(p) for p in checkpoints.values()]
    state = dict(iter_checkpoint_tensors(paths[0]))
    head_prefix = HEAD_WEIGHT.rsplit(".", 1)[0]
    backbone = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    for name, path in zip(heads.names[1:], paths[1:], strict=True):
        other = {}
        for file in weight_files(path):
            with safe_open(file, "pt") as handle:
                other |= {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        differ = different_tensors(backbone, {k: v for k, v in other.items() if not k.startswith(head_prefix)})
        if differ:
            raise CheckpointError(f"{path} ({name!r}) has another backbone than {paths[0]} (e.g. {differ[0]}): "
                                  "heads stack only on one backbone")  # fmt: skip
        state[f"{name}/{HEAD_WEIGHT}"], state[f"{name}/{HEAD_BIAS}"] = other[HEAD_WEIGHT], other.get(HEAD_BIAS)
    first = heads.names[0]
    state[f"{first}/{HEAD_WEIGHT}"], state[f"{first}/{HEAD_BIAS}"] = state[HEAD_WEIGHT], state.get(HEAD_BIAS)
    weights = [state.pop(f"{n}/{HEAD_WEIGHT}") for n in heads.names]
    biases = [state.pop(f"{n}/{HEAD_BIAS}") for n in heads.names]
    state[HEAD_WEIGHT] = torch.cat(weights)
    state[HEAD_BIAS] = torch.cat([torch.zeros(1) if b is None else b for b in biases]).to(weights[0].dtype)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_weights(state, output)
    copy_support_files(paths[0], output)
    for stale in (PROBE_FILE, REFERENCE_FILE):  # the first model's: stamp the probe and calibrate again
        (output / stale).unlink(missing_ok=True)
    write_reward_config(read_config(paths[0]), output, heads=heads)
    return output
