"""Reward functions for TRL's ``GRPOTrainer`` backed by a vlreward server.

    from vlreward.adapters.trl import VLRewardFunction
    trainer = GRPOTrainer(model=..., reward_funcs=[VLRewardFunction("http://rm:8000")], ...)

TRL calls a reward function with keywords only: ``prompts``, ``completions``, ``completion_ids`` and
every other dataset column (``image``/``images`` among them) as lists of B×G values, plus
``trainer_state``, ``log_extra`` and ``log_metric``. Prompts and completions are strings (standard
datasets) or message lists (conversational; TRL has put the images into the prompt as
``{"type": "image", "image": PIL}`` blocks). Each step becomes one ``/score`` call (the client chunks it
to the server's ``max_items``); an item the server cannot score — or whose images cannot be encoded —
gets ``None``, which TRL reads as "no reward for this sample". A call that fails as a whole (the server
unreachable past the client's deadline) raises: a training run should stop rather than learn from
rewards that are not there. :class:`AsyncVLRewardFunction` is the same with ``async def``, so TRL runs it
concurrently with its other async reward functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from vlreward.adapters.conversation import against_reference, to_messages, with_steps
from vlreward.client import AsyncRewardClient, RewardClient, encode_image

log = logging.getLogger(__name__)


def _row_images(index: int, columns: dict[str, Any]) -> list[Any]:
    """The images of row ``index`` from TRL's ``images`` (a list per row) or ``image`` (one per row) column."""
    if columns.get("images") is not None:
        return list(columns["images"][index] or [])
    if columns.get("image") is not None and columns["image"][index] is not None:
        return [columns["image"][index]]
    return []


def _has_image_blocks(conversation: list[dict]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(b.get("type") in ("image", "image_url") for b in m["content"])
        for m in conversation
    )


def trl_item(prompt: str | list[dict], completion: str | list[dict], images: list[Any]) -> dict:
    """One Sample dict for ``/score`` from a TRL prompt and completion (standard or conversational)."""
    if isinstance(prompt, str) and isinstance(completion, str):
        item: dict[str, Any] = {"prompt": prompt, "response": completion}
        if images:
            item["images"] = [encode_image(i) for i in images]
        return item
    if isinstance(prompt, str) or isinstance(completion, str):
        raise ValueError("prompt and completion must both be strings or both be message lists")
    # TRL has already put the image column into conversational prompts as image blocks; the column
    # only fills blocks without a payload, or is placed before the first user text when there are none.
    conversation = list(prompt) + list(completion)
    if _has_image_blocks(prompt) and all(
        block.get("image") is not None
        for m in prompt
        if isinstance(m.get("content"), list)
        for block in m["content"]
        if block.get("type") == "image"
    ):
        images = []
    return {"messages": to_messages(conversation, images)}


class _RewardFunctionBase:
    """Builds the items of a step and turns a ScoreResponse into TRL's ``list[float | None]``.
    ``step_separator`` (a process model): each completion is split into steps there, and its reward is
    their aggregate. ``reference_column``: the dataset column holding a reference answer per row; the reward
    is then P(completion better than the reference) from ``/compare`` (a judge's debiased verdict). ``head`` and
    ``normalize`` are passed to ``/score`` (a multi-head model's head; ``zscore``)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        name: str = "vlreward",
        step_separator: str | None = None,
        reference_column: str | None = None,
        head: str | None = None,
        normalize: str | None = None,
        **client_options: Any,
    ):
        self.step_separator = step_separator
        self.reference_column = reference_column
        self.head = head
        """A multi-head model's head the reward is (None: its default)."""
        self.normalize = normalize
        """``zscore``: rewards on the model's reference scale (None: the server's setting)."""
        self.base_url = base_url
        """One server's URL, or several replicas' (a list, or separated by commas): calls are spread over them."""
        self.__name__ = name  # TRL names the reward column and its metrics after this
        self._client_options = client_options

    def _items(
        self, prompts: list, completions: list, columns: dict[str, Any]
    ) -> tuple[list[dict], list[int], dict[int, str]]:
        """Items that could be built, their row indices, and a reason for each row that could not."""
        items, rows, failed = [], [], {}
        for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            try:
                item = trl_item(prompt, completion, _row_images(index, columns))
                if self.reference_column is not None:
                    items.append(against_reference(item, str(columns[self.reference_column][index])))
                else:
                    items.append(with_steps(item, self.step_separator))
                rows.append(index)
            except (ValueError, TypeError, OSError, KeyError) as error:
                failed[index] = str(error)
        return items, rows, failed

    def _rewards(
        self,
        size: int,
        rows: list[int],
        scores: list[float | None],
        failed: dict[int, str],
        columns: dict,
        started: float,
    ) -> list[float | None]:
        rewards: list[float | None] = [None] * size
        for row, score in zip(rows, scores, strict=True):
            rewards[row] = score
        for row, reason in failed.items():
            log.warning("vlreward: row %d not sent: %s", row, reason)
        log_metric = columns.get("log_metric")
        if log_metric is not None:
            log_metric(f"{self.__name__}/latency_s", time.monotonic() - started)
            log_metric(f"{self.__name__}/unscored_fraction", sum(r is None for r in rewards) / max(size, 1))
        return rewards


class VLRewardFunction(_RewardFunctionBase):
    """A synchronous TRL reward function (one pooled client per instance)."""

    def __init__(self, base_url: str | Sequence[str], name: str = "vlreward", **options: Any):
        super().__init__(base_url, name, **options)
        self._client: RewardClient | None = None

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
        return self.scored(prompts, completions, columns)[0]

    def scored(self, prompts: list, completions: list, columns: dict) -> tuple[list[float | None], list[dict | None]]:
        """Each row's reward and its ``details`` (None where the server gave none)."""
        started = time.monotonic()
        if self._client is None:
            self._client = RewardClient(self.base_url, **self._client_options)
        items, rows, failed = self._items(prompts, completions, columns)
        details: list[dict | None] = [None] * len(prompts)
        if not items:
            scores = []
        elif self.reference_column is not None:
            scores = [result.prob_a for result in self._client.compare(items).results]
        else:
            response = self._client.score(items, on_error="null", normalize=self.normalize, head=self.head)
            scores = response.scores
            for row, detail in zip(rows, response.details or [None] * len(rows), strict=True):
                details[row] = detail
        return self._rewards(len(prompts), rows, scores, failed, columns, started), details


class VLRewardComponents:
    """One TRL reward function per component of a reward, so that ``GRPOConfig.reward_weights`` weigh them and
    TRL logs each: a multi-head model's heads (``details[i].heads``) or an ensemble's members (their z-scores,
    ``details[i].members``). The functions of one step share one ``/score`` call (TRL calls them one after the
    other with the same ``prompts`` and ``completions``)::

        components = VLRewardComponents("http://rm:8000", ["helpful", "safety"], model="rm")
        trainer = GRPOTrainer(..., reward_funcs=components.reward_funcs,
                              args=GRPOConfig(reward_weights=[0.7, 0.3], ...))
    """

    def __init__(self, base_url: str | Sequence[str], components: Sequence[str], name: str = "vlreward", **options):
        self.components = list(components)
        self.scorer = VLRewardFunction(base_url, name, **options)
        self._last: tuple[list, list, list[dict | None]] | None = None

    @property
    def reward_funcs(self) -> list:
        """The reward functions, one per component, named ``<name>_<component>`` (TRL's reward columns)."""
        return [self._function(component) for component in self.components]

    def _function(self, component: str):
        def reward(prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
            details = self._details(prompts, completions, columns)
            return [None if d is None else component_of(d, component) for d in details]

        reward.__name__ = f"{self.scorer.__name__}_{component}"
        return reward

    def _details(self, prompts: list, completions: list, columns: dict) -> list[dict | None]:
        last = self._last
        if last is None or last[0] is not prompts or last[1] is not completions:  # a new step: score it once
            self._last = last = (prompts, completions, self.scorer.scored(prompts, completions, columns)[1])
        return last[2]


def component_of(details: dict, component: str) -> float:
    """One component of an item's ``details``: a head's score, or an ensemble member's z-score."""
    for key in ("heads", "members"):
        if component in (details.get(key) or {}):
            return float(details[key][component])
    raise KeyError(f"no component {component!r} in the server's details (it has {sorted(details)})")


class AsyncVLRewardFunction(_RewardFunctionBase):
    """An ``async`` TRL reward function: TRL awaits it on its own event loop, beside other async ones."""

    def __init__(self, base_url: str | Sequence[str], name: str = "vlreward", **options: Any):
        super().__init__(base_url, name, **options)
        self._client: AsyncRewardClient | None = None

    async def __call__(self, prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
        started = time.monotonic()
        if self._client is None:  # created on TRL's loop, which it keeps for the whole run
            self._client = AsyncRewardClient(self.base_url, **self._client_options)
        items, rows, failed = self._items(prompts, completions, columns)
        if not items:
            scores = []
        elif self.reference_column is not None:
            scores = [result.prob_a for result in (await self._client.compare(items)).results]
        else:
            scores = (await self._client.score(items, on_error="null", normalize=self.normalize, head=self.head)).scores
        return self._rewards(len(prompts), rows, scores, failed, columns, started)
