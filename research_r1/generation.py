"""Generation backends: the one thing the rollout asks of a model.

A backend continues a batch of token-id contexts until a stop string, EOS or a token budget, and
returns the very ids it sampled with their log-probabilities. The rollout never re-tokenises
sampled text, so what it trains on is exactly what the model produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class Generation:
    """One continuation: sampled ids (including those that complete a stop string, and EOS when
    the model emitted it), their sampling log-probabilities, and why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish: Literal["stop", "eos", "length"]


class Generator(Protocol):
    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        """Continue each context by at most its own `max_new_tokens`, stopping right after the
        first stop string in the generated text; one `Generation` per context, in order."""
        ...
