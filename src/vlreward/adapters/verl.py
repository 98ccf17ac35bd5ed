"""verl's custom reward function backed by a vlreward server, and the dataset helper it needs.

verl calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)``
once per sample (``async def`` functions are awaited on its reward loop) and logs every key of the dict
it gets back beside ``score``. It does not pass the sample's images (verl keeps them in
``multi_modal_data``), so the prompt and its images travel in ``extra_info``:

- ``extra_info["vlreward_messages"]``: the prompt as OpenAI-style messages, JSON-encoded (a string, so
  that parquet's fixed column types hold any conversation), images as ``image_url`` parts with data
  URIs or URLs. :func:`add_vlreward_extra_info` writes it from a verl row (``prompt`` messages with
  ``<image>`` placeholders + ``images``), in the dataset's ``map`` step.
- without it, ``extra_info["question"]`` (what verl's example preprocessors store) is scored as a
  text-only prompt; with neither, the call fails with the keys it needs.

Config (verl 0.9): ``reward.custom_reward_function.path=<this file>`` with ``name=compute_score``, and
``reward.custom_reward_function.reward_kwargs.base_url=http://rm:8000`` (or ``VLREWARD_URL``). One
client per event loop and server is shared by every call. A sample the server cannot score raises
(verl has no "no reward" value) unless ``unscored_score`` is given, in which case that value is
returned with ``vlreward_scored: 0`` so a run can tell it from a real score.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any

from vlreward.adapters.conversation import against_reference, to_messages, with_steps
from vlreward.client import AsyncRewardClient, VLRewardError

EXTRA_INFO_KEY = "vlreward_messages"
URL_VARIABLE = "VLREWARD_URL"

_clients: dict[tuple[int, str, str | None, str | None], AsyncRewardClient] = {}


def shared_client(
    base_url: str | Sequence[str], api_key: str | None = None, model: str | None = None
) -> AsyncRewardClient:
    """The client for this event loop, server(s) and served model (httpx's async pool belongs to one loop).
    ``base_url`` may list several replicas (a list, or URLs separated by commas): the client spreads calls
    over them. ``model``: which of a server's models scores (None: its default)."""
    urls = base_url if isinstance(base_url, str) else ",".join(base_url)
    key = (id(asyncio.get_running_loop()), urls, api_key, model)
    if key not in _clients:
        _clients[key] = AsyncRewardClient(urls, api_key=api_key, model=model)
    return _clients[key]


def add_vlreward_extra_info(row: dict, prompt_key: str = "prompt", image_key: str = "images") -> dict:
    """A verl dataset row with ``extra_info["vlreward_messages"]`` added (use in ``Dataset.map``).

    ``row[prompt_key]`` is verl's prompt (messages whose text may hold ``<image>`` placeholders) and
    ``row[image_key]`` its images (PIL images, bytes, paths, URLs or ``{"bytes", "path"}`` dicts)."""
    messages = to_messages(list(row[prompt_key]), list(row.get(image_key) or []))
    extra_info = dict(row.get("extra_info") or {})
    extra_info[EXTRA_INFO_KEY] = json.dumps(messages)
    return {**row, "extra_info": extra_info}


def scoring_item(solution_str: str, extra_info: dict | None) -> dict:
    """The ``/score`` item for one verl sample: the prompt from ``extra_info`` and the response."""
    extra_info = extra_info or {}
    if extra_info.get(EXTRA_INFO_KEY):
        prompt = json.loads(extra_info[EXTRA_INFO_KEY])
        return {"messages": [*prompt, {"role": "assistant", "content": solution_str}]}
    if extra_info.get("question"):
        return {"prompt": str(extra_info["question"]), "response": solution_str}
    raise KeyError(
        f"extra_info needs {EXTRA_INFO_KEY!r} (see add_vlreward_extra_info) or 'question'; it has {sorted(extra_info)}"
    )


async def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: dict | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    unscored_score: float | None = None,
    model: str | None = None,
    step_separator: str | None = None,
    reference: str | None = None,
    normalize: str | None = None,
    head: str | None = None,
    **_: Any,
) -> dict[str, float | str]:
    """verl's reward function: ``{"score": reward, "vlreward_scored": 1.0}`` for one sample. ``model``
    (``reward_kwargs.model``): which of the server's models scores it (default: the server's default).
    ``step_separator`` (a process model): the response is split into steps there; the score is their
    aggregate and ``vlreward_step_scores`` their scores (JSON text: verl's metrics skip text values).
    ``reference`` (``"ground_truth"`` or an ``extra_info`` key): the score is P(response better than that
    reference answer) from ``/compare`` (a judge's pairwise verdict, debiased; a scalar model's sigmoid of
    the score difference). ``normalize="zscore"``: the score on the model's reference scale. ``head``: a
    multi-head model's head the score is; the answer carries every head's score (``vlreward_head_<name>``). An
    ensemble's answer also carries ``vlreward_disagreement`` and each member's z-score
    (``vlreward_member_<name>``). verl logs each as a metric."""
    base_url = base_url or os.environ.get(URL_VARIABLE)
    if not base_url:
        raise ValueError(f"give reward_kwargs.base_url or set {URL_VARIABLE}")
    client = shared_client(base_url, api_key or os.environ.get("VLREWARD_API_KEY"), model)
    if reference is not None:
        answer = ground_truth if reference == "ground_truth" else (extra_info or {}).get(reference)
        if answer is None:
            raise KeyError(f"no reference answer: {reference!r} is not set for this sample")
        pair = against_reference(scoring_item(solution_str, extra_info), str(answer))
        prob = (await client.compare([pair])).results[0].prob_a
        return {"score": float(prob), "vlreward_scored": 1.0, "vlreward_prob_better": float(prob)}
    item = with_steps(scoring_item(solution_str, extra_info), step_separator)
    try:
        on_error = "fail" if unscored_score is None else "null"
        result = await client.score([item], on_error=on_error, normalize=normalize, head=head)
    except VLRewardError:
        if unscored_score is None:
            raise
        return {"score": float(unscored_score), "vlreward_scored": 0.0}
    score = result.scores[0]
    if score is None:
        return {"score": float(unscored_score), "vlreward_scored": 0.0}
    scored: dict[str, float | str] = {"score": float(score), "vlreward_scored": 1.0}
    details = (result.details or [None])[0] or {}
    if "step_scores" in details:
        scored["vlreward_step_scores"] = json.dumps(details["step_scores"])
    scored |= {f"vlreward_head_{name}": float(value) for name, value in (details.get("heads") or {}).items()}
    if "disagreement" in details:  # an ensemble: its components, each a metric of its own
        scored["vlreward_disagreement"] = float(details["disagreement"])
        scored |= {f"vlreward_member_{name}": float(z) for name, z in details["members"].items()}
    return scored
