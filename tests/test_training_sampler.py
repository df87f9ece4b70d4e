"""The sampler behind `skip_zero_std_prompts` (research_r1.training.sampler): its exact draws on
a scripted history, the skip probability's decay and reset, TRL's batch shape, skipped prompts
coming back, its state across a save and a resume, and the zero-std test of a group's rewards."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch.utils.data import BatchSampler
from trl.trainer.utils import RepeatSampler

from research_r1.errors import InputError
from research_r1.training.sampler import (
    INDEX_COLUMN,
    STATE_FILE,
    ZeroStdSkipSampler,
    group_column,
    with_prompt_index,
    zero_std_groups,
)

Outcome = Callable[[int, int], bool]  # (prompt, step) -> whether its group had zero std


def sampler(n: int, **options) -> ZeroStdSkipSampler:
    settings = dict(mini_repeat_count=2, batch_size=4, seed=0) | options
    return ZeroStdSkipSampler(list(range(n)), **settings)


def chunks(iterator: Iterator[int], sampler: RepeatSampler) -> Iterator[list[int]]:
    """The prompts of each generation batch an epoch's indices make."""
    size = sampler.batch_size * sampler.mini_repeat_count * sampler.repeat_count
    while block := list(itertools.islice(iterator, size)):
        yield block[: sampler.batch_size * sampler.mini_repeat_count : sampler.mini_repeat_count]


def prefetched(iterator: Iterator) -> Iterator:
    """What accelerate's data loader does: it draws the next item before yielding one."""
    ahead = next(iterator, None)
    while ahead is not None:
        current, ahead = ahead, next(iterator, None)
        yield current


def train(
    sampler: ZeroStdSkipSampler, outcome: Outcome, steps: int, first_step: int = 0
) -> tuple[list[list[int]], list[float]]:
    """The prompts each step trains on, as the trainer sees them: epoch by epoch, the data loader
    draws the next batch before the current one is scored; a run resumed at `first_step` skips
    the batches of its epoch already trained (the Trainer's `skip_first_batches`). Returns the
    prompts of each step and the share of prompts skipped logged at each."""
    per_epoch = sampler.num_samples // sampler.batch_size
    step, skip, trained, shares = first_step, first_step % per_epoch, [], []
    while True:
        for current in prefetched(chunks(iter(sampler), sampler)):
            if skip:
                skip -= 1
                continue
            shares.append(sampler.record(current, [outcome(i, step) for i in current]))
            trained.append(current)
            step += 1
            if step == first_step + steps:
                return trained, shares


def test_the_draws_on_a_scripted_history_are_exactly_these():
    drawn = []
    for _ in range(2):  # two processes: the same seed and the same gathered rewards
        s = sampler(8, probability=0.9, decay=0.5)
        epoch = chunks(iter(s), s)
        first = next(epoch)
        assert first == [2, 4, 3, 6]  # pass 0's permutation of seed 0
        assert s.record(first, [True, True, False, False]) == 0.0
        second = next(epoch)
        assert second == [5, 0, 1, 7]
        s.record(second, [True, False, False, False])
        assert s.skip == {2: 0.9, 4: 0.9, 5: 0.9}

        epoch = chunks(iter(s), s)
        third = next(epoch)  # pass 1 is 1 3 7 6 | 0 4 2 5: the first four were never flat
        assert third == [1, 3, 7, 6]
        s.record(third, [False] * 4)
        fourth = next(epoch)
        # 0 is taken; 4, 2 and 5 are skipped (coins 0.62, 0.004, 0.11 under 0.9), and pass 2
        # (5 2 6 0 7 1 4 3) skips 5 and 2 again (coins 0.12, 0.33 under 0.45), takes 6, passes
        # over 0 (already in this batch) and takes 7 and 1.
        assert fourth == [0, 6, 7, 1]
        assert s.skip == {4: 0.45, 2: 0.225, 5: 0.225}
        assert s.record(fourth, [False] * 4) == 5 / 9
        drawn.append([first, second, third, fourth])
    assert drawn[0] == drawn[1]


def test_a_prompt_is_skipped_after_its_zero_std_streak_with_a_decaying_probability():
    s = sampler(3, batch_size=1, after=2, probability=1.0, decay=0.5)
    s.record([0], [True])
    assert s.skip == {}  # one zero-std group is not a streak of two
    s.record([0], [False])
    s.record([0], [True])
    assert s.skip == {}  # a group with variance between them broke the streak
    s.record([0], [True])
    assert s.skip == {0: 1.0}

    drawn = [s.next_chunk()[0] for _ in range(2)]  # pass 0 is 2 0 1: 0 is skipped
    assert drawn == [2, 1] and s.skip == {0: 0.5} and s.skipped == 1
    s.record([0], [True])  # still zero std when it comes back: skipped at full probability
    assert s.skip == {0: 1.0}
    s.record([0], [False])  # rewards that differ: sampled as any other prompt
    assert s.skip == {} and s.streak == {}


def test_prompts_of_one_group_share_its_streak_and_its_skips():
    # Prompts 0-3 are kind "a", 4-7 kind "b". Pass 0 of seed 0 is 2 4 3 6 | 5 0 1 7 with coins
    # .81 .91 .61 .73 | .54 .94 .82 .003; pass 1 is 1 3 7 6 ... with coins .06 .24 .79 ...
    s = sampler(8, after=2, probability=1.0, decay=0.5, groups=["a"] * 4 + ["b"] * 4)
    first = s.next_chunk()
    assert first == [2, 4, 3, 6]
    s.record(first, [True, True, False, True])  # a: flat, then not; b: two flat in a row
    assert s.streak == {"b": 2} and s.skip == {"b": 1.0}
    # 5 (b) is skipped, b: 1.0 -> 0.5; 0 and 1 (a) are taken; 7 (b) is skipped (.003 < .5),
    # b -> 0.25; pass 1 gives 1 (in the batch already), 3 (a), then 7 (b, .79 >= .25).
    second = s.next_chunk()
    assert second == [0, 1, 3, 7] and s.skip == {"b": 0.25}
    assert s.record(second, [True, True, True, False]) == 2 / 6
    assert s.streak == {"a": 3} and s.skip == {"a": 1.0}  # 6 (b) had variance: b is reset


def test_a_group_sampled_less_still_comes_back_and_the_others_fill_the_batch():
    groups = ["solved"] * 10 + ["open"] * 10
    s = sampler(20, batch_size=4, probability=1.0, decay=0.5, groups=groups)
    drawn = []
    for _ in range(25):  # every "solved" group stays flat, every "open" one has variance
        chunk = s.next_chunk()
        s.record(chunk, [groups[i] == "solved" for i in chunk])
        drawn += chunk
    solved = sum(groups[i] == "solved" for i in drawn)
    # Half the prompts, a third of the draws: after each of its flat groups a "solved" prompt is
    # skipped for sure, the next one with probability 1/2, then 1/4...
    assert (solved, len(drawn)) == (34, 100)


def test_a_resumed_run_keeps_the_groups_statistics(tmp_path):
    def outcome(prompt: int, step: int) -> bool:
        return prompt < 6 or step % 2 == 0

    options = dict(batch_size=4, probability=0.8, decay=0.5, seed=7, groups=["x", "y", "z"] * 4)
    straight, shares = train(sampler(12, **options), outcome, steps=8)
    assert any(shares)
    interrupted = sampler(12, **options)
    train(interrupted, outcome, steps=5)
    interrupted.save(tmp_path)
    resumed = sampler(12, **options)
    assert resumed.load(tmp_path) and resumed.skip == interrupted.skip
    assert train(resumed, outcome, 3, first_step=5) == (straight[5:], shares[5:])


def test_groups_come_from_a_named_column_of_plain_values():
    dataset = Dataset.from_dict({"kind": ["a", "b", "a"], "answers": [["x"], ["y"], ["z"]]})
    assert group_column(dataset, "kind") == ["a", "b", "a"]
    with pytest.raises(InputError, match=r"^skip_zero_std_by: .* no column 'source' \(it has "):
        group_column(dataset, "source")
    with pytest.raises(InputError, match=r"^skip_zero_std_by: row 0's 'answers' is \['x'\]"):
        group_column(dataset, "answers")
    with pytest.raises(ValueError, match="2 groups for 3 prompts"):
        ZeroStdSkipSampler([0, 1, 2], mini_repeat_count=2, groups=["a", "b"])


def test_batches_keep_trls_shape_however_many_prompts_are_skipped():
    options = dict(mini_repeat_count=3, batch_size=4, repeat_count=2, seed=1)
    ours = ZeroStdSkipSampler(list(range(10)), **options, probability=1.0)
    ours.record(range(10), [True] * 10)  # every prompt may be skipped
    theirs = RepeatSampler(list(range(10)), **options)

    for s in (ours, theirs):
        indices = list(s)
        assert len(indices) == len(s) == 2 * 4 * 3 * 2  # 10 prompts make two batches of 4
        for start in range(0, len(indices), 4 * 3 * 2):
            block = indices[start : start + 4 * 3 * 2]
            once = block[: 4 * 3]
            assert block[4 * 3 :] == once  # the batch again (repeat_count)
            prompts = once[::3]
            assert len(set(prompts)) == 4  # four different prompts...
            assert once == [p for p in prompts for _ in range(3)]  # ...each 3 times
    assert ours.skipped > 0


def test_a_skipped_prompt_comes_back():
    s = sampler(8, probability=1.0, decay=0.5)
    s.record(range(8), [True] * 8)  # every prompt had zero std: each one's next draw is skipped
    seen = [prompt for _ in range(3) for prompt in list(s)[::2]]
    assert sorted(set(seen)) == list(range(8))
    assert s.skipped >= 8


def test_processes_share_out_the_batches_one_process_would_train():
    """Each process builds the sampler alike and records the same gathered outcomes: with
    accelerate's sharding, each trains its half of the batch one process alone would."""

    def outcome(prompt: int, step: int) -> bool:
        return prompt % 2 == 0

    options = dict(batch_size=4, probability=0.8, seed=5)
    alone, shares = train(sampler(8, **options), outcome, steps=6)
    assert any(shares)

    samplers = [sampler(8, **options) for _ in range(2)]
    trained = []
    for _ in range(3):  # epochs
        ranks = [
            prefetched(iter(BatchSamplerShard(BatchSampler(s, 4, False), 2, rank)))
            for rank, s in enumerate(samplers)
        ]
        for halves in zip(*ranks, strict=True):  # 2 prompts x 2 episodes on each process
            prompts = [index for half in halves for index in half][::2]
            for s in samplers:
                s.record(prompts, [outcome(p, len(trained)) for p in prompts])
            trained.append(prompts)
    assert trained == alone


@pytest.mark.parametrize("stop", [5, 6], ids=["mid-epoch", "at an epoch's end"])
def test_a_resumed_run_draws_what_the_uninterrupted_one_drew(stop, tmp_path):
    def outcome(prompt: int, step: int) -> bool:
        return (prompt + step) % 3 != 0

    options = dict(batch_size=4, probability=0.8, decay=0.5, seed=7)
    straight, shares = train(sampler(12, **options), outcome, steps=10)  # 3 batches an epoch
    assert any(shares)  # prompts were skipped

    interrupted = sampler(12, **options)
    assert train(interrupted, outcome, steps=stop) == (straight[:stop], shares[:stop])
    interrupted.save(tmp_path)  # at the checkpoint: its next batch is already drawn
    assert (tmp_path / STATE_FILE).is_file()
    # Mid-epoch, the epoch's batches so far are drawn again for the data loader to skip.
    assert bool(interrupted.state_dict()["replay"]) == (stop % 3 != 0)

    resumed = sampler(12, **options)
    assert resumed.load(tmp_path) and not sampler(12).load(tmp_path / "elsewhere")
    steps = 10 - stop
    assert train(resumed, outcome, steps, first_step=stop) == (straight[stop:], shares[stop:])


def test_zero_std_is_trls_test_on_the_weighted_reward_of_each_group():
    rewards_per_func = torch.tensor(
        [
            [1.0, 0.0],  # group 0: weighted 1, 1 (the second reward has weight 0)
            [1.0, 1.0],
            [0.0, 1.0],  # group 1: weighted 0, 1
            [1.0, 1.0],
            [math.nan, math.nan],  # group 2: one row unscored; one value has no std (NaN),
            [0.5, 0.0],  # so, as for TRL's frac_reward_zero_std, not zero
        ]
    )
    weights = torch.tensor([1.0, 0.0])  # as the episode metrics' weight 0
    assert zero_std_groups(rewards_per_func, weights, 2) == [True, False, False]
    assert zero_std_groups(rewards_per_func[:4], weights, 4) == [False]


def test_the_training_split_gets_each_rows_index():
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c"]})
    assert with_prompt_index(dataset)[INDEX_COLUMN] == [0, 1, 2]
    with pytest.raises(InputError, match=f"^skip_zero_std_prompts: .* {INDEX_COLUMN} column"):
        with_prompt_index(with_prompt_index(dataset))
