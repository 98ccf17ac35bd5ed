"""The verl adapter through verl's own code (0.9.1, installed by `make frameworks`): the custom reward
function loaded the way verl loads it and called by verl's NaiveRewardManager, and verl's discriminative
reward-model request (RewardLoopWorker.compute_score_disrm in verl/experimental/reward_loop/reward_loop.py,
which POSTs {"model", "input", "use_activation": false} to /classify and reads data[-1].probs[-1])
pointed at our server. Both must give the number /score gives for the same conversation."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.adapters.frameworks import run_framework_code
from tests.helpers import LiveServer, shape_image, uri
from vlreward.adapters.verl import EXTRA_INFO_KEY, add_vlreward_extra_info, compute_score
from vlreward.client import RewardClient

NAIVE_MANAGER = """
import asyncio
import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.trainer.ppo.reward import get_custom_reward_fn

from vlreward.adapters.verl import add_vlreward_extra_info

tokenizer = AutoTokenizer.from_pretrained(ARGS["tokenizer"])
config = OmegaConf.create({"reward": {"custom_reward_function": {
    "path": "pkg://vlreward.adapters.verl", "name": "compute_score",
    "reward_kwargs": {"base_url": ARGS["url"]}}}})


def objects(value):
    array = np.empty(1, dtype=object)
    array[0] = value
    return array


def sample(row):
    ids = tokenizer.encode(row["response"])
    responses = torch.tensor([ids + [tokenizer.pad_token_id] * 3])  # right padding, as verl's rollout
    mask = torch.tensor([[1] * len(ids) + [0] * 3])
    extra_info = row["extra_info"]
    if row.get("images") is not None:  # a verl multimodal row: <image> placeholders + image dicts
        images = [{"bytes": open(path, "rb").read(), "path": None} for path in row["images"]]
        extra_info = add_vlreward_extra_info({"prompt": row["prompt"], "images": images, "extra_info": extra_info})["extra_info"]
    return DataProto.from_dict(
        tensors={"responses": responses, "attention_mask": mask},
        non_tensors={"data_source": objects("geo3k"), "reward_model": objects({"ground_truth": "4"}),
                     "extra_info": objects(extra_info)})


async def main():
    manager = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
    return [await manager.run_single(sample(row)) for row in ARGS["rows"]]

print(json.dumps(asyncio.run(main())))
"""

DISCRIMINATIVE_RM = """
import asyncio
import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

tokenizer = AutoTokenizer.from_pretrained(ARGS["tokenizer"])
worker = RewardLoopWorker.__new__(RewardLoopWorker)  # its __init__ starts verl's reward managers
worker.config = OmegaConf.create({"reward": {"reward_model": {"model_path": ARGS["model"], "rollout": {"name": "vllm"}}}})
worker.reward_router_address = ARGS["address"]
worker.input_tokenizer = tokenizer
worker.reward_model_tokenizer = tokenizer


def sample(row):
    ids = tokenizer.encode(row["response"]) + [tokenizer.eos_token_id]
    raw_prompt = np.empty(1, dtype=object)
    raw_prompt[0] = row["prompt"]
    return DataProto.from_dict(
        tensors={"responses": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)},
        non_tensors={"raw_prompt": raw_prompt})


async def main():
    return [(await worker.compute_score_disrm(sample(row)))["reward_score"] for row in ARGS["rows"]]

print(json.dumps(asyncio.run(main())))
"""


def test_verls_reward_manager_calls_the_adapter_and_gets_the_servers_score(tiny_reward, hf_backend, tmp_path):
    images = [shape_image("red"), shape_image("blue", "square")]
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    rows = [
        {  # verl's multimodal layout (geo3k): <image> in the prompt text, images as {"bytes", "path"}
            "prompt": [{"role": "user", "content": "<image>Which colour is this?<image> And this one?"}],
            "images": paths,
            "response": "Red, then blue.",
            "extra_info": {"index": 0},
        },
        {"response": "It is 4.", "extra_info": {"index": 1, "question": "What is 2+2?"}},  # verl's text examples
    ]
    by_hand = [  # the same conversations written out in the service's own shape
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": uri(images[0])}},
                        {"type": "text", "text": "Which colour is this?"},
                        {"type": "image_url", "image_url": {"url": uri(images[1])}},
                        {"type": "text", "text": " And this one?"},
                    ],
                },
                {"role": "assistant", "content": "Red, then blue."},
            ]
        },
        {"prompt": "What is 2+2?", "response": "It is 4."},
    ]
    with LiveServer(hf_backend) as live, RewardClient(live.url) as client:
        results = run_framework_code(NAIVE_MANAGER, {"url": live.url, "tokenizer": str(tiny_reward), "rows": rows})
        expected = client.score(by_hand).scores
    for result, score in zip(results, expected, strict=True):
        assert result["reward_score"] == pytest.approx(score, abs=1e-5)
        assert result["reward_extra_info"]["vlreward_scored"] == 1.0  # verl logs the dict's other keys


def test_verls_discriminative_reward_request_round_trips_through_our_classify(tiny_reward, hf_backend):
    rows = [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "response": "It is 4."},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
            "response": "Blue.",
        },
    ]
    with LiveServer(hf_backend) as live, RewardClient(live.url) as client:
        address = live.url.removeprefix("http://")
        before = live.metric("vlreward_requests_total", endpoint="/classify", status="200")
        scores = run_framework_code(
            DISCRIMINATIVE_RM, {"address": address, "tokenizer": str(tiny_reward), "model": "rm", "rows": rows}
        )
        assert live.metric("vlreward_requests_total", endpoint="/classify", status="200") - before == 2
        expected = client.score(
            [{"messages": [*row["prompt"], {"role": "assistant", "content": row["response"]}]} for row in rows]
        ).scores
    assert scores == pytest.approx(expected, abs=1e-5)


def test_compute_score_takes_verls_keywords_and_flags_what_it_could_not_score(hf_backend):
    extra_info = add_vlreward_extra_info(
        {"prompt": [{"role": "user", "content": "<image>Colour?"}], "images": [shape_image("green")]}
    )["extra_info"]
    assert isinstance(extra_info[EXTRA_INFO_KEY], str)  # JSON text: any conversation fits one parquet column
    with LiveServer(hf_backend, max_image_pixels=1_000_000) as live, RewardClient(live.url) as client:

        async def calls():
            keywords = {"data_source": "x", "ground_truth": None, "base_url": live.url}
            good = await compute_score(solution_str="Green.", extra_info=extra_info, **keywords)
            again = await compute_score(solution_str="Green.", extra_info=extra_info, **keywords)
            huge = add_vlreward_extra_info(
                {"prompt": [{"role": "user", "content": "<image>?"}], "images": [shape_image(size=(2000, 2000))]}
            )["extra_info"]
            flagged = await compute_score(solution_str="?", extra_info=huge, unscored_score=0.0, **keywords)
            with pytest.raises(Exception, match="413|pixels"):
                await compute_score(solution_str="?", extra_info=huge, **keywords)
            with pytest.raises(KeyError, match=EXTRA_INFO_KEY):
                await compute_score(solution_str="?", extra_info={"index": 3}, **keywords)
            return good, again, flagged

        good, again, flagged = asyncio.run(calls())
        expected = client.score([{"prompt": "Colour?", "response": "Green.", "image": shape_image("green")}]).scores[0]
    assert good == again == {"score": pytest.approx(expected, abs=1e-5), "vlreward_scored": 1.0}
    assert flagged == {"score": 0.0, "vlreward_scored": 0.0}


def test_the_extra_info_helper_fails_clearly_on_too_few_images():
    with pytest.raises(ValueError, match="placeholders than images"):
        add_vlreward_extra_info({"prompt": [{"role": "user", "content": "<image><image>?"}], "images": [shape_image()]})
    assert json.loads(
        add_vlreward_extra_info({"prompt": [{"role": "user", "content": "Hi"}]})["extra_info"][EXTRA_INFO_KEY]
    ) == [{"role": "user", "content": "Hi"}]


def test_with_a_judge_compute_score_rates_or_compares_with_the_reference_answer(judge_backend):
    extra_info = add_vlreward_extra_info(
        {"prompt": [{"role": "user", "content": "<image>Colour?"}], "images": [shape_image("green")]}
    )["extra_info"] | {"reference_answer": "It is green."}
    with LiveServer(judge_backend) as live, RewardClient(live.url) as client:

        async def calls():
            keywords = {"data_source": "x", "extra_info": extra_info, "base_url": live.url}
            rated = await compute_score(solution_str="Green.", ground_truth="Green", **keywords)
            truth = await compute_score(
                solution_str="Green.", ground_truth="Green", reference="ground_truth", **keywords
            )
            column = await compute_score(solution_str="Green.", reference="reference_answer", **keywords)
            with pytest.raises(KeyError, match="'nothing' is not set"):
                await compute_score(solution_str="Green.", reference="nothing", **keywords)
            return rated, truth, column

        rated, truth, column = asyncio.run(calls())
        item = {"prompt": "Colour?", "response": "Green.", "image": shape_image("green")}
        pointwise = client.score([item]).scores[0]
        pair = {"prompt": "Colour?", "image": shape_image("green"), "a": "Green."}
        against = [r.prob_a for r in client.compare([{**pair, "b": "Green"}, {**pair, "b": "It is green."}]).results]
    assert rated == {"score": pytest.approx(pointwise, abs=1e-5), "vlreward_scored": 1.0}
    assert truth["score"] == truth["vlreward_prob_better"] == pytest.approx(against[0], abs=1e-6)
    assert column["score"] == pytest.approx(against[1], abs=1e-6)
