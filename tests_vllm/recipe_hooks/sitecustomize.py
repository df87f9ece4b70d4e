"""Imported at start-up by the training processes of `test_vllm_recipes.py`'s runs (this folder
is on their PYTHONPATH; `accelerate launch` marks the processes it starts with
ACCELERATE_MIXED_PRECISION), to see what vLLM was asked and to stand in for the one thing a CPU
cannot do. Each hook is on when its variable names a file, where it appends one JSON line per
event.

- RESEARCH_R1_VLLM_CALLS: every `vllm.LLM.generate` call (TRL's colocate engine): how many
  prompts, the engine's context length and each request's sampling settings.
- RESEARCH_R1_WEIGHT_SYNC: TRL 1.16 syncs weights to a vLLM server over NCCL only and refuses a
  CPU ("needs a CUDA device"), and vLLM 0.32 has no transport a CPU could use. So TRL's client
  joins no NCCL group and, at each sync, takes every tensor TRL streams (the LoRA adapter is
  merged and unmerged around them, as in a real sync) and records their names, dtypes and shapes
  instead of broadcasting them: the server keeps the weights it loaded. Generation, and the
  prefix-cache reset that follows a sync, still go to the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any


def _record(path: str, entry: dict[str, Any]) -> None:
    with open(path, "a") as log:
        log.write(json.dumps({"rank": int(os.environ.get("RANK", "0")), **entry}) + "\n")


def _record_vllm_calls(path: str) -> None:
    from vllm import LLM

    generate = LLM.generate

    def recorded(self: LLM, prompts: Any = None, sampling_params: Any = None, **kwargs: Any):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params]
        entry = {
            "prompts": len(prompts) if isinstance(prompts, list) else 1,
            "max_model_len": self.llm_engine.vllm_config.model_config.max_model_len,
            "sampling": [
                {
                    "temperature": p.temperature,
                    "top_p": p.top_p,
                    "max_tokens": p.max_tokens,
                    "stop": list(p.stop or []),
                }
                for p in params
            ],
        }
        _record(path, {"event": "generate", **entry})
        return generate(self, prompts, sampling_params, **kwargs)

    LLM.generate = recorded


def _stub_nccl_transport(path: str) -> None:
    from trl.generation.vllm_client import VLLMClient

    def init_communicator(self: VLLMClient, device: Any = 0) -> None:
        _record(path, {"event": "init_communicator", "device": str(device)})

    def update_named_params(
        self: VLLMClient, metadata: list[tuple[str, str, list[int]]], named_params: Iterator
    ) -> None:
        sent = [
            (name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape))
            for name, tensor in named_params
        ]
        _record(path, {"event": "update_named_params", "announced": metadata, "sent": sent})

    VLLMClient.init_communicator = init_communicator
    VLLMClient.update_named_params = update_named_params


if "ACCELERATE_MIXED_PRECISION" in os.environ:
    if os.environ.get("RESEARCH_R1_VLLM_CALLS"):
        _record_vllm_calls(os.environ["RESEARCH_R1_VLLM_CALLS"])
    if os.environ.get("RESEARCH_R1_WEIGHT_SYNC"):
        _stub_nccl_transport(os.environ["RESEARCH_R1_WEIGHT_SYNC"])
