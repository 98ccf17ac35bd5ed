"""Adapters that plug the vlreward client into RLHF frameworks (no torch, no framework import needed).

- :mod:`.trl`: reward functions for TRL's ``GRPOTrainer`` (sync and async);
- :mod:`.verl`: verl's ``compute_score`` and a dataset helper that carries the prompt and images;
- OpenRLHF needs no adapter: ``--reward.remote_url http://HOST:PORT/get_reward`` (docs/rlhf.md).
"""
