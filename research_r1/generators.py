"""What the rollout asks of a model, and what it gets back: the `Generator` contract.

The backends (`generation.TransformersGenerator`, the vLLM ones in `generation_vllm`) implement
it; the rollout only holds one. This module imports neither torch nor transformers, so the
rollout, evaluation's planning and the live views can be imported without them.
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
    """A generation backend. One that sets `collective = True` (vLLM server mode, where each
    call gathers all ranks' rows) is called every turn, with an empty batch once its episodes
    have ended, so that every rank makes the same number of calls."""

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        """Continue each context by at most its own `max_new_tokens`, stopping right after the
        first stop string in the generated text; one `Generation` per context, in order."""
        ...
