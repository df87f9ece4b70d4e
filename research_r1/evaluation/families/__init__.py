"""Published search agents, as audited data: how each family's own evaluation code plays and
scores its checkpoints, value by value, each with the upstream line that decides it.

A checkpoint's score says something only when it is played and scored the way its authors' code
does: the same prompt and chat template, the same stop strings and turn handling, the same
observation layout and budgets, the same answer extraction and metric. Each family is one YAML
file beside this module (`search_r1.yaml`, ...). Every entry under `template`, `protocol`,
`rollout`, `scoring` and `generation` is a field of the object it configures
(`protocol.Template`, `protocol.Protocol`, `rollout.RolloutConfig`, `scoring.Scoring`, and how
generation stops and samples), written as

    field: {value: <upstream's value>, source: <path:line in the upstream commit>}

and, where we knowingly play it otherwise, `ours: <what we run>` and `why:`. `facts` record the
rest of the audit (question sets, retriever details, upstream bugs that change no transcript)
the same way. A source is `path:line` in the family's `upstream` commit, or a full
`owner/repo@commit:path:line` for another repository. `research-r1 eval MODEL --dry-run` shows
all of it, and `python -m research_r1.evaluation.families` writes it as the fidelity table of the
docs (docs/fidelity.md, checked by the tests to be current).

Hub ids map to a family by pattern (every size, base or instruct and version, and the names a
family published under earlier). Our own checkpoints carry their settings in their model card
(`research_r1` in its metadata), written at training time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from research_r1.errors import InputError, invalid
from research_r1.evaluation.scoring import Scoring
from research_r1.markdown import markdown_table
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    Protocol,
    Template,
    load_template,
    template_from_mapping,
)
from research_r1.rollout import RolloutConfig

HERE = Path(__file__).parent
_UNSET: Any = object()


class Item(BaseModel):
    """One audited value: upstream's, where it comes from, and ours where we differ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Any
    source: str | list[str]
    ours: Any = _UNSET
    why: str | None = None

    @property
    def played(self) -> Any:
        """What we run: upstream's value unless we knowingly differ."""
        return self.value if self.ours is _UNSET else self.ours

    @property
    def deviates(self) -> bool:
        return self.ours is not _UNSET


class Fact(Item):
    """An audited fact that is not a setting (question sets, a retriever detail, an upstream bug
    that changes no transcript), named by `item`."""

    item: str


class ModelPattern(BaseModel):
    """Hub ids of a family's checkpoints; `suite` when those checkpoints were measured in a
    setting of their own (ZeroSearch's web-search models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str
    source: str | list[str]
    examples: list[str] = Field(min_length=1)
    suite: str | None = None


class FamilyFile(BaseModel):
    """The schema of a family's YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    upstream: str = Field(pattern=r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
    evaluation: str
    models: list[ModelPattern] = Field(min_length=1)
    suite: Item
    template: dict[str, Item]
    protocol: dict[str, Item]
    rollout: dict[str, Item]
    scoring: dict[str, Item]
    generation: dict[str, Item]
    facts: list[Fact] = []


SECTIONS = ("template", "protocol", "rollout", "scoring", "generation")


@dataclass(frozen=True)
class Family:
    """How one family's checkpoints are played and scored, and the audit behind it."""

    name: str
    title: str
    upstream: str
    evaluation: str
    models: tuple[ModelPattern, ...]
    suite: str
    template: Template
    rollout: Mapping[str, Any]
    scoring: Scoring
    stop_tokens: tuple[str, ...]
    decoding: Mapping[str, Any]
    upstream_decoding: Mapping[str, Any]
    items: Mapping[str, Mapping[str, Item]] = field(default_factory=dict)
    facts: tuple[Fact, ...] = ()

    def match(self, model_id: str) -> ModelPattern | None:
        return next((m for m in self.models if re.search(m.pattern, model_id)), None)

    def cite(self, source: str | list[str]) -> list[str]:
        """Full citations (`owner/repo@commit:path:line`) of an item's source."""
        sources = [source] if isinstance(source, str) else source
        return [s if "@" in s.split(":", 1)[0] else f"{self.upstream}:{s}" for s in sources]

    def audit(self) -> dict[str, Any]:
        """Every audited value with its source, and what we run where it differs: what
        `--dry-run` prints."""
        described: dict[str, Any] = {}
        for section, items in self.items.items():
            for name, item in items.items():
                described[f"{section}.{name}"] = _describe(self, item)
        for fact in self.facts:
            described[f"fact: {fact.item}"] = _describe(self, fact)
        return described


def fidelity_table() -> str:
    """Every family's audit as markdown: a table per family, each value beside its citation
    and, where we differ, what we run and why."""
    lines = [
        "# Fidelity: each family played and scored as its own evaluation code does",
        "",
        "Generated by `python -m research_r1.evaluation.families` from "
        "`research_r1/evaluation/families/*.yaml`;",
        "`research-r1 eval MODEL --dry-run` shows the same for one checkpoint. *Ours* is empty",
        "where we run upstream's value; a value of ours comes with the reason we differ.",
        "",
    ]
    summary = []
    for family in families():
        audit = family.audit()
        differ = ", ".join(name for name, entry in audit.items() if "ours" in entry) or "nowhere"
        summary.append([family.title, f"`{family.upstream}`", len(audit), differ])
    columns = ["family", "upstream code", "audited items", "where we differ"]
    lines.append(markdown_table(columns, summary))
    for family in families():
        patterns = ", ".join(f"`{m.pattern}`" for m in family.models)
        rows = [
            [
                name,
                _cell(entry["upstream"]),
                "<br>".join(f"`{source}`" for source in entry["source"]),
                f"{_cell(entry['ours'])}: {entry['why']}" if "ours" in entry else "",
            ]
            for name, entry in family.audit().items()
        ]
        lines += [
            "",
            f"## {family.title} (`{family.name}`)",
            "",
            f"- Upstream: `{family.upstream}`",
            f"- Evaluation path: {family.evaluation}",
            f"- Checkpoints: {patterns} (e.g. `{family.models[0].examples[0]}`)",
            "",
            markdown_table(["item", "upstream", "source", "ours, and why"], rows),
        ]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A value in a table cell: JSON, so whitespace and quotes show as they are, in a code
    span (the table escapes its `|`)."""
    text = json.dumps(value, ensure_ascii=False)
    return "`" + text.replace("`", "'") + "`"


def _describe(family: Family, item: Item) -> dict[str, Any]:
    entry = {"upstream": item.value, "source": family.cite(item.source)}
    if item.deviates:
        entry |= {"ours": item.ours, "why": item.why}
    return entry


def load_family(path: Path) -> Family:
    """A family from its YAML file, every field checked by the object it configures."""
    try:
        spec = FamilyFile.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        raise invalid(error, str(path)) from error
    played = {
        section: {name: item.played for name, item in getattr(spec, section).items()}
        for section in SECTIONS
    }
    try:
        protocol = Protocol(name=spec.name, **_tuples(played["protocol"]))
        template = Template(name=spec.name, protocol=protocol, **played["template"])
        rollout = RolloutConfig(**played["rollout"]).model_dump(exclude_unset=True)
        scoring = Scoring(**_tuples(played["scoring"]))
    except (TypeError, ValueError, InputError) as error:
        raise InputError(f"{path}: {error}") from error
    generation = played["generation"]
    upstream_generation = {k: v.value for k, v in spec.generation.items()}
    return Family(
        name=spec.name,
        title=spec.title,
        upstream=spec.upstream,
        evaluation=spec.evaluation,
        models=tuple(spec.models),
        suite=spec.suite.played,
        template=template,
        rollout=rollout,
        scoring=scoring,
        stop_tokens=tuple(generation.get("stop_tokens", ())),
        decoding=generation.get("decoding", {}),
        upstream_decoding=upstream_generation.get("decoding", {}),
        items={"setting": {"suite": spec.suite}}
        | {section: dict(getattr(spec, section)) for section in SECTIONS},
        facts=tuple(spec.facts),
    )


def _tuples(spec: Mapping[str, Any]) -> dict[str, Any]:
    """YAML lists as the tuples the frozen objects hold (a list of pairs, tuples of pairs)."""
    return {key: _tuple(value) for key, value in spec.items()}


def _tuple(value: Any) -> Any:
    return tuple(_tuple(x) for x in value) if isinstance(value, list) else value


@functools.cache
def families() -> tuple[Family, ...]:
    """Every audited family, in file name order."""
    return tuple(load_family(path) for path in sorted(HERE.glob("*.yaml")))


def get_family(name: str) -> Family:
    for family in families():
        if family.name == name:
            return family
    known = ", ".join(f.name for f in families())
    raise InputError(f"unknown family {name!r}; known families: {known}")


@dataclass(frozen=True)
class Resolved:
    """What one model is played with: its family's name (`research_r1` for our own
    checkpoints, `custom` for a template given by hand), template, suite, rollout settings,
    scoring, extra stop tokens, the decoding we run and the one upstream ran, and the audited
    family (None for ours)."""

    family: str
    template: Template
    suite: str
    rollout: Mapping[str, Any]
    scoring: Scoring
    stop_tokens: tuple[str, ...] = ()
    decoding: Mapping[str, Any] = field(default_factory=dict)
    upstream_decoding: Mapping[str, Any] = field(default_factory=dict)
    audited: Family | None = None


def ours(protocol: Protocol) -> Scoring:
    """How our own checkpoints are scored: as our rewards read answers
    (`protocol.extract_answer`: the completion's first or last answer block, its `\\boxed{}`
    where the protocol boxes answers, the invalid-step notice never mistaken for one), with
    the metrics every family shares."""
    then = "boxed" if protocol.boxed_answer else "strip"
    return Scoring(drop_notice=True, pick=protocol.answer_block, then=then)


def resolve(
    model_id: str,
    card: Mapping[str, Any] | None = None,
    template: str | None = None,
    family: str | None = None,
) -> Resolved:
    """How `model_id` is played: a `family` named (its loop, for a checkpoint trained with it
    under another name), else a `template` (a built-in one or a YAML file, played as ours),
    else our own model card's record (`card`: its `research_r1` metadata), else the family
    whose patterns match the id."""
    if family is not None:
        named = get_family(family)
        return _of(named, named.suite)
    if template is not None:  # questions prepared as the papers prepared theirs
        custom = dataclasses.replace(load_template(template), question_mark=True)
        return Resolved("custom", custom, "search_r1", {}, ours(custom.protocol))
    if card is not None:
        return _from_card(model_id, card)
    for family in families():
        matched = family.match(model_id)
        if matched is not None:
            return _of(family, matched.suite or family.suite)
    known = ", ".join(family.name for family in families())
    raise InputError(
        f"{model_id}: no known family ({known}) and no research_r1 model card; pass --family "
        "(to play it as one of them) or --template (a built-in template or a YAML file)"
    )


def _of(family: Family, suite: str) -> Resolved:
    return Resolved(
        family.name,
        family.template,
        suite,
        family.rollout,
        family.scoring,
        family.stop_tokens,
        family.decoding,
        family.upstream_decoding,
        family,
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
    rollout = {**settings, "final_turn_notice": FINAL_TURN_NOTICE}
    return Resolved("research_r1", template, "search_r1", rollout, ours(template.protocol))
