"""The tag protocols, as data: what the model writes, what we insert, and the prompt templates.

A protocol says how a family of search agents writes actions and how we answer them: the search
and answer tags, where generation pauses, how a turn is read (what its loop keeps of it, what it
asks for), how retrieved passages are written and wrapped, how the final answer is read, and what
a turn that neither searches nor answers gets. Search-R1's (`<search>`, passages in
`<information>`, the answer in `<answer>`) and ReSearch's (passages in `<result>`, the answer a
`\\boxed{}` in the first `<answer>`) are the two we train; published families
(`research_r1.evaluation.families`) build theirs from the same fields, read from their audited
data, so their checkpoints are played as their own loops play them with no per-model code path
anywhere.

Everything else in the package (rollout, rewards, data preparation, evaluation, the Space) reads
tags, stop strings, notices, the format checks and the passage list from here rather than spelling
them out again. The upstream prompts and notices we copy verbatim are data files
(`research_r1/prompts/*.txt`, each headed by the upstream line it is copied from); how passages
are written and read back is in `research_r1.passages`. This module imports nothing else of the
package but those and its errors, so anything may import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from research_r1.errors import InputError
from research_r1.passages import PassageFormat, PassageLike

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_ANSWER = re.compile(re.escape(ANSWER_OPEN) + "(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)


def upstream_text(name: str) -> str:
    """A text copied verbatim from upstream, shipped as `research_r1/prompts/<name>.txt`: the
    file's first line (`# ` and the upstream `owner/repo@commit:path:lines` it is copied from)
    is left out, and the rest is the text byte for byte, with no newline added at its end."""
    data = (resources.files("research_r1") / "prompts" / f"{name}.txt").read_bytes()
    source, _, text = data.decode("utf-8").partition("\n")
    if not source.startswith("# "):
        raise RuntimeError(f"prompts/{name}.txt does not start with its source line")
    return text


# Search-R1's notice for a turn that neither searches nor answers (no penalty: the episode goes on).
SEARCH_R1_INVALID_NOTICE = upstream_text("search_r1_invalid_notice")
# Ours (Search-R1 has none): ends the observation before the last turn, whose search is not run.
FINAL_TURN_NOTICE = "\nI have no searches left, so my next step must be the final answer.\n"


TurnTokens = Literal["sampled", "turn", "text"]
QueryFault = Literal["invalid", "search", "end", "observe"]


@dataclass(frozen=True)
class Protocol:
    """How one family of agents writes actions, what we insert, and how its loop reads a turn.

    Writing. `passage_format` writes one passage (`{i}`: its rank from 1; `{title}` and
    `{text}` as people read them; `{title_line}`: the first line of its corpus `contents` as
    stored, quotes and all; `{contents}`: all of it); the passages, joined by
    `passage_separator` (and stripped when `strip_passages`), replace `{passages}` in
    `observation_format` (`no_passages` when a search found none): `observation` writes it,
    and `passages` writes and reads back the passage list. `invalid_notice` is inserted
    after a turn that neither searches nor answers; None ends the episode there instead, and ""
    goes on without inserting anything. `observation_cut` says how an observation over its token
    budget is cut: `passages` (ours: passage text goes, the closing tag stays), `head` (the first
    tokens of the whole observation are kept, as Search-R1's loop keeps them) or `tail` (the
    last ones).

    Reading a turn. Generation stops at `stop` (by default the search and answer closing tags),
    kept in the turn or not (`keep_stop`, vLLM's include_stop_str_in_output). `tokens` says what
    the next call sees: the very ids sampled (`sampled`, ours: training needs them), the turn's
    text re-encoded alone with special tokens dropped (`turn`, the veRL loops), or the whole
    transcript as text, encoded again at every call (`text`, loops that send strings to a
    server; `special_tokens` is then how that text is encoded, as it is for prompts). A turn is
    cut after the first `cut_after` marker found (in that order of priority); what it asks for
    is read from that text, which is then stripped when `strip_turn` unless the turn answers
    (the transcript goes on from the stripped text; an answer turn is kept as generated).
    `action` is `first_block` (the first complete search or answer block decides) or `stop`
    (the stop string the turn ended at decides: the search closing tag searches, the answer
    closing tag answers, anything else ends the episode). The query runs from the first
    or last search opening tag (`query_from`) to its closing tag, with `query_replace` applied
    and `strip_query`. An empty query, or (with `action: stop`) a closing tag without an
    opening one, is handled as `empty_query` / `missing_query` says: an invalid step, a search
    anyway, the end of the episode, or `bad_query_observation` inserted with no search; an
    answer closing tag without its opening one ends the episode or inserts
    `bad_query_observation` (`missing_answer`). A turn that ends at EOS with neither action ends
    the episode or is an invalid step (`eos_without_action`). `answer_block` and `boxed_answer`
    say how our rewards read answers; `check` names the whole-completion format check
    (`follows_format`).
    """

    name: str
    observation_open: str
    observation_close: str
    observation_format: str
    passage_format: str = "Doc {i}(Title: {title}) {text}"
    passage_separator: str = "\n"
    strip_passages: bool = True
    no_passages: str = ""
    boxed_answer: bool = False
    answer_block: Literal["first", "last"] = "last"
    invalid_notice: str | None = SEARCH_R1_INVALID_NOTICE
    observation_cut: Literal["passages", "head", "tail"] = "passages"
    search_open: str = SEARCH_OPEN
    search_close: str = SEARCH_CLOSE
    extra_tags: tuple[str, ...] = ()
    check: Literal["search_r1", "research", "answer"] = "answer"
    stop: tuple[str, ...] | None = None
    keep_stop: bool = True
    tokens: TurnTokens = "sampled"
    special_tokens: bool | None = None
    cut_after: tuple[str, ...] = ()
    strip_turn: bool = False
    action: Literal["first_block", "stop"] = "first_block"
    query_from: Literal["first", "last"] = "first"
    query_replace: tuple[tuple[str, str], ...] = ()
    strip_query: bool = True
    empty_query: QueryFault = "invalid"
    missing_query: QueryFault = "invalid"
    missing_answer: Literal["end", "observe"] = "end"
    bad_query_observation: str = ""
    eos_without_action: Literal["end", "invalid"] = "end"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where generation pauses: the family's stop strings, and the first `cut_after` marker,
        since everything after it is cut anyway (stopping there saves the tokens and changes
        nothing: the text before a stop is sampled the same whether or not generation goes
        on)."""
        stops = (self.search_close, ANSWER_CLOSE) if self.stop is None else self.stop
        extra = self.cut_after[:1] if self.cut_after and self.cut_after[0] not in stops else ()
        return (*stops, *extra)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag, to register as (non-special) tokens so decoding never drops them."""
        return (
            THINK_OPEN,
            THINK_CLOSE,
            self.search_open,
            self.search_close,
            self.observation_open,
            self.observation_close,
            ANSWER_OPEN,
            ANSWER_CLOSE,
            *self.extra_tags,
        )

    @cached_property
    def action_blocks(self) -> re.Pattern[str]:
        """A complete search block (group 1: the query as written) or answer block (group 2)."""
        search = f"{re.escape(self.search_open)}(.*?){re.escape(self.search_close)}"
        answer = f"{re.escape(ANSWER_OPEN)}(.*?){re.escape(ANSWER_CLOSE)}"
        return re.compile(f"{search}|{answer}", re.DOTALL)

    @cached_property
    def passages(self) -> PassageFormat:
        """How this protocol writes a passage list and reads it back."""
        return PassageFormat.for_layout(self.passage_format, self.passage_separator)

    @property
    def observation_tail(self) -> str:
        """What an observation writes after its passages: the closing tag and what follows."""
        return self.observation_format.split("{passages}")[-1]

    def observation(self, passages: Sequence[PassageLike] | str) -> str:
        """The text inserted after a search: passages (or a message) in the wrapper."""
        if isinstance(passages, str):
            body = passages
        else:
            body = self.passages.format(passages) if passages else self.no_passages
        return self.observation_format.replace(
            "{passages}", body.strip() if self.strip_passages else body
        )


SEARCH_R1 = Protocol(
    name="search_r1",
    observation_open="<information>",
    observation_close="</information>",
    observation_format="\n\n<information>{passages}</information>\n\n",
    check="search_r1",
)

# ReSearch: each passage is its corpus `contents` ("Title" on the first line), joined by blank
# lines; a turn that neither searches nor answers ends the episode.
RESEARCH = Protocol(
    name="research",
    observation_open="<result>",
    observation_close="</result>",
    observation_format=" <result>\n{passages}\n</result>",
    passage_format='"{title}"\n{text}',
    passage_separator="\n\n",
    boxed_answer=True,
    answer_block="first",
    invalid_notice=None,
    check="research",
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (SEARCH_R1, RESEARCH)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


# ---------------------------------------------------------------------------------------------
# Parsing what the model wrote


@dataclass(frozen=True)
class Action:
    """What one model turn asks for: run a search, give the answer, neither (invalid), end
    the episode, or insert `content` without searching (`observe`)."""

    kind: Literal["search", "answer", "invalid", "end", "observe"]
    content: str = ""


def parse_turn(text: str, protocol: Protocol) -> Action:
    """The first complete search or answer block of one turn, as Search-R1 reads it (an empty
    query is handled as the protocol's `empty_query` says)."""
    match = protocol.action_blocks.search(text)
    if match is None:
        return Action("invalid")
    if match.group(1) is None:
        return Action("answer", match.group(2).strip())
    return _query(match.group(1), protocol, protocol.empty_query)


def _query(raw: str, protocol: Protocol, fault: QueryFault) -> Action:
    """A search for `raw` cleaned as the protocol cleans queries, or `fault` when it is empty."""
    for old, new in protocol.query_replace:
        raw = raw.replace(old, new)
    query = raw.strip() if protocol.strip_query else raw
    if query:
        return Action("search", query)
    return _fault(query, protocol, fault)


def _fault(query: str, protocol: Protocol, fault: QueryFault) -> Action:
    if fault == "search":
        return Action("search", query)
    if fault == "observe":
        return Action("observe", protocol.bad_query_observation)
    return Action(fault)


def read_turn(text: str, finish: str, protocol: Protocol) -> tuple[str, Action]:
    """One turn as the family's loop keeps it (the text the transcript holds) and what it asks
    for. `text` is the turn as generated (decoded with special tokens dropped, except in
    `sampled` mode, where the ids are kept and the text is only parsed), `finish` why it ended
    ("stop", "eos" or "length")."""
    matched = None
    if protocol.tokens != "sampled" and finish == "stop":
        text, matched = _cut_at_stop(text, protocol)
    for marker in protocol.cut_after:
        if marker in text:
            text = text[: text.index(marker) + len(marker)]
            break
    action = _read_action(text, matched, finish, protocol)
    if protocol.strip_turn and action.kind != "answer":
        text = text.strip()
    return text, action


def _read_action(text: str, matched: str | None, finish: str, protocol: Protocol) -> Action:
    """What a turn (cut, not yet stripped) asks for."""
    if protocol.action == "first_block":
        action = parse_turn(text, protocol)
        if action.kind == "invalid" and finish == "eos" and protocol.eos_without_action == "end":
            action = Action("end")
        return action
    if matched == protocol.search_close:
        before = text[: text.rindex(matched)] if protocol.keep_stop else text
        start = before.find if protocol.query_from == "first" else before.rfind
        opening = start(protocol.search_open)
        if opening < 0:
            return _fault("", protocol, protocol.missing_query)
        return _query(before[opening + len(protocol.search_open) :], protocol, protocol.empty_query)
    if matched == ANSWER_CLOSE and ANSWER_OPEN in text:
        return Action("answer")
    if matched == ANSWER_CLOSE:
        return _fault("", protocol, protocol.missing_answer)
    return Action("end")


def _cut_at_stop(text: str, protocol: Protocol) -> tuple[str, str | None]:
    """The text up to the stop string generation ended at (the first to be complete), with it
    or without it as `keep_stop` says, and which one it was."""
    ends = {stop: text.find(stop) + len(stop) for stop in protocol.stop_strings if stop in text}
    if not ends:
        return text, None
    stop = min(ends, key=lambda s: ends[s])
    return text[: ends[stop]] if protocol.keep_stop else text[: ends[stop] - len(stop)], stop


def split_turn(text: str, protocol: Protocol) -> tuple[str, Action]:
    """One model turn as a reader sees it: the reasoning before its search or answer block
    (think tags removed), and the action."""
    match = protocol.action_blocks.search(text)
    before = text if match is None else text[: match.start()]
    return before.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip(), parse_turn(
        text, protocol
    )


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, with nested braces balanced (`\\boxed{\\{a\\}}`)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None


def extract_answer(completion: str, protocol: Protocol) -> str | None:
    """The final answer in a completion (never the prompt): the last `<answer>` block, or the
    first for ReSearch, whose answer is the `\\boxed{}` inside it (no box, no answer).

    The invalid-step notice we insert mentions `<answer> and </answer>`; it is not the model's
    answer, so it is removed first.
    """
    if protocol.invalid_notice:
        completion = completion.replace(protocol.invalid_notice.strip(), "")
    answers = _ANSWER.findall(completion)
    if not answers:
        return None
    answer = (answers[0] if protocol.answer_block == "first" else answers[-1]).strip()
    return extract_boxed(answer) if protocol.boxed_answer else answer


# ---------------------------------------------------------------------------------------------
# Checking a whole completion's format

_SEARCH_R1_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")
# Search-R1's state machine: think -> (search -> information -> think)* -> answer.
_SEARCH_R1_STATES: dict[str, dict[str, str]] = {
    "start": {THINK_OPEN: "in_think"},
    "in_think": {THINK_CLOSE: "after_think"},
    "after_think": {SEARCH_OPEN: "in_search", ANSWER_OPEN: "in_answer"},
    "in_search": {SEARCH_CLOSE: "after_search"},
    "after_search": {SEARCH_R1.observation_open: "in_information"},
    "in_information": {SEARCH_R1.observation_close: "after_information"},
    "after_information": {THINK_OPEN: "in_think"},
    "in_answer": {ANSWER_CLOSE: "end"},
    "end": {},
}


def is_valid_search_r1_sequence(text: str) -> tuple[bool, str]:
    """Whether a completion follows Search-R1's tag grammar, and why not.

    Same verdicts as Search-R1's `is_valid_sequence`: text may appear only inside a tag, and
    only whitespace between tags, so an invalid-action notice inserted by the rollout, text
    after the answer, or a second answer all make the sequence invalid.
    """
    state = "start"
    for i, part in enumerate(_SEARCH_R1_TAG.split(text)):
        if i % 2:  # re.split puts the captured tags at odd positions
            next_state = _SEARCH_R1_STATES[state].get(part)
            if next_state is None:
                return False, f"unexpected tag {part} in state {state}"
            state = next_state
        elif part.strip() and not state.startswith("in_"):
            return False, f"unexpected text {part.strip()[:40]!r} in state {state}"
    if state != "end":
        return False, f"incomplete sequence, ended in state {state}"
    return True, "valid sequence"


def is_valid_research_sequence(text: str) -> tuple[bool, str]:
    """Whether a completion passes ReSearch's format check, and why not.

    Same verdicts as ReSearch's `validate_format`: paired `<think>` tags (at least one), exactly
    one `<answer>` holding a `\\boxed{}`, and every `<search>` followed by its `</search>` and then
    a `<result>` ... `</result>`. Unlike Search-R1 it does not constrain text between tags.
    """
    if text.count(THINK_OPEN) != text.count(THINK_CLOSE):
        return False, "<think> and </think> are not paired"
    if text.count(THINK_OPEN) == 0:
        return False, "no <think> block"
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return False, "there must be exactly one <answer> and one </answer>"
    position = 0
    while (search := text.find(SEARCH_OPEN, position)) >= 0:
        search_end = text.find(SEARCH_CLOSE, search)
        result = text.find(RESEARCH.observation_open, search)
        result_end = text.find(RESEARCH.observation_close, result) if result >= 0 else -1
        if -1 in (search_end, result, result_end):
            return False, "a <search> lacks its </search>, <result> or </result>"
        if not search_end < result < result_end:
            return False, "search and result tags are in the wrong order"
        position = result_end
    answer, answer_end = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if answer > answer_end:
        return False, "</answer> comes before <answer>"
    if "\\boxed{" not in text[answer:answer_end] or "}" not in text[answer:answer_end]:
        return False, "the answer has no \\boxed{}"
    return True, "valid sequence"


def follows_format(text: str, protocol: Protocol) -> tuple[bool, str]:
    """Whether one of our completions follows its protocol's format, and why not: ReSearch's
    check, Search-R1's grammar once the last-turn notice our rollout inserts (Search-R1 has
    none) is left out, so warning the model costs it no format bonus, or for the other
    families, that an answer was given."""
    if protocol.check == "research":
        return is_valid_research_sequence(text)
    if protocol.check == "search_r1":
        return is_valid_search_r1_sequence(text.replace(FINAL_TURN_NOTICE.strip(), ""))
    if extract_answer(text, protocol) is None:
        return False, "no answer"
    return True, "answered"


# ---------------------------------------------------------------------------------------------
# Prompt templates

# The prompts of the two methods we train, verbatim (each file names its upstream source).
SEARCH_R1_PROMPT = upstream_text("search_r1")
RESEARCH_BASE_PROMPT = upstream_text("research_base")
RESEARCH_SYSTEM_PROMPT = upstream_text("research_system")

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Template:
    """A prompt for one question, and the protocol the model is asked to follow.

    `chat` templates become chat messages (the tokenizer's chat template is applied when it has
    one); the others are plain text, as ReSearch feeds base models. The question is stripped
    (`strip_question`) and given a `?` when it lacks one (`question_mark`) before it goes in, as
    each family prepared its questions.
    """

    name: str
    protocol: Protocol
    user: str
    system: str | None = None
    chat: bool = True
    strip_question: bool = True
    question_mark: bool = False

    def as_mapping(self) -> dict[str, Any]:
        """The template as `load_template` reads it back (model cards record it so)."""
        spec = {"name": self.name, "protocol": self.protocol.name, "user": self.user}
        return {**spec, "system": self.system, "chat": self.chat}

    def question(self, text: str) -> str:
        """The question as it goes into the prompt."""
        if self.strip_question:
            text = text.strip()
        if self.question_mark and not text.endswith("?"):
            text += "?"
        return text

    def prompt(self, question: str) -> Prompt:
        """The dataset's `prompt` value: chat messages, or plain text for non-chat templates."""
        user = self.user.replace("{question}", self.question(question))
        if not self.chat:
            return user
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": user}]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("search_r1", SEARCH_R1, SEARCH_R1_PROMPT),
        Template("research_base", RESEARCH, RESEARCH_BASE_PROMPT, chat=False),
        Template("research_instruct", RESEARCH, "{question}", system=RESEARCH_SYSTEM_PROMPT),
    )
}

_TEMPLATE_KEYS = {"name", "protocol", "user", "system", "chat"}


def load_template(name_or_path: str | Path | Mapping[str, Any]) -> Template:
    """A built-in template by name, a user template from a YAML file, or one given as a mapping
    (as a model card records it).

    The file holds `protocol` (a name from `PROTOCOLS`), `user` (with a `{question}`
    placeholder), and optionally `system`, `chat` (default true) and `name` (default: the file's
    stem).
    """
    if isinstance(name_or_path, Mapping):
        return template_from_mapping(name_or_path, "template", "custom")
    if str(name_or_path) in TEMPLATES:
        return TEMPLATES[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(
            f"template {str(name_or_path)!r} is neither a built-in ({', '.join(TEMPLATES)}) "
            "nor a YAML file"
        )
    try:
        spec: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML: {error}") from None
    return template_from_mapping(spec, str(path), path.stem)


def template_from_mapping(spec: Any, where: str, default_name: str) -> Template:
    """A template from its fields, each checked; `where` names the source in messages."""
    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: a template must be a mapping")
    unknown = set(spec) - _TEMPLATE_KEYS
    if unknown:
        raise InputError(f"{where}: unknown template keys {sorted(unknown)}")
    for key in ("protocol", "user"):
        if not isinstance(spec.get(key), str):
            raise InputError(f"{where}: field {key!r} is required and must be a string")
    if "{question}" not in spec["user"]:
        raise InputError(f"{where}: field 'user' must contain the placeholder {{question}}")
    if not isinstance(spec.get("system", ""), str | None):
        raise InputError(f"{where}: field 'system' must be a string")
    if not isinstance(spec.get("chat", True), bool):
        raise InputError(f"{where}: field 'chat' must be true or false")
    if not isinstance(spec.get("name", default_name), str):
        raise InputError(f"{where}: field 'name' must be a string")
    if spec.get("system") and not spec.get("chat", True):
        raise InputError(
            f"{where}: field 'system' needs a chat template (chat: true); for plain text, put the "
            "system text in 'user'"
        )
    try:
        protocol = get_protocol(spec["protocol"])
    except InputError as error:
        raise InputError(f"{where}: field 'protocol': {error}") from None
    return Template(
        name=spec.get("name", default_name),
        protocol=protocol,
        user=spec["user"],
        system=spec.get("system"),
        chat=spec.get("chat", True),
    )


def render_prompt(
    prompt: Prompt, tokenizer: Any = None, chat_template_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The text the model sees for a dataset `prompt`.

    Chat messages go through the tokenizer's chat template (with the generation prompt and the
    recipe's `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`) when it has one; otherwise
    their contents are joined, which is how Search-R1 prompts base models.
    """
    if isinstance(prompt, str):
        return prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
    return "\n\n".join(message["content"] for message in prompt)
