"""The TRL adapter: a real GRPOTrainer step (the installed trl) trains on its rewards, TRL's standard
and conversational formats give the service's solo scores, and a bad image costs only its own item."""

from __future__ import annotations

import asyncio
import io

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import LiveServer, shape_image
from vlreward.adapters.trl import AsyncVLRewardFunction, VLRewardFunction, trl_item
from vlreward.client import RewardClient

COLOURS = ["red", "blue", "green", "red"]


class RecordingAsync(AsyncVLRewardFunction):
    """The async adapter, keeping each call's keywords and rewards (to check what TRL passed)."""

    calls: list

    async def __call__(self, **kwargs):
        rewards = await super().__call__(**kwargs)
        self.calls.append((kwargs, rewards))
        return rewards


class RecordingSync(VLRewardFunction):
    calls: list

    def __call__(self, **kwargs):
        rewards = super().__call__(**kwargs)
        self.calls.append((kwargs, rewards))
        return rewards


def _solo(client: RewardClient, prompt: str, completion: str, image=None) -> float:
    item = {"prompt": prompt, "response": completion} | ({"image": image} if image is not None else {})
    return client.score([item]).scores[0]


@pytest.mark.parametrize("kind", ["async-conversational-images", "sync-standard-text"])
def test_one_real_grpo_step_trains_on_the_adapters_rewards(kind, tiny_base, hf_backend, tmp_path):
    conversational = kind.startswith("async")
    if conversational:
        rows = [
            {"prompt": [{"role": "user", "content": f"What colour is shape {i}?"}], "image": shape_image(colour)}
            for i, colour in enumerate(COLOURS)
        ]
    else:
        rows = [{"prompt": f"Name a colour ({i}):"} for i in range(4)]
    with LiveServer(hf_backend) as live:
        reward_function = RecordingAsync(live.url) if conversational else RecordingSync(live.url)
        reward_function.calls = calls = []
        args = GRPOConfig(
            output_dir=str(tmp_path),
            max_steps=1,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            report_to="none",
            use_cpu=True,
            logging_steps=1,
            save_strategy="no",
            bf16=False,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=str(tiny_base), reward_funcs=[reward_function], args=args, train_dataset=Dataset.from_list(rows)
        )
        trainer.train()
        assert len(calls) == 1  # one batched call per step
        kwargs, rewards = calls[0]
        assert len(rewards) == 4 and all(isinstance(r, float) for r in rewards)
        assert set(kwargs) >= {"prompts", "completions", "completion_ids", "trainer_state", "log_metric"}
        with RewardClient(live.url) as client:
            for index, (prompt, completion) in enumerate(zip(kwargs["prompts"], kwargs["completions"], strict=True)):
                if conversational:
                    # TRL put the image column into the prompt as an image block, and passes the column too.
                    blocks = prompt[0]["content"]
                    assert [b["type"] for b in blocks] == ["image", "text"]
                    expected = _solo(client, blocks[1]["text"], completion[0]["content"], kwargs["image"][index])
                else:
                    expected = _solo(client, prompt, completion)
                assert abs(rewards[index] - expected) <= 1e-5
    logged = trainer.state.log_history[0]
    assert logged["rewards/vlreward/mean"] == pytest.approx(sum(rewards) / 4, abs=1e-5)
    assert logged["vlreward/latency_s"] > 0 and logged["vlreward/unscored_fraction"] == 0
    assert logged["grad_norm"] > 0  # the policy got a gradient from these rewards


def _conversational(prompt: str, image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]


def test_standard_and_conversational_formats_and_both_image_columns_give_the_same_scores(hf_backend):
    prompts = ["Which colour?", "Which shape?"]
    completions = ["Red.", "A circle."]
    images = [shape_image("red"), shape_image("blue", "square")]
    with LiveServer(hf_backend) as live, RewardClient(live.url) as client:
        expected = [_solo(client, p, c, i) for p, c, i in zip(prompts, completions, images, strict=True)]
        sync = VLRewardFunction(live.url)
        standard = sync(prompts=prompts, completions=completions, completion_ids=[[1], [2]], image=images)
        plural = sync(prompts=prompts, completions=completions, images=[[i] for i in images])
        conversational = asyncio.run(
            AsyncVLRewardFunction(live.url)(
                prompts=[_conversational(p, i) for p, i in zip(prompts, images, strict=True)],
                completions=[[{"role": "assistant", "content": c}] for c in completions],
                image=images,  # TRL passes the column too: it must not be added a second time
            )
        )
        # A conversational prompt without image blocks takes the column's images before its text.
        column_only = sync(
            prompts=[[{"role": "user", "content": p}] for p in prompts],
            completions=[[{"role": "assistant", "content": c}] for c in completions],
            image=images,
        )
    for got in (standard, plural, conversational, column_only):
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5


def test_one_bad_image_yields_none_for_that_item_only(hf_backend):
    oversized = shape_image("red", size=(4000, 4000))
    images = [shape_image("red"), b"not an image", oversized, shape_image("blue")]
    prompts = [f"Colour {i}?" for i in range(4)]
    completions = ["Red."] * 4
    metrics: dict[str, float] = {}
    with LiveServer(hf_backend, max_image_pixels=1_000_000) as live, RewardClient(live.url) as client:
        rewards = VLRewardFunction(live.url)(
            prompts=prompts, completions=completions, image=images, log_metric=metrics.__setitem__
        )
        assert rewards[1] is None and rewards[2] is None  # undecodable here / over the pixel cap there
        assert rewards[0] == pytest.approx(_solo(client, prompts[0], "Red.", images[0]), abs=1e-5)
        assert rewards[3] == pytest.approx(_solo(client, prompts[3], "Red.", images[3]), abs=1e-5)
    assert metrics["vlreward/unscored_fraction"] == 0.5


def test_items_keep_image_bytes_and_dataset_image_dicts():
    buffer = io.BytesIO()
    shape_image("green").save(buffer, format="PNG")
    from_bytes = trl_item("Q?", "A.", [buffer.getvalue()])
    from_dict = trl_item("Q?", "A.", [{"bytes": buffer.getvalue(), "path": None}])
    assert from_bytes["images"][0].startswith("data:image/png;base64,")
    assert from_bytes == from_dict
    with pytest.raises(ValueError, match="both be strings"):
        trl_item("Q?", [{"role": "assistant", "content": "A."}], [])


def test_with_a_judge_rewards_are_ratings_or_the_chance_of_beating_the_reference_column(judge_backend):
    prompts, completions = ["Which colour?", "Which shape?"], ["Red.", "A circle."]
    images, references = [shape_image("red"), shape_image("blue", "square")], ["Red", "A square."]
    with LiveServer(judge_backend) as live, RewardClient(live.url) as client:
        expected = [_solo(client, p, c, i) for p, c, i in zip(prompts, completions, images, strict=True)]
        pairs = [{"prompt": p, "image": i, "a": c, "b": r}
                 for p, c, i, r in zip(prompts, completions, images, references, strict=True)]  # fmt: skip
        against = [result.prob_a for result in client.compare(pairs).results]
        rated = VLRewardFunction(live.url)(prompts=prompts, completions=completions, image=images, answer=references)
        compared = VLRewardFunction(live.url, reference_column="answer")(
            prompts=prompts, completions=completions, image=images, answer=references
        )
        compared_async = asyncio.run(
            AsyncVLRewardFunction(live.url, reference_column="answer")(
                prompts=prompts, completions=completions, image=images, answer=references
            )
        )
    assert rated == pytest.approx(expected, abs=1e-5)
    assert compared == pytest.approx(against, abs=1e-6) and compared_async == pytest.approx(against, abs=1e-6)
    assert all(0.0 < value < 1.0 for value in compared)


def test_one_reward_function_per_head_lets_reward_weights_weigh_them_from_one_call_per_step(
    tiny_base, tiny_multihead, tmp_path
):
    from vlreward.adapters.trl import VLRewardComponents
    from vlreward.service.backends.transformers import TransformersBackend

    rows = [{"prompt": f"Name a colour ({i}):"} for i in range(4)]
    with LiveServer(TransformersBackend(tiny_multihead)) as live:
        components = VLRewardComponents(live.url, ["helpful", "safety"])
        scored: list = []
        scorer_call = components.scorer.scored
        components.scorer.scored = lambda *args: scored.append(args) or scorer_call(*args)
        args = GRPOConfig(
            output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
            max_completion_length=8, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
            bf16=False, seed=0, reward_weights=[0.7, 0.3],
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=str(tiny_base), reward_funcs=components.reward_funcs, args=args, train_dataset=Dataset.from_list(rows)
        )
        trainer.train()
        assert len(scored) == 1  # both functions of the step read one /score call
        prompts, completions, _ = scored[0]
        with RewardClient(live.url) as client:
            solo = {h: [client.score([{"prompt": p, "response": c}], head=h).scores[0]
                        for p, c in zip(prompts, completions, strict=True)] for h in ("helpful", "safety")}  # fmt: skip
    logged = trainer.state.log_history[0]
    for head in ("helpful", "safety"):
        assert logged[f"rewards/vlreward_{head}/mean"] == pytest.approx(sum(solo[head]) / 4, abs=1e-5)
    weighted = [0.7 * h + 0.3 * s for h, s in zip(solo["helpful"], solo["safety"], strict=True)]
    assert logged["reward"] == pytest.approx(sum(weighted) / 4, abs=1e-5)
