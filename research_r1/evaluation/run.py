"""Playing an eval run's questions, and the traces that let it resume.

`play` runs one batch under a method: the family's search loop for `agent`, through the same
rollout as training, or one turn without search for the baselines `direct` and `rag` (top-k
passages for the question once, then answer). `play_robustly` keeps a batch's failures to the
questions that failed, and only for the failures that belong to one question (see
`per_question`): a bug, a broken backend or a retriever that stays unreachable stops the run.

Each method's folder holds `traces/{dataset}.jsonl` (one line per question, written as each
batch ends, stamped with the run's fingerprint) and `run.yaml` (what the traces were played
with). A run that stops resumes from its traces: questions already answered are skipped, those
that failed are tried again, and traces of another model or setting are refused.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from research_r1.errors import InputError
from research_r1.evaluation.load import Question
from research_r1.evaluation.plan import Plan, fingerprint, method_template
from research_r1.evaluation.scoring import Scoring
from research_r1.generators import Generator
from research_r1.protocol import Prompt, Protocol, follows_format, render_prompt
from research_r1.retrieval import QueryRejected, Retriever
from research_r1.rollout import (
    Episode,
    Watcher,
    encode_prompt,
    run_rollout,
    search_through_outages,
)

logger = logging.getLogger(__name__)


def play_method(
    method: str,
    plan: Plan,
    questions: Mapping[str, Sequence[Question]],
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    *,
    overwrite: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Every dataset's traces under `method`, in the folder `plan.output_dir/method`, claimed for
    this run (`claim_folder`); each dataset resumes from its trace file."""
    protocol = method_template(method, plan.family.template).protocol
    folder = plan.output_dir / method
    settings = claim_folder(folder, plan, method, overwrite=overwrite)

    def play_batch(batch: Sequence[Question]) -> list[dict[str, Any]]:
        return play_robustly(method, batch, plan, generator, tokenizer, retriever, protocol)

    traces = {}
    for name, asked in questions.items():
        stamp = {
            "model": plan.model,
            "revision": plan.revision,
            "run": fingerprint({**settings, "dataset": plan.dataset_settings(name)}),
        }
        path = folder / "traces" / f"{name}.jsonl"
        headline = plan.family.scoring.headline
        traces[name] = run_dataset(name, asked, path, plan.batch_size, play_batch, stamp, headline)
    return traces


def claim_folder(folder: Path, plan: Plan, method: str, *, overwrite: bool) -> dict[str, Any]:
    """Make `folder` this run's, and return the run's result settings.

    `run.yaml` records what the folder's traces were played with; a run with other settings
    (another model, another k, another file under a dataset's name...) is refused, naming
    what differs, unless `overwrite` clears the folder first."""
    settings = json.loads(json.dumps(plan.result_settings(method)))  # as run.yaml holds them
    datasets = {name: plan.dataset_settings(name) for name in plan.datasets}
    record_path = folder / "run.yaml"
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if record_path.is_file():
        record = yaml.safe_load(record_path.read_text())
        before = {"settings": record["settings"], "datasets": {}}
        after = {"settings": settings, "datasets": {}}
        for name in datasets.keys() & record["datasets"].keys():
            before["datasets"][name] = record["datasets"][name]
            after["datasets"][name] = datasets[name]
        changed = differences(before, after)
        if changed:
            raise InputError(
                f"{folder} holds the traces of another run ({'; '.join(changed)}); give another "
                "--output_dir, or --overwrite to replace them"
            )
        datasets = record["datasets"] | datasets
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(
        yaml.safe_dump({"settings": settings, "datasets": datasets}, allow_unicode=True)
    )
    return settings


def differences(before: Any, after: Any, key: str = "") -> list[str]:
    """`key: old → new` for every leaf that differs between two JSON-like values."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        return [
            line
            for name in sorted(before.keys() | after.keys())
            for line in differences(
                before.get(name), after.get(name), f"{key}.{name}" if key else name
            )
        ]
    if before == after:
        return []
    shown = [json.dumps(value, ensure_ascii=False, default=str) for value in (before, after)]
    return [f"{key.removeprefix('settings.')}: {shown[0][:60]} → {shown[1][:60]}"]


def run_dataset(
    name: str,
    questions: Sequence[Question],
    path: Path,
    batch_size: int,
    play_batch: Callable[[Sequence[Question]], list[dict[str, Any]]],
    stamp: Mapping[str, Any],
    headline: str = "em",
) -> list[dict[str, Any]]:
    """Every question's trace, appended to `path` batch by batch, each line stamped with the
    model and the run's fingerprint (`stamp`); questions already answered there are skipped,
    and a line of another run is refused. A progress bar shows the running `headline` score."""
    done = read_traces(path)
    foreign = sorted({str(t.get("run")) for t in done.values() if t.get("run") != stamp["run"]})
    if foreign:
        raise InputError(
            f"{path} holds traces of another run (fingerprint {', '.join(foreign)}, this run's "
            f"is {stamp['run']}); give another --output_dir, or --overwrite to replace them"
        )
    todo = [q for q in questions if q.id not in done or done[q.id]["error"] is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    scored = [t["scores"][headline] for t in done.values() if t["error"] is None]
    with path.open("a") as sink, tqdm(total=len(questions), desc=name, unit="q") as bar:
        bar.update(len(questions) - len(todo))
        for start in range(0, len(todo), batch_size):
            for line in play_batch(todo[start : start + batch_size]):
                line = {**line, **stamp}
                sink.write(json.dumps(line) + "\n")
                done[line["id"]] = line
                scored.append(line["scores"][headline])
            sink.flush()
            bar.update(min(batch_size, len(todo) - start))
            bar.set_postfix({headline: f"{sum(scored) / max(1, len(scored)):.3f}"})
    return [done[q.id] for q in questions]


def read_traces(path: Path) -> dict[str, dict[str, Any]]:
    """The traces written so far, the last line of each question winning; a line cut off by a
    crash is dropped (its question is played again)."""
    found: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return found
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        found[record["id"]] = record
    return found


def play_robustly(
    method: str,
    batch: Sequence[Question],
    plan: Plan,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
) -> list[dict[str, Any]]:
    """The batch's traces. When the batch fails for a reason of its questions' own
    (`per_question`), each question is played alone, and one that still fails is recorded with
    its error, to be played again on resume. Any other exception stops the run: a bug must not
    become a column of failed questions, nor an outage a run of them (the traces so far resume
    it)."""
    try:
        episodes = play(method, batch, plan, generator, tokenizer, retriever)
    except Exception as error:
        if not per_question(error):
            raise
        if len(batch) == 1:
            logger.warning("question %s failed: %s", batch[0].id, error)
            return [failed(batch[0], error, plan.family.scoring)]
        return [
            line
            for question in batch
            for line in play_robustly(
                method, [question], plan, generator, tokenizer, retriever, protocol
            )
        ]
    return [trace(q, e, tokenizer, plan, protocol) for q, e in zip(batch, episodes, strict=True)]


# The failures of the questions played rather than of the run. torch's OutOfMemoryError is a
# RuntimeError, the type of the rollout's own consistency checks, which stop the run.
QUESTION_FAILURES = (QueryRejected, torch.OutOfMemoryError, MemoryError)


def per_question(error: BaseException) -> bool:
    """Whether `error` belongs to the questions played: a query the retriever refuses, memory a
    batch ran out of (played alone, each question may fit), or a prompt longer than the model's
    context, which vLLM refuses with its `VLLMValidationError` (named here, so that vLLM stays
    an optional import; transformers refuses no length)."""
    if isinstance(error, QUESTION_FAILURES):
        return True
    return type(error).__name__ == "VLLMValidationError" and "maximum model length" in str(error)


def play(
    method: str,
    questions: Sequence[Question],
    plan: Plan,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    watcher: Watcher | None = None,
) -> list[Episode]:
    """One batch of questions: the search loop for `agent`, one turn without search for the
    baselines (`rag` with the question's passages in its prompt, searched for as the agent
    searches: an outage is waited out). Each episode is played by itself: its budgets never
    depend on the others of its batch. A `watcher` sees the episodes as they are played."""
    template = method_template(method, plan.family.template)
    protocol = template.protocol
    prompts: list[Prompt] = [template.prompt(q.question) for q in questions]
    config = plan.rollout
    if method == "rag":
        queries = [q.question for q in questions]
        found = search_through_outages(retriever, queries, config.k, config.max_retriever_wait_s)
        documents = [protocol.passages.format(passages) for passages in found]
        prompts = [_with_documents(p, d) for p, d in zip(prompts, documents, strict=True)]
    if method != "agent":
        config = config.model_copy(update={"max_turns": 0, "last_turn": "answer"})
    return run_rollout(
        [encode_prompt(p, tokenizer, special_tokens=protocol.special_tokens) for p in prompts],
        generator=generator,
        tokenizer=tokenizer,
        retriever=retriever,
        protocol=protocol,
        config=config,
        watcher=watcher,
        # a `text` loop continues the prompt's text (the others never read it)
        prompt_texts=[render_prompt(p, tokenizer) for p in prompts]
        if protocol.tokens == "text"
        else None,
    )


def _with_documents(prompt: Prompt, documents: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt.replace("{documents}", documents)
    return [{**m, "content": m["content"].replace("{documents}", documents)} for m in prompt]


def trace(
    question: Question, episode: Episode, tokenizer: Any, plan: Plan, protocol: Protocol
) -> dict[str, Any]:
    """One question's line in `traces/{dataset}.jsonl`: the episode, the prediction read as
    the family's evaluation reads it, and its scores."""
    scoring = plan.family.scoring
    answer = scoring.predict(episode, tokenizer, protocol.invalid_notice)
    if protocol.tokens == "text":
        completion = episode.completion_text
        transcript = episode.prompt_text + completion
    else:
        completion = tokenizer.decode(episode.completion_ids, skip_special_tokens=True)
        transcript = tokenizer.decode(
            episode.prompt_ids + episode.completion_ids, skip_special_tokens=False
        )
    if episode.answered:
        finish = "answered"
    elif episode.truncated or episode.finish == "length":
        finish = "truncated"
    else:
        finish = "no_answer"
    return {
        "id": question.id,
        "question": question.question,
        "golden_answers": question.golden_answers,
        "prediction": answer.prediction,
        "scores": scoring.scores(answer.prediction, question.golden_answers),
        "transcript": transcript,
        "queries": episode.queries,
        "retrieved_ids": episode.retrieved_ids,
        "searches": episode.num_searches,
        "turns": len(episode.turns),
        "tokens": len(episode.completion_ids),
        "finish": finish,
        "valid_format": follows_format(completion, protocol)[0],
        "error": None,
    }


def failed(question: Question, error: Exception, scoring: Scoring) -> dict[str, Any]:
    """The line of a question whose episode raised: recorded, tried again on resume."""
    return {
        "id": question.id,
        "question": question.question,
        "golden_answers": question.golden_answers,
        "prediction": None,
        "scores": scoring.scores(None, question.golden_answers),
        "finish": "error",
        "valid_format": False,
        "searches": 0,
        "error": f"{type(error).__name__}: {error}",
    }
