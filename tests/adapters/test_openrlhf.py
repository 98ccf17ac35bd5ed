"""OpenRLHF's own remote-reward code (0.11.2, installed by `make frameworks`) against /get_reward:
SingleTurnAgentExecutor._fetch_rewards_via_http (openrlhf/utils/agent.py) posts one sample per request
and reads `rewards`/`scores`; with several URLs it shards and rotates. The rewards must be the scores
/score gives for the same conversations."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.adapters.frameworks import run_framework_code
from tests.helpers import LiveServer
from vlreward.client import RewardClient

FETCH = """
import asyncio
from openrlhf.utils.agent import SingleTurnAgentExecutor

async def main():
    executor = SingleTurnAgentExecutor(remote_rm_url=ARGS["urls"])
    results = []
    for query, prompt in zip(ARGS["queries"], ARGS["prompts"]):  # as execute() does: one sample per call
        results += await executor._fetch_rewards_via_http([query], [prompt], [None])
    return results

print(json.dumps(asyncio.run(main())))
"""

CONVERSATIONS = [
    ("What is 2+2?", "It is 4."),
    ("Name a colour.", "Blue."),
    ("Say hello.", "Hello there, how can I help?"),
]


def test_openrlhfs_executor_gets_the_servers_scores_one_sample_per_request(tiny_reward, hf_backend):
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    prompts, queries = [], []
    for question, answer in CONVERSATIONS:  # what OpenRLHF decodes: prompt + generated ids, special tokens kept
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer.encode(prompt, add_special_tokens=False) + tokenizer.encode(answer) + [tokenizer.eos_token_id]
        prompts.append(prompt)
        queries.append(tokenizer.decode(ids, skip_special_tokens=False))
    with LiveServer(hf_backend) as live, RewardClient(live.url) as client:
        url = live.url + "/get_reward"
        before = live.metric("vlreward_requests_total", endpoint="/get_reward", status="200")
        results = run_framework_code(FETCH, {"urls": [url, url], "queries": queries, "prompts": prompts})
        assert live.metric("vlreward_requests_total", endpoint="/get_reward", status="200") - before == 3
        expected = client.score(
            [
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for q, a in CONVERSATIONS
            ]
        ).scores
    assert [r["rewards"][0] for r in results] == pytest.approx(expected, abs=1e-5)
    assert [r["scores"][0] for r in results] == pytest.approx(expected, abs=1e-5)
    assert all(r["extra_logs"] == {} for r in results)
