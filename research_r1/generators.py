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
    the model emitted it), their sampling log-probabilities, and why it ended. `cached_tokens`:
    how many of the context's ids the backend served from its prefix cache instead of computing
    them, or None where it does not say (transformers, vLLM server mode)."""

    token_ids: list[int]
    logprobs: list[float]
    finish: Literal["stop", "eos", "length"]
    cached_tokens: int | None = None


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


class Engine(Protocol):
    """A backend that takes requests one at a time and hands each back when it is done, so an
    episode can go on while others are still decoding (the continuous scheduler's contract).
    `step` advances the engine and returns the requests finished since the last call (perhaps
    none), each with the `key` it was submitted with; same stop rules as `Generator.generate`."""

    def submit(
        self, key: int, context: Sequence[int], max_new_tokens: int, stop: Sequence[str]
    ) -> None: ...

    def step(self) -> list[tuple[int, Generation]]: ...


class BatchEngine:
    """A `Generator` as an `Engine`: each `step` generates everything submitted since the last
    one, in one batch. For backends without continuous batching (transformers' `generate`); the
    continuous scheduler over it plays what the turn-synchronous one plays, except that an
    episode's next turn waits for its own search only."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._queued: list[tuple[int, Sequence[int], int]] = []
        self._stop: Sequence[str] = ()

    def submit(
        self, key: int, context: Sequence[int], max_new_tokens: int, stop: Sequence[str]
    ) -> None:
        self._queued.append((key, context, max_new_tokens))
        self._stop = stop

    def step(self) -> list[tuple[int, Generation]]:
        queued, self._queued = self._queued, []
        if not queued:
            return []
        generations = self.generator.generate(
            [context for _, context, _ in queued], [budget for _, _, budget in queued], self._stop
        )
        if len(generations) != len(queued):
            raise RuntimeError(f"generator returned {len(generations)} rows for {len(queued)}")
        return [
            (key, generation) for (key, _, _), generation in zip(queued, generations, strict=True)
        ]
