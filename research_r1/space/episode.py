"""What the Space's page shows of an episode: its steps, live or finished.

The app (`app.py`) plays one episode per question. While it runs, `LiveTurns` (a rollout
watcher) holds its steps as they happen, each search pending until its passages are back; when
it is over, `transcript_turns` reads the steps again from the episode itself, so the page ends
on what the model really read. No command here, and no Gradio: the app turns these `Turn`s into
chat messages.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Any, Literal

from research_r1.passages import ShownPassage
from research_r1.protocol import Protocol, extract_answer, split_turn
from research_r1.retrieval import Passage
from research_r1.rollout import Episode


@dataclass(frozen=True)
class Turn:
    """One step of an episode as the demo shows it.

    `kind` is "think" (the model's reasoning), "search" (`text` is the query and `passages` the
    (title, text) pairs the model read back, once they are back), "answer" (the final answer),
    or "notice" (other text the environment inserted: the invalid-step or last-turn notice).
    """

    kind: Literal["think", "search", "answer", "notice"]
    text: str
    passages: tuple[ShownPassage, ...] = ()
    pending: bool = False  # a search whose passages have not come back yet


def transcript_turns(episode: Episode, tokenizer: Any, protocol: Protocol) -> list[Turn]:
    """The episode's steps in order, read from its `env_mask` runs: each run of sampled ids is
    one model turn, each run of inserted ids what the environment answered. Passages are read
    from the observation text, so they are what the model saw (cut where the observation was)."""
    turns: list[Turn] = []
    pairs = zip(episode.completion_ids, episode.env_mask, strict=True)
    for sampled, run in groupby(pairs, key=lambda pair: pair[1]):
        text = tokenizer.decode([token for token, _ in run], skip_special_tokens=True)
        if sampled:
            turns += _model_turns(text, protocol)
            continue
        passages, notices = _read_observation(text, protocol)
        if turns and turns[-1].kind == "search" and passages:
            turns[-1] = replace(turns[-1], passages=passages)
        turns += [Turn("notice", notice) for notice in notices]
    return turns


class LiveTurns:
    """A rollout `Watcher` for one episode: its steps so far, a copy of them put on `updates` at
    each change (a search is pending until its passages are back; the player puts None when the
    episode is over), and `stop()`, which ends the episode at its next step (`EpisodeStopped`),
    for a time limit."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.steps: list[Turn] = []
        self.updates: queue.SimpleQueue[list[Turn] | None] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def turn(self, row: int, text: str) -> None:
        self._go_on()
        turns = _model_turns(text, self.protocol)
        self.steps += [replace(t, pending=True) if t.kind == "search" else t for t in turns]
        self.updates.put(list(self.steps))

    def searched(self, row: int, query: str, passages: Sequence[Passage]) -> None:
        self._go_on()
        shown = tuple(ShownPassage(p.title, p.text) for p in passages)
        self.steps[-1] = replace(self.steps[-1], passages=shown, pending=False)
        self.updates.put(list(self.steps))

    def stop(self) -> None:
        self._stopped.set()

    def _go_on(self) -> None:
        if self._stopped.is_set():
            raise EpisodeStopped("the episode was stopped")


class EpisodeStopped(Exception):
    """Raised inside the rollout when a live view stops its episode."""


def _model_turns(text: str, protocol: Protocol) -> list[Turn]:
    """The reasoning before the turn's action (tags removed), then the action itself."""
    thought, action = split_turn(text, protocol)
    turns = [Turn("think", thought)] if thought else []
    if action.kind == "search":
        turns.append(Turn("search", action.content))
    elif action.kind == "answer":
        turns.append(Turn("answer", extract_answer(text, protocol) or action.content))
    return turns


def _read_observation(text: str, protocol: Protocol) -> tuple[tuple[ShownPassage, ...], list[str]]:
    """Passages inside the observation tags, and any other inserted text as notices."""
    head, opened, rest = text.partition(protocol.observation_open)
    if not opened:
        return (), [text.strip()] if text.strip() else []
    body, _, tail = rest.partition(protocol.observation_close)
    passages = protocol.passages.parse(body.strip())
    notices = [part.strip() for part in (head, tail) if part.strip()]
    if not passages and body.strip():
        notices.insert(0, body.strip())
    return passages, notices
