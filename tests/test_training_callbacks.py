"""Checkpoint pushes (research_r1.training.callbacks' HubPushCallback): one upload at a time,
only the newest checkpoint waiting, as `hub_strategy` says, and a checkpoint deleted before its
push skipped."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import COMMIT, fake_hub

from research_r1.errors import InputError
from research_r1.training.callbacks import TRAINING_STATE_FILES, HubPushCallback


def test_checkpoint_pushes_wait_their_turn_and_only_the_newest_waits(tmp_path, monkeypatch):
    uploads, started, release = [], threading.Event(), threading.Event()

    def upload_folder(api, **kwargs):
        uploads.append((Path(kwargs["folder_path"]).name, kwargs["path_in_repo"], api.token))
        started.set()
        release.wait(timeout=10)
        return COMMIT

    fake_hub(monkeypatch, upload_folder)
    pusher = HubPushCallback("org/run", token="secret")
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()

    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=1), None)
    assert started.wait(timeout=10)  # step 1 is uploading...
    for step in (2, 3):  # ...while two more checkpoints are saved
        pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=step), None)
    release.set()
    pusher.on_train_end(args, None, None)

    assert uploads == [
        ("checkpoint-1", "last-checkpoint", "secret"),
        ("checkpoint-3", "last-checkpoint", "secret"),
    ]
    with pytest.raises(InputError, match=r"^hub_model_id: required with push_to_hub"):
        HubPushCallback(None)


@pytest.mark.parametrize(
    ("strategy", "pushed"),
    [
        ("checkpoint", [("checkpoint-4", "last-checkpoint", None)]),
        ("all_checkpoints", [("checkpoint-4", "checkpoint-4", None)]),
        ("every_save", [("checkpoint-4", None, TRAINING_STATE_FILES)]),
        ("end", []),
    ],
)
def test_checkpoint_pushes_follow_hub_strategy(tmp_path, monkeypatch, strategy, pushed):
    uploads = []

    def upload_folder(api, **kwargs):
        name = Path(kwargs["folder_path"]).name
        uploads.append((name, kwargs["path_in_repo"], kwargs["ignore_patterns"]))
        return COMMIT

    fake_hub(monkeypatch, upload_folder)
    pusher = HubPushCallback("org/run", strategy)
    args = SimpleNamespace(output_dir=str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    pusher.on_train_end(args, None, None)
    assert uploads == pushed


def test_a_deleted_checkpoint_is_skipped(tmp_path, monkeypatch, caplog):
    fake_hub(monkeypatch, lambda api, **kwargs: COMMIT)
    pusher = HubPushCallback("org/run")
    args = SimpleNamespace(output_dir=str(tmp_path))
    pusher.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=2), None)
    pusher.on_train_end(args, None, None)
    assert "checkpoint 2 was deleted before its push; skipped" in caplog.text
