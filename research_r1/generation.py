"""Generation backends: the one thing the rollout asks of a model.

A backend continues a batch of token-id contexts until a stop string, EOS or a token budget, and
returns the very ids it sampled with their log-probabilities. The rollout never re-tokenises
sampled text, so what it trains on is exactly what the model produced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from transformers import GenerationConfig, StoppingCriteriaList


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
        ends = _TurnEnds(self.tokenizer, stop, budgets, self.eos_ids, start=width)
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
            logprobs = torch.stack(
                [
                    scores.float().log_softmax(-1).gather(1, sampled[:, step, None]).squeeze(1)
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


class _TurnEnds:
    """A stopping criterion that ends each row at its first EOS, stop string or own budget, and
    remembers where and why, so the caller cuts the padding `generate` adds after a row ends.

    A stop string is looked for in the decoded last few generated tokens only: it was absent one
    step earlier, so a new occurrence ends in the newest token, and each of its tokens holds at
    least one of its characters.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str],
        budgets: Sequence[int],
        eos_ids: Sequence[int],
        start: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.window = max((len(s) for s in self.stop), default=0) + 1
        self.budgets = list(budgets)
        self.eos_ids = set(eos_ids)
        self.start = start
        self.length: list[int | None] = [None] * len(budgets)
        self.finish: list[Literal["stop", "eos", "length"]] = ["length"] * len(budgets)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        generated = input_ids.shape[1] - self.start
        tails = input_ids[:, max(self.start, input_ids.shape[1] - self.window) :].tolist()
        for row, tail in enumerate(tails):
            if self.length[row] is not None:
                continue
            if tail[-1] in self.eos_ids:
                self.finish[row] = "eos"
            elif self.stop and self._has_stop(tail):
                self.finish[row] = "stop"
            elif generated < self.budgets[row]:
                continue
            self.length[row] = generated
        done = [length is not None for length in self.length]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, ids: list[int]) -> bool:
        """Special tokens are left out, as vLLM leaves them out of the text it matches."""
        text = self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return any(s in text for s in self.stop)
