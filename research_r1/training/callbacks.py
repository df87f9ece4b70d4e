"""Trainer callbacks: the reward curve as a PNG, and checkpoints pushed to the Hub.

A push runs in a background thread, is retried (`research_r1.hub.push_folder`), and a push that
still fails is logged and dropped: losing a checkpoint upload must never stop hours of training.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from research_r1 import hub
from research_r1.errors import InputError

logger = logging.getLogger(__name__)

CURVE_FILE = "reward_curve.png"
# What a checkpoint holds besides the model: resuming needs it, using the model does not.
TRAINING_STATE_FILES = ["optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json"]


def plot_reward_curve(log_history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Reward (and each reward function's mean) against step; None when nothing was logged."""
    parts = {k for row in log_history for k in row if re.fullmatch(r"rewards/.+/mean", k)}
    keys = ["reward", *sorted(parts)]
    series = {
        key: [(row["step"], row[key]) for row in log_history if row.get(key) is not None]
        for key in keys
    }
    if not series["reward"]:
        return None
    figure = Figure(figsize=(7, 4))  # no pyplot: no GUI backend, no global figure state
    axis = figure.subplots()
    for key, points in series.items():
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=key, linewidth=2 if key == "reward" else 1)
    axis.set_xlabel("step")
    axis.set_ylabel("mean reward")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)


class RewardPlotCallback(TrainerCallback):
    """Redraws `reward_curve.png` in the run's folder at every save and at the end."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / CURVE_FILE

    def _draw(self, state) -> None:
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            plot_reward_curve(state.log_history, self.path)

    def on_save(self, args, state, control, **kwargs):
        self._draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._draw(state)


class HubPushCallback(TrainerCallback):
    """Uploads each saved checkpoint to `repo_id` in the background, as `hub_strategy` says:
    `checkpoint` to the folder `last-checkpoint` (resumable), `all_checkpoints` each to a folder
    of its own name, `every_save` the model files at the repo root, `end` nothing (the final
    push does it all).

    The Trainer's own checkpoint pushes are never retried and fail silently, and it pickles the
    token into every checkpoint, so this callback pushes instead, with the token held here only.
    One upload runs at a time. A save made while another upload runs replaces any push still
    waiting, so a slow network never piles up stale checkpoints, and uploads seldom meet a folder
    that `save_total_limit` has deleted since (such a push is skipped, and logged). A push that
    fails from outside the program (the Hub, the network, the disk) or on our input errors is
    logged, never fatal; any other error is a bug and raises from `wait()`, which blocks until
    the queue is empty.
    """

    def __init__(
        self,
        repo_id: str | None,
        strategy: str = "checkpoint",
        token: str | None = None,
        private: bool | None = None,
    ) -> None:
        if not repo_id:
            raise InputError("hub_model_id: required with push_to_hub")
        self.repo_id, self.strategy = repo_id, str(strategy)
        self.token, self.private = token, bool(private)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-push")
        self.pending: list[Future] = []
        self.lock = threading.Lock()
        self.waiting: tuple[Path, int] | None = None

    def _push_waiting(self) -> None:
        with self.lock:
            job, self.waiting = self.waiting, None
        if job is None:  # a later save's push took it
            return
        folder, step = job
        if not folder.is_dir():  # `save_total_limit` deleted it while another push ran
            logger.warning("checkpoint %d was deleted before its push; skipped", step)
            return
        places = {"checkpoint": "last-checkpoint", "all_checkpoints": folder.name}
        try:
            hub.push_folder(
                folder,
                self.repo_id,
                path_in_repo=places.get(self.strategy, ""),
                ignore_patterns=None if self.strategy in places else TRAINING_STATE_FILES,
                commit_message=f"Checkpoint at step {step}",
                private=self.private,
                token=self.token,
                what=f"push checkpoint {step}",
            )
        except (*hub.PUSH_ERRORS, InputError) as error:  # never fatal; a bug of ours raises
            logger.error("giving up on pushing checkpoint %d: %s", step, hub.scrub(str(error)))
        else:
            logger.info("pushed checkpoint %d to %s", step, self.repo_id)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.strategy != "end":
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            with self.lock:
                self.waiting = (folder, state.global_step)
            self.pending.append(self.executor.submit(self._push_waiting))

    def wait(self) -> None:
        """Block until every queued push has finished (or given up); a push that failed for
        a reason outside the program was logged, a bug in our own code raises here."""
        for future in self.pending:
            future.result()
        self.pending.clear()

    def on_train_end(self, args, state, control, **kwargs):
        self.wait()
