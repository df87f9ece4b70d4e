"""What an eval run loads before its first question: the questions, each checked, the tokenizer,
the generator (transformers or vLLM, greedy unless the family's evaluation sampled) and the
retriever, probed once so that a dead one fails at once, named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from research_r1 import hub
from research_r1.data import check_rows, find_source, load_source
from research_r1.errors import InputError
from research_r1.evaluation.plan import Plan
from research_r1.generation import TransformersGenerator, stop_token_ids
from research_r1.generation_vllm import VLLMGenerator, size_cpu_kv_cache, spawn_cpu_workers
from research_r1.generators import Generator
from research_r1.retrieval import RetrievalError, Retriever
from research_r1.retrieval.config import load_retriever

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One question as the family's evaluation asks it, with the answers it is scored against."""

    id: str
    question: str
    golden_answers: list[str]


def load_questions(plan: Plan) -> dict[str, list[Question]]:
    """Every dataset's questions, checked, before any model is loaded: an unknown dataset or
    split, or an unreadable file, fails here and names itself."""
    found = {}
    for name, entry in plan.datasets.items():
        source = find_source(entry, plan.splits[name], plan.source)
        rows, skipped = check_rows(load_source(source), source, skip_bad=plan.skip_bad)
        if skipped:
            logger.warning("%s: skipped %s", name, dict(skipped))
        if plan.suite.subset is not None and name not in plan.suite.whole_sets:
            rows = rows.shuffle(seed=42).select(range(min(plan.suite.subset, len(rows))))
        if plan.limit is not None:
            rows = rows.select(range(min(plan.limit, len(rows))))
        columns = rows.select_columns(["id", "question", "golden_answers"]).to_dict()
        ids, texts, golds = columns["id"], columns["question"], columns["golden_answers"]
        found[name] = [
            Question(i, normalise_question(text, plan), gold)
            for i, text, gold in zip(ids, texts, golds, strict=True)
        ]
    return found


def normalise_question(question: str, plan: Plan) -> str:
    """As the family prepared its questions (stripped, a `?` added, or as they are)."""
    return plan.family.template.question(question)


# Chat models end a turn with these; a base model prompted through the chat template writes them
# too, and their authors' loops stop there (Search-R1: EOS ids 151645 and 151643 for Qwen2.5).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")


def stop_ids(plan: Plan, tokenizer: Any) -> list[int]:
    """The ids a turn ends at: for a published family, as vLLM picks them for its checkpoint
    (the tokenizer's EOS and its generation config's) and any its loop adds; for ours, every
    end-of-turn token the vocabulary has, as our training stops there."""
    if plan.family.audited is None:
        vocab = tokenizer.vocab
        ends = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN_TOKENS if t in vocab]
        return sorted({*ends, tokenizer.eos_token_id} - {None})
    try:
        config = GenerationConfig.from_pretrained(plan.model, revision=plan.revision)
    except OSError:  # a checkpoint without generation_config.json
        config = GenerationConfig()
    return stop_token_ids(tokenizer, config.eos_token_id, plan.family.stop_tokens)


def load_generator(plan: Plan, tokenizer: Any) -> Generator:
    """The model, decoding greedily (or, with `--decoding upstream`, sampling as the family's
    evaluation sampled, seeded) and stopping at `stop_ids`."""
    eos = stop_ids(plan, tokenizer)
    sampling = plan.sampling
    if plan.backend == "vllm":
        if (Path(plan.model) / "adapter_config.json").is_file():
            raise InputError(
                f"model {plan.model}: a LoRA adapter, which this vLLM path does not load; merge "
                "it (peft's merge_and_unload) or use --backend transformers"
            )
        from vllm import LLM  # vLLM is an optional extra

        if not torch.cuda.is_available():
            size_cpu_kv_cache()
            spawn_cpu_workers()
        llm = LLM(
            model=plan.model,
            revision=plan.revision,
            tensor_parallel_size=plan.tensor_parallel_size,
            dtype="auto",
            seed=0,
            enforce_eager=not torch.cuda.is_available(),  # CPU: no minutes of compiling first
        )
        return VLLMGenerator(
            llm,
            temperature=sampling.get("temperature", 0.0),
            top_p=sampling.get("top_p", 1.0),
            seed=0 if sampling else None,
            generation_kwargs={"stop_token_ids": eos},
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(plan.model, revision=plan.revision, dtype="auto")
    model = model.to(device).eval()
    if sampling:
        torch.manual_seed(0)
    decoding = GenerationConfig(
        do_sample=bool(sampling), **sampling, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    return TransformersGenerator(model, tokenizer, decoding, batch_size=plan.batch_size)


def load_tokenizer(plan: Plan) -> Any:
    """The checkpoint's tokenizer: a model that cannot be found fails here, named, before any
    question is read. A LoRA checkpoint (`adapter_config.json`) carries its tokenizer too."""
    try:
        return AutoTokenizer.from_pretrained(plan.model, revision=plan.revision)
    except (OSError, ValueError) as error:
        mapped = hub.model_error(error, plan.model, plan.revision)  # the Hub's: exit 4 or 2
        raise mapped or InputError(f"model {plan.model}: {error}") from error


def open_retriever(plan: Plan) -> Retriever:
    """The run's retriever; a suite whose retriever cannot be served here says what it needs."""
    if plan.retriever is None:
        raise InputError(f"suite {plan.suite.name}: {plan.suite.needs}")
    return load_retriever(plan.retriever)


def probe(retriever: Retriever, plan: Plan, question: str) -> None:
    """One search before the first question, so a dead retriever fails at once, named."""
    try:
        retriever.search([question], plan.rollout.k)
    except RetrievalError as error:
        assert plan.retriever is not None
        raise InputError(f"retriever {_name(plan.retriever)}: the probe failed: {error}") from error


def _name(retriever: Mapping[str, Any] | str) -> str:
    return retriever if isinstance(retriever, str) else str(retriever.get("index", retriever))
