"""The tag protocols, as data: what the model writes, what we insert, and the prompt templates.

Two protocols share the `<think> <search> <answer>` actions and differ in how observations are
wrapped and how answers are written:

- Search-R1: observations inside `<information>`, the answer is the text inside `<answer>`.
- ReSearch: observations inside `<result>`, the answer is the `\\boxed{}` inside `<answer>`.

Everything else in the package (rollout, rewards, data preparation, evaluation) reads tags, stop
strings and notices from here rather than spelling them out again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from research_r1.errors import InputError
from research_r1.retrieval import Passage

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

# Search-R1's notice for a turn that neither searches nor answers (no penalty: the episode goes on).
SEARCH_R1_INVALID_NOTICE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.\n"
)
# Ours (Search-R1 has none): ends the observation before the last turn, whose search is not run.
FINAL_TURN_NOTICE = "\nI have no searches left, so my next step must be the final answer.\n"


@dataclass(frozen=True)
class Protocol:
    """How one method writes observations and answers; actions are common to both."""

    name: str
    observation_open: str
    observation_close: str
    # Text inserted around the formatted passages; `{passages}` is replaced.
    observation_format: str
    boxed_answer: bool
    invalid_notice: str

    @property
    def stop_strings(self) -> tuple[str, str]:
        """Generation pauses after either: a search to run, or an answer that ends the episode."""
        return (SEARCH_CLOSE, ANSWER_CLOSE)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag, to register as (non-special) tokens so decoding never drops them."""
        return (
            THINK_OPEN,
            THINK_CLOSE,
            SEARCH_OPEN,
            SEARCH_CLOSE,
            self.observation_open,
            self.observation_close,
            ANSWER_OPEN,
            ANSWER_CLOSE,
        )


SEARCH_R1 = Protocol(
    name="search_r1",
    observation_open="<information>",
    observation_close="</information>",
    observation_format="\n\n<information>{passages}</information>\n\n",
    boxed_answer=False,
    invalid_notice=SEARCH_R1_INVALID_NOTICE,
)

RESEARCH = Protocol(
    name="research",
    observation_open="<result>",
    observation_close="</result>",
    observation_format=" <result>\n{passages}\n</result>",
    boxed_answer=True,
    invalid_notice=SEARCH_R1_INVALID_NOTICE,
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
    """What one model turn asks for: run a search, give the answer, or neither (invalid)."""

    kind: Literal["search", "answer", "invalid"]
    content: str = ""


def parse_turn(text: str) -> Action:
    """The first complete `<search>` or `<answer>` block of one turn, as Search-R1 reads it.

    An empty query is invalid rather than sent to the retriever, which would reject it.
    """
    match = _ACTION.search(text)
    if match is None:
        return Action("invalid")
    kind, content = match.group(1), match.group(2).strip()
    if kind == "search" and not content:
        return Action("invalid")
    return Action(kind, content)  # type: ignore[arg-type]


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
    """The final answer in a completion (never the prompt): the last `<answer>` block.

    The invalid-step notice we insert mentions `<answer> and </answer>`; it is not the model's
    answer, so it is removed first. For ReSearch the answer is the `\\boxed{}` inside the block;
    an answer without one is no answer.
    """
    answers = _ANSWER.findall(completion.replace(protocol.invalid_notice.strip(), ""))
    if not answers:
        return None
    answer = answers[-1].strip()
    return extract_boxed(answer) if protocol.boxed_answer else answer


# ---------------------------------------------------------------------------------------------
# Formatting what we insert


def split_contents(contents: str) -> tuple[str, str]:
    """Title and text of a corpus `contents` field: the first line (quotes stripped), the rest."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text


def format_passages(passages: Sequence[Passage]) -> str:
    """Search-R1's passage list: one `Doc i(Title: t) text` line per passage."""
    return "\n".join(f"Doc {i}(Title: {p.title}) {p.text}" for i, p in enumerate(passages, 1))


def format_observation(passages: Sequence[Passage] | str, protocol: Protocol) -> str:
    """The text inserted after a search: passages (or a message, e.g. an error) in the tags."""
    body = passages if isinstance(passages, str) else format_passages(passages)
    return protocol.observation_format.replace("{passages}", body.strip())


# ---------------------------------------------------------------------------------------------
# Prompt templates

SEARCH_R1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query </search> and it will return the top "
    "searched results between <information> and </information>. You can search as many times "
    "as your want. If you find no further external knowledge needed, you can directly provide "
    "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>. Question: {question}\n"
)

_RESEARCH_RULES = (
    "The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags respectively, and the search query and result are enclosed within <search> "
    "</search> and <result> </result> tags respectively. For example, <think> This is the "
    "reasoning process. </think> <search> search query here </search> <result> search result "
    "here </result> <think> This is the reasoning process. </think> <answer> The final answer "
    "is \\[ \\boxed{answer here} \\] </answer>. In the last part of the answer, the final exact "
    "answer is enclosed within \\boxed{} with latex format."
)

RESEARCH_BASE_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. During thinking, the assistant can invoke the wikipedia "
    "search tool to search for fact information about specific topics if needed. "
    + _RESEARCH_RULES
    + " User: {question}. Assistant:"
)

RESEARCH_SYSTEM_PROMPT = (
    "You are a helpful assistant that can solve the given question step by step with the help "
    "of the wikipedia search tool. Given a question, you need to first think about the reasoning "
    "process in the mind and then provide the answer. During thinking, you can invoke the "
    "wikipedia search tool to search for fact information about specific topics if needed. "
    + _RESEARCH_RULES
)

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Template:
    """A prompt for one question, and the protocol the model is asked to follow.

    `chat` templates become chat messages (the tokenizer's chat template is applied when it has
    one); the others are plain text, as ReSearch feeds base models.
    """

    name: str
    protocol: Protocol
    user: str
    system: str | None = None
    chat: bool = True

    def prompt(self, question: str) -> Prompt:
        """The dataset's `prompt` value: chat messages, or plain text for non-chat templates."""
        user = self.user.replace("{question}", question.strip())
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


def load_template(name_or_path: str | Path) -> Template:
    """A built-in template by name, or a user template from a YAML file.

    The file holds `protocol` (search_r1 or research), `user` (with a `{question}` placeholder),
    and optionally `system`, `chat` (default true) and `name` (default: the file's stem).
    """
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
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a template file must be a YAML mapping")
    unknown = set(spec) - _TEMPLATE_KEYS
    if unknown:
        raise InputError(f"{path}: unknown template keys {sorted(unknown)}")
    for key in ("protocol", "user"):
        if not isinstance(spec.get(key), str):
            raise InputError(f"{path}: field {key!r} is required and must be a string")
    if "{question}" not in spec["user"]:
        raise InputError(f"{path}: field 'user' must contain the placeholder {{question}}")
    if not isinstance(spec.get("system", ""), str | None):
        raise InputError(f"{path}: field 'system' must be a string")
    if not isinstance(spec.get("chat", True), bool):
        raise InputError(f"{path}: field 'chat' must be true or false")
    if not isinstance(spec.get("name", path.stem), str):
        raise InputError(f"{path}: field 'name' must be a string")
    if spec.get("system") and not spec.get("chat", True):
        raise InputError(
            f"{path}: field 'system' needs a chat template (chat: true); for plain text, put the "
            "system text in 'user'"
        )
    try:
        protocol = get_protocol(spec["protocol"])
    except InputError as error:
        raise InputError(f"{path}: field 'protocol': {error}") from None
    return Template(
        name=spec.get("name", path.stem),
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
