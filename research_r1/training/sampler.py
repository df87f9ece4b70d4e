"""Fewer rollouts on prompts that cannot teach: the `skip_zero_std_prompts` recipe key.

GRPO learns nothing from a group whose rewards are all equal (its advantages are zero), yet the
group costs a full multi-turn rollout. `ZeroStdSkipSampler` is TRL's `RepeatSampler` (what
`GRPOTrainer._get_train_sampler` returns) that remembers, per prompt, whether its recent groups
had zero reward std: after `after` such groups in a row, the prompt is skipped with probability
`probability` when it next comes up, and each skip multiplies that probability by `decay`, so a
skipped prompt comes back; a group of it whose rewards differ resets it. A skipped prompt is
replaced by the next one in the order, so every batch has TRL's shape (and, as TRL's, no prompt
twice).

With `groups` (the `skip_zero_std_by` recipe key: a dataset column such as `data_source`), the
statistics are kept per value of that column instead of per prompt, so prompts of a kind the
policy has solved are sampled less before each of them has come up again: in a run of one pass
over the data, as most are, no prompt's own history exists when it is drawn. A kind whose groups
keep zero std is skipped with probability `probability`, decaying at each skip, so its prompts
are sampled at a fraction of their share rather than not at all.

The order is a sequence of passes over the dataset, each a permutation with one coin per
position, both a function of the seed and the pass number alone: every process builds the same
sampler, records the same gathered rewards, and so draws the same prompts. A batch is drawn with
the outcomes recorded so far; the data loader draws one batch ahead, so a group's outcome counts
from the batch after next. The state (pass, position, per-prompt statistics, and the batches
drawn so far in the epoch being iterated, which the resumed run's data loader skips through
again) is saved in each checkpoint as `sampler_state.json`, so a resumed run draws what the
uninterrupted one would have (with `dataloader_num_workers` 0, as the recipes have it: workers
draw further ahead).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl.trainer.utils import RepeatSampler, nanstd

from research_r1.errors import InputError

STATE_FILE = "sampler_state.json"
# The dataset column that tells which prompt each row came from (added to the training split).
INDEX_COLUMN = "prompt_index"


class ZeroStdSkipSampler(RepeatSampler):
    """TRL's `RepeatSampler` that skips prompts whose last `after` groups (of the prompt, or of
    its value in `groups`) all had zero reward std, with a probability that starts at
    `probability` and decays by `decay` at each skip."""

    def __init__(
        self,
        data_source: Any,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        after: int = 1,
        probability: float = 1.0,
        decay: float = 0.5,
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        super().__init__(data_source, mini_repeat_count, batch_size, repeat_count, shuffle, seed)
        self.after, self.probability, self.decay = after, probability, decay
        if groups is not None and len(groups) != self.num_samples:
            raise ValueError(f"{len(groups)} groups for {self.num_samples} prompts")
        self.groups = groups
        self.streak: dict[Hashable, int] = {}  # zero-std groups in a row, per key
        self.skip: dict[Hashable, float] = {}  # current skip probability, per key
        self.passes, self.position = 0, 0  # where in the order the next prompt comes from
        self.epoch_chunks: list[list[int]] = []  # the chunks drawn in the epoch being iterated
        self.iterating = False
        self.replay: list[list[int]] = []  # chunks a resumed run draws again
        self.considered = self.skipped = 0  # since the last `record`
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None

    def key(self, index: int) -> Hashable:
        """Whose statistics prompt `index` reads and updates: its group's, or its own."""
        return index if self.groups is None else self.groups[index]

    def _pass(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Pass `number`'s order and coins, from the seed and the pass number alone."""
        if self._order is None or self._order[0] != number:
            rng = np.random.default_rng([self.seed or 0, number])
            order = (
                rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
            )
            self._order = (number, order, rng.random(self.num_samples))
        return self._order[1], self._order[2]

    def next_chunk(self) -> list[int]:
        """The next `batch_size` prompts, each one skipped as its probability says."""
        chunk: list[int] = []
        while len(chunk) < self.batch_size:
            if self.position == self.num_samples:
                self.passes, self.position = self.passes + 1, 0
            order, coins = self._pass(self.passes)
            index, coin = int(order[self.position]), float(coins[self.position])
            self.position += 1
            if index in chunk:  # drawn from the previous pass's end: once per chunk
                continue
            self.considered += 1
            key = self.key(index)
            probability = self.skip.get(key, 0.0)
            if coin < probability:
                self.skip[key] = probability * self.decay
                self.skipped += 1
            else:
                chunk.append(index)
        return chunk

    def __iter__(self) -> Iterator[int]:
        replay, self.replay = self.replay, []
        self.epoch_chunks, self.iterating = [], True
        for number in range(self.num_samples // self.batch_size):
            chunk = replay[number] if number < len(replay) else self.next_chunk()
            self.epoch_chunks.append(chunk)
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count
        self.iterating = False

    def record(self, prompts: Sequence[int], zero_std: Sequence[bool]) -> float:
        """Update each prompt's statistics from its group's outcome, in order; returns the share
        of prompts skipped since the previous call (0 when none was considered)."""
        for index, flat in zip(prompts, zero_std, strict=True):
            key = self.key(int(index))
            if flat:
                self.streak[key] = self.streak.get(key, 0) + 1
                if self.streak[key] >= self.after:
                    self.skip[key] = self.probability
            else:
                self.streak.pop(key, None)
                self.skip.pop(key, None)
        share = self.skipped / self.considered if self.considered else 0.0
        self.considered = self.skipped = 0
        return share

    def state_dict(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "position": self.position,
            "streak": list(self.streak.items()),
            "skip": list(self.skip.items()),
            # An epoch whose chunks are all handed out is over: the resumed run starts the next.
            "replay": self.epoch_chunks if self.iterating else [],
            "considered": self.considered,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes, self.position = state["passes"], state["position"]
        self.streak = {key: int(n) for key, n in state["streak"]}
        self.skip = {key: float(p) for key, p in state["skip"]}
        self.replay = [list(chunk) for chunk in state["replay"]]
        self.considered, self.skipped = state["considered"], state["skipped"]

    def save(self, folder: str | Path) -> None:
        (Path(folder) / STATE_FILE).write_text(json.dumps(self.state_dict()) + "\n")

    def load(self, folder: str | Path) -> bool:
        """Load the state saved in checkpoint `folder`; False when it holds none."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return False
        self.load_state_dict(json.loads(path.read_text()))
        return True


def with_prompt_index(dataset: Any) -> Any:
    """The training split with each row's own index in `INDEX_COLUMN`: the rewards' rows say
    which prompt they came from."""
    if INDEX_COLUMN in dataset.column_names:
        raise InputError(f"skip_zero_std_prompts: the dataset already has a {INDEX_COLUMN} column")
    return dataset.add_column(INDEX_COLUMN, range(len(dataset)))


def group_column(dataset: Any, column: str) -> list[Hashable]:
    """Each row's value in `column`, the `skip_zero_std_by` recipe key; a clear error when the
    split has no such column or its values are not plain strings or numbers."""
    if column not in dataset.column_names:
        raise InputError(
            f"skip_zero_std_by: the training split has no column {column!r} (it has "
            f"{dataset.column_names})"
        )
    values = dataset[column]
    for row, value in enumerate(values):
        if not isinstance(value, str | int | bool):
            raise InputError(
                f"skip_zero_std_by: row {row}'s {column!r} is {value!r}; prompts are grouped by "
                f"a string or integer column"
            )
    return values


def zero_std_groups(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int
) -> list[bool]:
    """Whether each group's weighted reward has zero std, as GRPOTrainer computes it for
    `frac_reward_zero_std` with per-group scaling (a row no reward function scored is left out)."""
    rewards = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    std = nanstd(rewards.view(-1, num_generations), dim=1)
    return torch.isclose(std, torch.zeros_like(std)).tolist()
