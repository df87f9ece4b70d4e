"""Published search agents, as data: which template, protocol and settings each checkpoint needs.

A checkpoint is evaluated the way its authors ran it, or its score says nothing about it: the
same prompt (with or without the chat template), the same tags, the same observation format,
the same number of passages and turns. One registry maps Hub model ids (by pattern, so every
size, base or instruct and version of a family is covered) to those facts; `research-r1 eval
MODEL` needs no other flag for any of them. Our own checkpoints carry the same facts in their
model card (`research_r1` in its metadata), written at training time.

Sources: the authors' data preparation, rollout and evaluation code (Search-R1, ReSearch,
AutoRefine, R1-Searcher, StepSearch) and ZeroSearch's paper; `notes` says where a fact could not
be checked against the original code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from research_r1.errors import InputError
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    TEMPLATES,
    Template,
    load_template,
    template_from_mapping,
)


@dataclass(frozen=True)
class Family:
    """How one family of checkpoints is run.

    `template` maps a pattern on the model id to the template for it (first match wins);
    `settings` overrides the suite's (`k`, `max_turns`, `max_new_tokens`,
    `max_observation_tokens`, `max_completion_tokens`) with the family's own; `final_turn_notice`
    is inserted before the last turn ("" for agents trained without one); `question_mark`
    appends a `?` to questions lacking one, as the authors prepared them.
    """

    name: str
    pattern: str
    templates: tuple[tuple[str, str], ...]
    suite: str = "search_r1"
    settings: Mapping[str, Any] = field(default_factory=dict)
    final_turn_notice: str = ""
    question_mark: bool = True
    notes: str = ""

    def matches(self, model_id: str) -> bool:
        return re.search(self.pattern, model_id) is not None

    def template_for(self, model_id: str) -> Template:
        for pattern, name in self.templates:
            if re.search(pattern, model_id):
                return TEMPLATES[name]
        raise InputError(f"{model_id}: family {self.name} has no template for this model")


FAMILIES: tuple[Family, ...] = (
    Family(
        name="search_r1",
        pattern=r"(^|/)SearchR1-",  # PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b[-it]-em-ppo
        templates=((r"", "search_r1"),),
        settings={"k": 3, "max_turns": 4},
    ),
    Family(
        name="research",
        pattern=r"(^|/)ReSearch-",  # agentrl/ReSearch-Qwen-7B[-Instruct]
        templates=((r"(?i)instruct", "research_instruct"), (r"", "research_base")),
        suite="research",
        settings={"k": 5},
        question_mark=False,
    ),
    Family(
        name="autorefine",
        pattern=r"(^|/)AutoRefine-",  # yrshi/AutoRefine-Qwen2.5-7B-Base
        templates=((r"", "autorefine"),),
        settings={"k": 3, "max_turns": 3, "max_new_tokens": 512, "max_observation_tokens": 1024},
        notes="the `<documents>` wrapper and the invalid-step notice are Search-R1's, as a fork "
        "of AutoRefine's rollout has them; its own rollout code was not available",
    ),
    Family(
        name="r1_searcher",
        pattern=r"(^|/)[^/]*-RAG-RL$",  # XXsongLALA/Qwen-2.5-7B-base-RAG-RL
        templates=((r"", "r1_searcher"),),
        settings={"k": 5, "max_turns": 8, "max_new_tokens": 512},
        notes="each document is written `(i)title\\ntext`; R1-Searcher reads its own KILT TSV "
        "lines there, whose layout could not be checked",
    ),
    Family(
        name="zerosearch",
        pattern=r"(^|/)ZeroSearch_",  # Alibaba-NLP/ZeroSearch_wiki_V2_Qwen2.5_7B
        templates=((r"", "zerosearch"),),
        settings={"k": 5, "max_turns": 5},
        notes="the prompt is the paper's; its training data were not available to compare",
    ),
    Family(
        name="stepsearch",
        pattern=r"(^|/)StepSearch-",  # Zill1/StepSearch-7B-Base
        templates=((r"", "stepsearch"),),
        settings={"k": 3, "max_turns": 5, "max_new_tokens": 800, "max_observation_tokens": 800},
        final_turn_notice=(
            "<warning> Now, I can no longer call <search></search> for external information. "
            "I must analyze and answer based on the existing information. Now let me make a "
            "final thought and give an answer. </warning>\n\n"
        ),
        notes="the warnings come from a fork of StepSearch's rollout code",
    ),
)


@dataclass(frozen=True)
class Resolved:
    """What one model is run with: its family's name, template and settings."""

    family: str
    template: Template
    suite: str
    settings: Mapping[str, Any]
    final_turn_notice: str
    question_mark: bool
    notes: str = ""


def resolve(
    model_id: str, card: Mapping[str, Any] | None = None, template: str | None = None
) -> Resolved:
    """The family of `model_id`: an explicit `template` wins, then our own model card's record
    (`card`: its `research_r1` metadata), then the registry's patterns."""
    if template is not None:
        return Resolved("custom", load_template(template), "search_r1", {}, "", True)
    if card is not None:
        return _from_card(model_id, card)
    for family in FAMILIES:
        if family.matches(model_id):
            return Resolved(
                family.name,
                family.template_for(model_id),
                family.suite,
                family.settings,
                family.final_turn_notice,
                family.question_mark,
                family.notes,
            )
    known = ", ".join(family.name for family in FAMILIES)
    raise InputError(
        f"{model_id}: no known family ({known}) and no research_r1 model card; pass --template "
        "(a built-in name or a YAML file)"
    )


def _from_card(model_id: str, card: Mapping[str, Any]) -> Resolved:
    """A checkpoint we trained: the template and rollout settings its training used."""
    where = f"{model_id}: model card, research_r1"
    keys = {"k", "max_turns", "max_new_tokens", "max_observation_tokens", "max_completion_tokens"}
    settings = {key: card[key] for key in keys & set(card)}
    spec = card.get("template")
    if spec is None:
        raise InputError(f"{where}: no template recorded")
    template = (
        template_from_mapping(spec, f"{where}.template", "custom")
        if isinstance(spec, Mapping)
        else load_template(spec)
    )
    # Our rollout warns before the last turn, and training prompts are used as prepared.
    return Resolved("research_r1", template, "search_r1", settings, FINAL_TURN_NOTICE, False)
