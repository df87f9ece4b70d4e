"""Generating with a transformers model: `TransformersGenerator`, the rollout's backend when no
vLLM engine is at hand (the vLLM ones are in `generation_vllm`; the `Generator` contract they
all keep is in `generators`, re-exported here).

A backend continues a batch of token-id contexts until a stop string, EOS or a token budget, and
returns the very ids it sampled with their log-probabilities. The rollout never re-tokenises
sampled text, so what it trains on is exactly what the model produced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import (
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from research_r1.generators import Generation, Generator

__all__ = ["Generation", "Generator", "TransformersGenerator", "stop_token_ids"]


def stop_token_ids(tokenizer: Any, generation_eos: Any, extra: Sequence[str] = ()) -> list[int]:
    """The ids generation stops at, as vLLM picks them: the tokenizer's EOS and the EOS ids of
    the checkpoint's generation config (`generation_eos`: an id, a list or None), then any
    `extra` tokens a family's loop adds by name."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    ids += [tokenizer.convert_tokens_to_ids(token) for token in extra]
    return sorted(set(ids))


class TransformersGenerator:
    """A transformers model as a `Generator`: batched, left-padded `model.generate` calls.

    Sampling settings come from `config` (a `GenerationConfig`; by default the model's own), so
    callers decide temperature, top-p, top-k and greedy or not. Log-probabilities are read from
    the processed scores `generate` samples from (after temperature, top-k, top-p and any other
    processor), so they are the sampling probabilities, like vLLM's `processed_logprobs`; with
    `do_sample=False` they are the processed distribution the argmax was taken from. Those scores
    cost batch × vocabulary floats per generated token until the turn ends, which is why rows go
    through `generate` at most `batch_size` at a time.

    Stop strings are found by transformers' `StopStringCriteria` (built once per set of stop
    strings: it reads the whole vocabulary) in the generated text without special tokens. The
    log-probabilities are `model.compute_transition_scores(..., normalize_logits=True)`, called
    one step at a time: on all steps at once it stacks every step's scores into a copy and
    normalises that into another, three times the memory the scores already take.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: GenerationConfig | None = None,
        *,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = copy.deepcopy(config if config is not None else model.generation_config)
        # Every EOS the model declares ends a turn (e.g. chat models' end-of-turn and end-of-text).
        eos = self.config.eos_token_id
        if eos is None:
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos_ids:
            self.eos_ids.insert(0, tokenizer.eos_token_id)
        if not self.eos_ids:
            raise ValueError("neither the generation config nor the tokenizer names an EOS token")
        pad = tokenizer.pad_token_id
        self.pad_id: int = self.eos_ids[0] if pad is None else pad
        self.batch_size = batch_size
        added = tokenizer.added_tokens_decoder.items()
        special = {i for i, token in added if token.special} | set(tokenizer.all_special_ids)
        self.special_ids: list[int] = sorted(special)
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        if len(contexts) != len(max_new_tokens):
            raise ValueError(f"{len(contexts)} contexts but {len(max_new_tokens)} token budgets")
        results = [Generation([], [], "length") for _ in contexts]
        rows = [row for row, budget in enumerate(max_new_tokens) if budget > 0]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            generations = self._generate_batch(
                [contexts[row] for row in chunk], [max_new_tokens[row] for row in chunk], stop
            )
            for row, generation in zip(chunk, generations, strict=True):
                results[row] = generation
        return results

    def _stops(self, stop: Sequence[str]) -> StopStringCriteria | None:
        if not stop:
            return None
        key = tuple(stop)
        if key not in self._stop_criteria:
            self._stop_criteria[key] = StopStringCriteria(self.tokenizer, list(key))
        return self._stop_criteria[key]

    def _generate_batch(
        self, contexts: Sequence[Sequence[int]], budgets: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        device = self.model.device
        width = max(len(context) for context in contexts)
        padding = [width - len(context) for context in contexts]
        input_ids = torch.tensor(
            [[self.pad_id] * pad + list(ctx) for pad, ctx in zip(padding, contexts, strict=True)],
            device=device,
        )
        attention_mask = torch.tensor(
            [[0] * pad + [1] * len(ctx) for pad, ctx in zip(padding, contexts, strict=True)],
            device=device,
        )
        ends = _TurnEnds(self._stops(stop), budgets, self.eos_ids, self.special_ids, width)
        config = copy.deepcopy(self.config)
        config.update(
            max_new_tokens=max(budgets),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([ends]),
            )
            sampled = output.sequences[:, width:]
            logprobs = torch.cat(
                [
                    self.model.compute_transition_scores(
                        sampled[:, step, None], (scores,), normalize_logits=True
                    )
                    for step, scores in enumerate(output.scores)
                ],
                dim=1,
            )
        sampled_rows, logprob_rows = sampled.tolist(), logprobs.tolist()
        generations = []
        for row in range(len(contexts)):
            length = ends.length[row] if ends.length[row] is not None else sampled.shape[1]
            generations.append(
                Generation(
                    token_ids=sampled_rows[row][:length],
                    logprobs=logprob_rows[row][:length],
                    finish=ends.finish[row],
                )
            )
        return generations


# Any id past the vocabulary: `StopStringCriteria` reads it as a token with no text.
_NO_TEXT = 2**62


class _TurnEnds(StoppingCriteria):
    """Ends each row at its first EOS, stop string or own budget, and remembers where and why,
    so the caller cuts the padding `generate` adds after a row ends.

    A stop string counts in the generated text only, with special tokens left out (as
    upstream's vLLM matches it: `skip_special_tokens` by default), so an end-of-turn token
    named as a stop string ends a turn only as an EOS id. `StopStringCriteria` reads token ids,
    so each row's non-special generated ids are moved, in order, to its end first. EOS is
    checked before stop strings.
    """

    def __init__(
        self,
        stops: StopStringCriteria | None,
        budgets: Sequence[int],
        eos_ids: Sequence[int],
        special_ids: Sequence[int],
        start: int,
    ) -> None:
        self.stops = stops
        self.budgets = list(budgets)
        self.eos_ids = list(eos_ids)
        self.special_ids = list(special_ids)
        self.start = start
        self.length: list[int | None] = [None] * len(budgets)
        self.finish: list[Literal["stop", "eos", "length"]] = ["length"] * len(budgets)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        generated = input_ids.shape[1] - self.start
        eos = torch.isin(input_ids[:, -1], torch.tensor(self.eos_ids, device=input_ids.device))
        stopped = torch.zeros_like(eos) if self.stops is None else self._stopped(input_ids)
        for row, (is_eos, is_stop) in enumerate(zip(eos.tolist(), stopped.tolist(), strict=True)):
            if self.length[row] is not None:
                continue
            if is_eos:
                self.finish[row] = "eos"
            elif is_stop:
                self.finish[row] = "stop"
            elif generated < self.budgets[row]:
                continue
            self.length[row] = generated
        done = [length is not None for length in self.length]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _stopped(self, input_ids: Any) -> Any:
        """Whether each row's generated text, special tokens left out, ends in a stop string."""
        assert self.stops is not None
        generated = input_ids[:, self.start :]
        special_ids = torch.tensor(self.special_ids, dtype=torch.long, device=generated.device)
        special = torch.isin(generated, special_ids)
        # a stable sort puts the special ids first and keeps the others in order, at the end
        order = torch.sort(special.logical_not().int(), dim=1, stable=True).indices
        return self.stops(generated.masked_fill(special, _NO_TEXT).gather(1, order), None)
