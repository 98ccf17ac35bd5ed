"""Locust load test for people who load-test with Locust (the suite uses loadtest.loadgen instead).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Each simulated user sends distinct samples from the request mix (``VLREWARD_MIX``: a JSON file with
loadtest.workload.Mix fields; default: half the prompts with one 112x112 image): mostly one-sample
``/score`` calls, some GRPO-style groups and ``/rank`` best-of-N. Scores come back checked for shape.
"""

from __future__ import annotations

import itertools
import os

from locust import HttpUser, between, task

from loadtest.loadgen import rank_call, score_call
from loadtest.workload import Mix, make_groups

MIX = Mix.from_spec(os.environ["VLREWARD_MIX"]) if os.environ.get("VLREWARD_MIX") else Mix(samples=960, group=4)
GROUPS = itertools.cycle(make_groups(MIX))


class RewardUser(HttpUser):
    wait_time = between(0, 0.05)

    def _post(self, call, name: str) -> None:
        with self.client.post(call.path, json=call.body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif len(call.read_scores(response.json())) != call.samples:
                response.failure("wrong number of scores")

    @task(6)
    def score_one(self) -> None:
        self._post(score_call([next(GROUPS)[0]]), "/score (1 sample)")

    @task(2)
    def score_group(self) -> None:
        self._post(score_call(next(GROUPS)), "/score (GRPO group)")

    @task(1)
    def rank(self) -> None:
        self._post(rank_call(next(GROUPS)), "/rank")
