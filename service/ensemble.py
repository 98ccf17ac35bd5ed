"""Ensembles: several served reward models answering as one, on one scale, with their disagreement.

An ensemble is declared at start-up in the models file (``name: {ensemble: {member: weight, ...}}``); its
members are served models of the same server, or heads of a multi-head model (``model:head``), each with
reference statistics (``vlreward calibrate``), so that their scores are z-scores on one scale. Members that
are heads of one model share its forward pass: the model is asked once. For each item:

- ``score`` = Σ_m w_m z_m (the weighted sum of the members' normalised scores);
- ``details.members`` = {m: z_m};
- ``details.disagreement`` = the weighted standard deviation of the z_m:
  sqrt(Σ_m w_m (z_m - z̄)² / Σ_m w_m), z̄ = Σ_m w_m z_m / Σ_m w_m (the most used reward-hacking signal:
  a policy that games one member moves it away from the others).

Torch-free arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

HEAD_SEPARATOR = ":"
"""Between a multi-head model's name and its head's in a member's name (``rm:helpful``)."""


def member_parts(member: str) -> tuple[str, str | None]:
    """A member's served model and head (None: the model's default head, or its one head)."""
    model, _, head = member.partition(HEAD_SEPARATOR)
    return model, head or None


class EnsembleError(ValueError):
    """An ensemble that cannot be served (the message names it and what is wrong)."""


@dataclass(frozen=True)
class Ensemble:
    """A named weighted ensemble of served models."""

    name: str
    weights: Mapping[str, float]
    """Member model name -> its weight (> 0)."""

    def __post_init__(self) -> None:
        if len(self.weights) < 2:
            raise EnsembleError(f"ensemble {self.name!r} needs at least two members")
        bad = [m for m, w in self.weights.items() if not isinstance(w, int | float) or not w > 0]
        if bad:
            raise EnsembleError(f"ensemble {self.name!r}: the weight of {bad[0]!r} must be a number > 0")

    @property
    def members(self) -> list[str]:
        return list(self.weights)

    @property
    def models(self) -> list[str]:
        """The served models its members are (or are heads of), each once: what a request asks."""
        return list(dict.fromkeys(member_parts(m)[0] for m in self.members))

    def combine(self, normalised: Mapping[str, float]) -> tuple[float, dict]:
        """One item's score and details from its members' z-scores."""
        total = math.fsum(self.weights.values())
        score = math.fsum(self.weights[m] * normalised[m] for m in self.members)
        mean = score / total
        spread = math.fsum(self.weights[m] * (normalised[m] - mean) ** 2 for m in self.members) / total
        return score, {"members": {m: normalised[m] for m in self.members}, "disagreement": math.sqrt(spread)}

    def describe(self) -> dict:
        """What /info shows."""
        return {"members": dict(self.weights), "score": "the weighted sum of the members' z-scores"}
