"""`research-r1 eval MODEL`: a checkpoint, ours or published, on a published setting.

    research-r1 eval PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo
    research-r1 eval outputs/demo/grpo --datasets demo=outputs/demo/questions/test.jsonl \\
        --retriever outputs/demo/retriever.yaml

A library with one typed entry: `run_eval(EvalArguments(...))`, which the command line parses
into and Python callers (the eval after training) build. Its steps, one module each: the plan
(`plan`: family, suite, overrides, retriever; `--dry-run` prints it), what it loads (`load`:
questions, tokenizer, generator, retriever), the questions played per method with traces that
resume (`run`), and the results written and published (`report`). `ask` and the app play one
question as the `agent` method does, through the same plan and `play`. Greedy decoding, unless
`--decoding upstream` samples as a family's evaluation did.
"""

from __future__ import annotations

import json

from research_r1.errors import InputError
from research_r1.evaluation.arguments import (
    METHODS,
    EvalArguments,
    ModelArguments,
    PlayArguments,
)
from research_r1.evaluation.load import (
    Question,
    load_generator,
    load_questions,
    load_tokenizer,
    normalise_question,
    open_retriever,
    probe,
)
from research_r1.evaluation.plan import Plan, agent_plan, make_plan
from research_r1.evaluation.report import publish, write_results
from research_r1.evaluation.run import play, play_method, trace

__all__ = [
    "METHODS",
    "EvalArguments",
    "ModelArguments",
    "Plan",
    "PlayArguments",
    "Question",
    "agent_plan",
    "load_generator",
    "load_tokenizer",
    "make_plan",
    "normalise_question",
    "open_retriever",
    "play",
    "probe",
    "run_eval",
    "trace",
]


def run_eval(args: EvalArguments) -> int:
    """Evaluate `args.model` as `args` say: every method on every dataset, resumed from the
    output folder's traces, its results written and published as asked."""
    plan = make_plan(args)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2, ensure_ascii=False))
        return 0
    if plan.retriever is None:
        raise InputError(f"suite {plan.suite.name}: {plan.suite.needs}")
    if not plan.datasets:
        raise InputError(f"--datasets: {plan.suite.files}")
    tokenizer = load_tokenizer(plan)
    questions = load_questions(plan)
    retriever = open_retriever(plan)
    probe(retriever, plan, next(q for qs in questions.values() for q in qs).question)
    generator = load_generator(plan, tokenizer)
    records = []
    for method in plan.methods:
        traces = play_method(
            method, plan, questions, generator, tokenizer, retriever, overwrite=args.overwrite
        )
        records.append(write_results(plan, method, traces))
    publish(plan, records, update_card=args.update_model_card, repo_id=args.push_to_hub)
    return 0
