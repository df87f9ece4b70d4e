"""The published families (research_r1.evaluation.families): golden transcripts, every value a
family plays audited, the docs' fidelity table current, and our own checkpoints scored as our
rewards read them.

Golden transcripts: every family's episodes played and scored exactly as its own code does.

Each case of `tests/fixtures/fidelity/<family>.json` was produced outside the project by running
the family's upstream evaluation code (its loop where it runs with a scripted model, else its
functions glued as the loop calls them; the file's `how` and each case's `cite` say which) on the
scripted model turns and passages the case holds. Here our rollout plays the same turns through
the family's audited settings (`research_r1/evaluation/families/<family>.yaml`), and everything the
model is given (the ids of every call and its token budget), every query sent, the text the answer
is read from, the prediction and the scores must equal upstream's, byte for byte.

The tokenizer (`fixtures/fidelity/tokenizer`) is a small byte-level BPE whose merges cross tag
boundaries (`>` + `\\n\\n` is one token), so a loop that tokenises observations apart from the
turn before them gives other ids than one that tokenises the whole text: the ids must match too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers import FIXTURES, ROOT
from transformers import AutoTokenizer

from research_r1.evaluation.families import families, fidelity_table, get_family
from research_r1.generation import Generation, stop_token_ids
from research_r1.retrieval import Passage
from research_r1.rollout import RolloutConfig, encode_prompt, run_rollout

FIDELITY = FIXTURES / "fidelity"
# The EOS ids of each tokenizer variant's generation config (Qwen2.5's: instruct <|im_end|> and
# <|endoftext|>, base <|endoftext|> only), which vLLM adds to the tokenizer's EOS.
GENERATION_EOS = {"instruct": [2, 0], "base": [0], "no_template": [2, 0], "pad_is_eos": [2]}


def cases() -> list:
    found = []
    for path in sorted(FIDELITY.glob("*.json")):
        data = json.loads(path.read_text())
        found += [
            pytest.param(data["family"], case, id=f"{data['family']}-{case['name']}")
            for case in data["cases"]
        ]
    return found


@functools.cache
def tokenizer(variant: str, root: Path):
    """The fidelity tokenizer as one of the checkpoints the cases stand for: instruct (as it
    is), base (Qwen2.5 base's default system message, EOS <|endoftext|>), no chat template, or
    no pad token (so veRL makes its pad the EOS, as for Llama-3)."""
    folder = root / variant
    if not folder.exists():
        shutil.copytree(FIDELITY / "tokenizer", folder)
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        if variant == "base":
            config["chat_template"] = config["chat_template"].replace(
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                "You are a helpful assistant.",
            )
            config["eos_token"] = "<|endoftext|>"
        elif variant == "no_template":
            del config["chat_template"]
        elif variant == "pad_is_eos":
            del config["pad_token"]
        path.write_text(json.dumps(config))
    loaded = AutoTokenizer.from_pretrained(folder)
    if loaded.pad_token is None:  # veRL's hf_tokenizer
        loaded.pad_token = loaded.eos_token
    return loaded


class Scripted:
    """The scripted model of the fixtures: call i emits the ids of `turns[i]` (and EOS when the
    turn says so), one at a time, stopping at a stop id, at a stop string in the text decoded
    without special tokens, or at the call's budget. Records what each call was given."""

    def __init__(self, tokenizer, turns: Sequence[dict], stop_ids: Sequence[int]) -> None:
        self.tokenizer, self.turns, self.stop_ids = tokenizer, list(turns), set(stop_ids)
        self.contexts: list[list[int]] = []
        self.budgets: list[int] = []

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            turn = self.turns[len(self.contexts)]
            self.contexts.append(list(context))
            self.budgets.append(budget)
            ids = self.tokenizer.encode(turn["text"], add_special_tokens=False)
            ids += [self.tokenizer.eos_token_id] if turn.get("eos") else []
            generations.append(self._emit(ids, budget, stop))
        return generations

    def _emit(self, ids: list[int], budget: int, stop: Sequence[str]) -> Generation:
        out: list[int] = []
        for token in ids:
            out.append(token)
            if token in self.stop_ids:
                return Generation(out, [0.0] * len(out), "eos")
            if any(s in self.tokenizer.decode(out, skip_special_tokens=True) for s in stop):
                return Generation(out, [0.0] * len(out), "stop")
            if len(out) == budget:
                return Generation(out, [0.0] * len(out), "length")
        raise AssertionError(f"scripted turn ran out without stopping: {ids}")


class Passages:
    """The fixture's passages for each query, as sent; any other query is a failure."""

    def __init__(self, passages: dict) -> None:
        self.passages, self.calls = passages, []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        found = []
        for query in queries:
            self.calls.append([query, k])
            assert query in self.passages, f"unexpected query {query!r}"
            found.append([Passage(p["id"], p["contents"], 0.0) for p in self.passages[query][:k]])
        return found


@pytest.mark.parametrize(("name", "case"), cases())
def test_episodes_are_played_and_scored_as_upstream(name, case, tmp_path_factory):
    family = get_family(name)
    root = tmp_path_factory.getbasetemp() / "fidelity-tokenizers"
    root.mkdir(exist_ok=True)
    tok = tokenizer(case["tokenizer"], root)
    protocol = dataclasses.replace(family.template.protocol, **case.get("protocol", {}))
    template = dataclasses.replace(family.template, protocol=protocol, **case.get("template", {}))
    config = RolloutConfig(**{**family.rollout, **case["settings"]})
    scoring = family.scoring.model_copy(update=case["scoring"])
    expected = case["expected"]

    stop_ids = stop_token_ids(tok, GENERATION_EOS[case["tokenizer"]], family.stop_tokens)
    assert stop_ids == sorted(expected["stop_ids"])
    model, retriever = Scripted(tok, case["turns"], stop_ids), Passages(case["passages"])
    prompt = template.prompt(case["question"])
    [episode] = run_rollout(
        [encode_prompt(prompt, tok, special_tokens=protocol.special_tokens)],
        generator=model,
        tokenizer=tok,
        retriever=retriever,
        protocol=protocol,
        config=config,
    )

    for call, (ours, theirs) in enumerate(zip(model.contexts, expected["contexts"], strict=False)):
        assert tok.decode(ours) == tok.decode(theirs), f"call {call}: the text differs"
        assert ours == theirs, f"call {call}: same text, other ids"
    assert len(model.contexts) == len(expected["contexts"])
    assert model.budgets == expected["max_new_tokens"]
    assert retriever.calls == expected["queries"]
    answer = scoring.predict(episode, tok, protocol.invalid_notice)
    assert answer.text == expected["scored_text"]
    assert answer.prediction == expected["prediction"]
    scores = scoring.scores(answer.prediction, case["golden_answers"])
    assert {key: scores[key] for key in expected["scores"]} == expected["scores"]


def test_every_family_has_golden_cases():
    covered = {json.loads(path.read_text())["family"] for path in FIDELITY.glob("*.json")}
    assert covered == {family.name for family in families()}


def test_the_fidelity_table_in_the_docs_is_current():
    """docs/fidelity.md is `python -m research_r1.evaluation.families` of the families' data as it
    is."""
    docs = ROOT / "docs" / "fidelity.md"
    assert docs.read_text() == fidelity_table(), (
        "run: python -m research_r1.evaluation.families > " + str(docs)
    )


# Fields of ours alone (they feed our rewards and format checks, not a family's play or
# score), and a model server's own limit (stated as a fact where it binds).
NOT_PLAYED = {"boxed_answer", "answer_block", "extra_tags", "check", "server_context"}
# Read only by a loop whose action is the stop string a turn ended at.
STOP_ACTION = {"missing_query", "missing_answer", "bad_query_observation"}


@pytest.mark.parametrize("family", [f.name for f in families()])
def test_every_value_a_family_plays_is_audited(family):
    """No setting is played by default: each one the family's loop and scorer read is in its
    data, with the upstream line it reproduces."""
    audited = get_family(family)
    protocol = audited.template.protocol
    fields = {
        "template": [f.name for f in dataclasses.fields(type(audited.template))],
        "protocol": [f.name for f in dataclasses.fields(type(protocol))],
        "rollout": [name for name in RolloutConfig.model_fields if name != "max_retriever_wait_s"],
        "scoring": list(type(audited.scoring).model_fields),
    }
    exempt = {"name", "protocol", *NOT_PLAYED}
    if protocol.action != "stop":
        exempt |= STOP_ACTION
    missing = {
        section: [
            name for name in names if name not in exempt and name not in audited.items[section]
        ]
        for section, names in fields.items()
    }
    assert not any(missing.values()), missing


@pytest.mark.parametrize("name", ["search_r1", "research_base", "research_instruct"])
def test_our_checkpoints_are_scored_as_our_rewards_read_answers(name):
    """Our own templates' answers are read as the training rewards read them: Search-R1's last
    answer block, ReSearch's first one and the `\\boxed{}` in it."""
    from research_r1.evaluation.families import resolve
    from research_r1.protocol import extract_answer

    resolved = resolve("ours", template=name)
    protocol = resolved.template.protocol
    for text in (
        "<answer> Lyon </answer> then <answer> Paris </answer>",
        "<answer> it is \\boxed{Lyon} </answer><answer> \\boxed{Paris} </answer>",
        "<think> no answer </think>",
    ):
        assert resolved.scoring.extract(text) == extract_answer(text, protocol), text
