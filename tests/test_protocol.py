"""The tag protocols (research_r1.protocol): turn parsing, answers, observations, format checks
and prompt templates (the verbatim upstream prompts byte for byte).

How passages are written and read back inside an observation is in test_passages.py."""

from __future__ import annotations

import configparser
import hashlib
import re
from importlib import resources
from pathlib import Path

import pytest
from helpers import FIXTURES, TWO_PASSAGES
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from research_r1 import protocol as protocol_module
from research_r1.errors import InputError
from research_r1.evaluation.families import get_family
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    PROTOCOLS,
    RESEARCH,
    RESEARCH_BASE_PROMPT,
    RESEARCH_SYSTEM_PROMPT,
    SEARCH_R1,
    SEARCH_R1_INVALID_NOTICE,
    SEARCH_R1_PROMPT,
    TEMPLATES,
    Action,
    extract_answer,
    extract_boxed,
    follows_format,
    get_protocol,
    is_valid_research_sequence,
    is_valid_search_r1_sequence,
    load_template,
    parse_turn,
    render_prompt,
    split_turn,
    upstream_text,
)
from research_r1.retrieval import Passage
from research_r1.retrieval.corpus import split_contents
from research_r1.tiny import build_tokenizer

# Published families' protocols, as their audited data builds them
# (research_r1/evaluation/families).
AUTOREFINE, R1_SEARCHER, STEPSEARCH, ZEROSEARCH = (
    get_family(name).template.protocol
    for name in ("autorefine", "r1_searcher", "stepsearch", "zerosearch")
)

# ---------------------------------------------------------------------------------------------
# Protocols as data


def test_get_protocol() -> None:
    assert get_protocol("search_r1") is SEARCH_R1
    assert get_protocol("research") is RESEARCH
    assert sorted(PROTOCOLS) == ["research", "search_r1"]  # ours; families build their own
    with pytest.raises(InputError, match=r"unknown protocol 'nope'.*\['research', 'search_r1'\]"):
        get_protocol("nope")


def test_other_families_tags_and_stops() -> None:
    # R1-Searcher passes its chat end tokens as stop strings too (never in text decoded
    # without special tokens, so its stop ids end those turns).
    assert R1_SEARCHER.stop_strings == (
        "<|im_end|>",
        "<|endoftext|>",
        "<|end_of_query|>",
        "</answer>",
    )
    # Search-R1's loop passes no stop strings and cuts after the first </search>: generation
    # stops there, as nothing after it is kept.
    assert (AUTOREFINE.stop, AUTOREFINE.stop_strings) == ((), ("</search>",))
    assert R1_SEARCHER.tags[2:6] == (
        "<|begin_of_query|>",
        "<|end_of_query|>",
        "<|begin_of_documents|>",
        "<|end_of_documents|>",
    )
    assert AUTOREFINE.tags[4:6] == ("<documents>", "</documents>")
    assert AUTOREFINE.tags[-2:] == ("<refine>", "</refine>")


# ---------------------------------------------------------------------------------------------
# Parsing one turn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<think>need facts</think><search> capital of France </search>",
            Action("search", "capital of France"),
        ),
        ("<think>done</think><answer> Paris </answer>", Action("answer", "Paris")),
        ("<search>multi\nline query</search>", Action("search", "multi\nline query")),
        ("I am not sure what to do.", Action("invalid")),
        ("", Action("invalid")),
        ("<search>   </search>", Action("invalid")),  # empty query: never sent to the retriever
        ("<search>unclosed query", Action("invalid")),
        ("<search>q1</search><answer>a</answer>", Action("search", "q1")),  # first action wins
        ("<answer>a</answer><search>q1</search>", Action("answer", "a")),
        ("<search>q1</search> and <search>q2</search>", Action("search", "q1")),
        ("<answer>Paris</answer> I hope that helps!", Action("answer", "Paris")),  # text after
        ("<search>open <answer>Paris</answer>", Action("answer", "Paris")),  # unclosed search
        ("<answer></answer>", Action("answer", "")),  # an empty answer still ends the episode
        ("<search>q</answer>", Action("invalid")),  # mismatched closing tag
    ],
)
def test_parse_turn(text: str, expected: Action) -> None:
    assert parse_turn(text, SEARCH_R1) == expected


def test_parse_turn_reads_each_protocols_search_markers() -> None:
    query = "capital of France"
    turn = f"Let me look it up. <|begin_of_query|> {query} <|end_of_query|>"
    # R1-Searcher sends its queries unstripped
    assert parse_turn(turn, R1_SEARCHER) == Action("search", f" {query} ")
    assert parse_turn(turn, SEARCH_R1) == Action("invalid")
    assert parse_turn("<answer> Paris </answer>", R1_SEARCHER) == Action("answer", "Paris")
    assert parse_turn("<refine>P is in F</refine><search> q </search>", AUTOREFINE) == Action(
        "search", "q"
    )


# ---------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{Paris}", "Paris"),
        ("The answer is \\[ \\boxed{ Paris } \\]", "Paris"),
        ("\\boxed{a} then \\boxed{b}", "b"),  # the last box
        ("\\boxed{\\{a\\}}", "\\{a\\}"),  # nested braces balanced
        ("\\boxed{f(x) = {1, 2}}", "f(x) = {1, 2}"),
        ("\\boxed{}", ""),
        ("\\boxed{unclosed", None),
        ("\\boxed{a} \\boxed{unclosed", None),  # the last box decides
        ("no box here", None),
        ("\\boxed Paris", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("completion", "search_r1", "research"),
    [
        ("<think>x</think><answer> Paris </answer>", "Paris", None),
        (
            "<answer>The answer is \\[ \\boxed{Paris} \\]</answer>",
            "The answer is \\[ \\boxed{Paris} \\]",
            "Paris",
        ),
        # Search-R1 reads the last answer block, ReSearch the first (and the box inside it).
        ("<answer>Lyon</answer> no, <answer>\\boxed{Paris}</answer>", "\\boxed{Paris}", None),
        ("<answer>\\boxed{Lyon}</answer><answer>Paris</answer>", "Paris", "Lyon"),
        ("<think>no answer yet</think>", None, None),
        ("<answer>unclosed", None, None),
        ("<answer>a\nb</answer>", "a\nb", None),
        ("<answer>x <answer>Paris</answer>", "x <answer>Paris", None),  # nested: as upstream
        ("<answer></answer>", "", None),
    ],
)
def test_extract_answer(completion: str, search_r1: str | None, research: str | None) -> None:
    assert extract_answer(completion, SEARCH_R1) == search_r1
    assert extract_answer(completion, RESEARCH) == research


def test_extract_answer_ignores_the_notice() -> None:
    text = f"<think>a</think>{SEARCH_R1_INVALID_NOTICE}"
    assert extract_answer(text, SEARCH_R1) is None
    assert extract_answer(text + "<think>b</think><answer>Paris</answer>", SEARCH_R1) == "Paris"
    assert extract_answer("<answer>\\boxed{x}</answer>", RESEARCH) == "x"


# ---------------------------------------------------------------------------------------------
# Observations


def test_format_observation_exact() -> None:
    """Byte for byte what each family's own loop inserts (see research_r1.protocol)."""
    body = SEARCH_R1.passages.format(TWO_PASSAGES)
    assert SEARCH_R1.observation(TWO_PASSAGES) == f"\n\n<information>{body}</information>\n\n"
    # ReSearch: each passage's corpus contents, joined by a blank line.
    assert RESEARCH.observation(TWO_PASSAGES) == (
        ' <result>\n"Paris"\nParis is the capital of France.\n\n"Eiffel Tower"\n'
        "A tower in Paris.\nBuilt in 1889.\n</result>"
    )
    # AutoRefine: Search-R1's passage lines inside <documents>, titles as the corpus stores them.
    assert AUTOREFINE.observation(TWO_PASSAGES[:1]) == (
        '\n\n<documents>Doc 1(Title: "Paris") Paris is the capital of France.</documents>\n\n'
    )
    # R1-Searcher: its stop string put back, numbered contents each ending with a newline.
    assert R1_SEARCHER.observation(TWO_PASSAGES) == (
        '<|end_of_query|>\n\n<|begin_of_documents|>\n(1)"Paris"\nParis is the capital of '
        'France.\n(2)"Eiffel Tower"\nA tower in Paris.\nBuilt in 1889.\n<|end_of_documents|>\n\n'
    )
    assert ZEROSEARCH.observation(TWO_PASSAGES[:1]) == (
        '\n\n<information>Doc 1: "Paris"\nParis is the capital of France.</information>\n\n'
    )
    assert STEPSEARCH.observation(TWO_PASSAGES[:1]) == (
        '\n\n<information> Doc 1<## Title: "Paris" ##> Paris is the capital of France. '
        "</information>\n\n"
    )
    assert SEARCH_R1.observation([]) == "\n\n<information></information>\n\n"


@pytest.mark.parametrize("protocol", [SEARCH_R1, RESEARCH, AUTOREFINE])
def test_observation_round_trip(protocol) -> None:
    """Corpus rows -> passages -> observation -> parsed back: the same titles and texts."""
    rows = ['"Paris"\nParis is the capital of France.', '"Lyon"\nLyon is on the Rhône.']
    passages = [
        Passage(id=str(i), contents=f'"{title}"\n{text}', score=0.0)
        for i, (title, text) in enumerate(split_contents(row) for row in rows)
    ]
    observation = protocol.observation(passages)
    inner = re.search(
        re.escape(protocol.observation_open) + r"(.*)" + re.escape(protocol.observation_close),
        observation,
        re.DOTALL,
    )
    assert inner is not None
    assert protocol.passages.parse(inner.group(1).strip()) == (
        ("Paris", "Paris is the capital of France."),
        ("Lyon", "Lyon is on the Rhône."),
    )


def test_action_blocks_find_the_first_search_or_answer() -> None:
    match = SEARCH_R1.action_blocks.search("<think>x</think><search> q </search><answer>a</answer>")
    assert match is not None and match.groups() == (" q ", None)


# ---------------------------------------------------------------------------------------------
# Format checks: Search-R1's state machine

INFO = SEARCH_R1.observation([Passage("1", '"Paris"\nParis is in France.', 1.0)])


@pytest.mark.parametrize(
    "text",
    [
        "<think>easy</think><answer>Paris</answer>",
        "\n<think>easy</think>\n<answer> Paris </answer>\n",
        f"<think>a</think><search>q</search>{INFO}<think>b</think><answer>Paris</answer>",
        f"<think>a</think> <search>q1</search>{INFO}<think>b</think>\n<search>q2</search>{INFO}"
        "<think>c</think> <answer>Paris</answer>",
        "<think></think><answer></answer>",
    ],
)
def test_search_r1_valid_sequences(text: str) -> None:
    assert is_valid_search_r1_sequence(text) == (True, "valid sequence")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<answer>Paris</answer>", "unexpected tag <answer> in state start"),  # answer first
        ("<search>q</search>", "unexpected tag <search> in state start"),
        (  # a search the environment did not answer
            "<think>a</think><search>q</search><think>b</think><answer>x</answer>",
            "unexpected tag <think> in state after_search",
        ),
        (  # information the model wrote itself, without searching
            "<think>a</think><information>fake</information><think>b</think><answer>x</answer>",
            "unexpected tag <information> in state after_think",
        ),
        (  # after information the model must think before answering
            f"<think>a</think><search>q</search>{INFO}<answer>x</answer>",
            "unexpected tag <answer> in state after_information",
        ),
        ("Sure. <think>a</think><answer>x</answer>", "unexpected text 'Sure.' in state start"),
        ("<think>a</think> so <answer>x</answer>", "unexpected text 'so' in state after_think"),
        ("<think>a</think><answer>x</answer> done", "unexpected text 'done' in state end"),
        (
            "<think>a</think><answer>x</answer><answer>y</answer>",
            "unexpected tag <answer> in state end",
        ),
        ("<think>a<think>b</think></think>", "unexpected tag <think> in state in_think"),
        ("<think>a</think><answer>x", "incomplete sequence, ended in state in_answer"),
        ("<think>a</think>", "incomplete sequence, ended in state after_think"),
        ("", "incomplete sequence, ended in state start"),
        (
            f"<think>a</think>{SEARCH_R1_INVALID_NOTICE}<think>b</think><answer>x</answer>",
            "unexpected text 'My previous action is invalid. If I want' in state after_think",
        ),
    ],
)
def test_search_r1_invalid_sequences(text: str, reason: str) -> None:
    assert is_valid_search_r1_sequence(text) == (False, reason)


# ---------------------------------------------------------------------------------------------
# ReSearch's format check

RESULT = RESEARCH.observation([Passage("1", '"Paris"\nParis is in France.', 1.0)])


@pytest.mark.parametrize(
    "text",
    [
        "<think>a</think><answer>The answer is \\[ \\boxed{Paris} \\]</answer>",
        f"<think>a</think><search>q</search>{RESULT}<think>b</think><answer>\\boxed{{x}}</answer>",
        f"<think>a</think><search>q1</search>{RESULT}<search>q2</search>{RESULT}"
        "<answer>\\boxed{x}</answer>",
        # ReSearch checks neither think-before-answer nor text between tags.
        "<answer>\\boxed{x}</answer><think>a</think> trailing text",
    ],
)
def test_research_valid_sequences(text: str) -> None:
    assert is_valid_research_sequence(text) == (True, "valid sequence")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<answer>\\boxed{x}</answer>", "no <think> block"),
        ("<think>a<answer>\\boxed{x}</answer>", "<think> and </think> are not paired"),
        ("<think>a</think>", "there must be exactly one <answer> and one </answer>"),
        (
            "<think>a</think><answer>\\boxed{x}</answer><answer>\\boxed{y}</answer>",
            "there must be exactly one <answer> and one </answer>",
        ),
        (
            "<think>a</think><search>q</search><answer>\\boxed{x}</answer>",
            "a <search> lacks its </search>, <result> or </result>",
        ),
        (
            "<think>a</think><search>q<result>r</result></search><answer>\\boxed{x}</answer>",
            "search and result tags are in the wrong order",
        ),
        (  # Search-R1's observation tag is not ReSearch's
            f"<think>a</think><search>q</search>{INFO}<answer>\\boxed{{x}}</answer>",
            "a <search> lacks its </search>, <result> or </result>",
        ),
        ("<think>a</think></answer>\\boxed{x}<answer>", "</answer> comes before <answer>"),
        ("<think>a</think><answer>Paris</answer>", "the answer has no \\boxed{}"),
    ],
)
def test_research_invalid_sequences(text: str, reason: str) -> None:
    assert is_valid_research_sequence(text) == (False, reason)


def test_follows_format_picks_the_protocols_check() -> None:
    """ReSearch's check for ReSearch; Search-R1's grammar, the last-turn notice left out, for
    Search-R1."""
    warned = f"<think>a</think><search>q</search>{INFO}{FINAL_TURN_NOTICE}<think>b</think>"
    warned += "<answer>Paris</answer>"
    assert is_valid_search_r1_sequence(warned) == (
        False,
        "unexpected text 'I have no searches left, so my next step' in state after_information",
    )
    assert follows_format(warned, SEARCH_R1) == (True, "valid sequence")
    assert follows_format(warned, RESEARCH) == (
        False,
        "a <search> lacks its </search>, <result> or </result>",
    )
    research = f"<think>a</think><search>q</search>{RESULT}<answer>\\boxed{{x}}</answer>"
    assert follows_format(research, RESEARCH) == (True, "valid sequence")
    assert follows_format(research, SEARCH_R1) == (
        False,
        "unexpected text '<result>\\n\"Paris\"\\nParis is in France.\\n</r' in state after_search",
    )


# ---------------------------------------------------------------------------------------------
# Templates


def test_search_r1_template_exact() -> None:
    template = TEMPLATES["search_r1"]
    assert (template.name, template.protocol, template.chat, template.system) == (
        "search_r1",
        SEARCH_R1,
        True,
        None,
    )
    question = "Who wrote Hamlet?"
    messages = template.prompt(f"  {question} \n")
    assert isinstance(messages, list) and len(messages) == 1
    assert messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith(
        "Answer the given question. You must conduct reasoning inside <think>"
    )
    assert content.endswith(f"Question: {question}\n")
    assert content.count(question) == 1
    # The example answer the reward must never count lives in the prompt.
    assert "<answer> Beijing </answer>" in content
    for tag in ("<think>", "<search>", "<information>", "<answer>"):
        assert tag in content


def test_research_base_template_is_plain_text() -> None:
    template = TEMPLATES["research_base"]
    assert (template.protocol, template.chat) == (RESEARCH, False)
    prompt = template.prompt("Who wrote Hamlet?")
    assert isinstance(prompt, str)
    assert prompt.startswith("A conversation between User and Assistant.")
    assert prompt.endswith(" User: Who wrote Hamlet?. Assistant:")
    assert "<result>" in prompt and "\\boxed{" in prompt and "<information>" not in prompt
    assert prompt.count("Who wrote Hamlet?") == 1


def test_research_instruct_template_is_system_and_user() -> None:
    template = TEMPLATES["research_instruct"]
    messages = template.prompt(" Who wrote Hamlet? ")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1] == {"role": "user", "content": "Who wrote Hamlet?"}
    assert messages[0]["content"] == template.system
    assert messages[0]["content"].startswith("You are a helpful assistant")
    assert "<result>" in messages[0]["content"] and "Who wrote" not in messages[0]["content"]


# The verbatim prompts as protocol.py spelled them in code before they became data files.
PROMPT_DIGESTS = {  # name: (length, sha256)
    "SEARCH_R1_PROMPT": (575, "325187b4e28848fc12d41dfcb958bf9376b3735630d67686c140b65d1b76d578"),
    "RESEARCH_BASE_PROMPT": (
        946,
        "8e452d639b0a5b56f57457af622d6c9a38242890b46a70c994269b18d6e62f39",
    ),
    "RESEARCH_SYSTEM_PROMPT": (
        928,
        "87e802b6736cb3165ea6a644d4fe2f2c7118b21828103c9eeb338ce0c7f8b23b",
    ),
    "SEARCH_R1_INVALID_NOTICE": (
        218,
        "2b4e05101bcbf539265251f74e7730289cf105d94dff9a05193061e9b0f050ba",
    ),
}


@pytest.mark.parametrize("name", PROMPT_DIGESTS)
def test_prompts_loaded_from_data_files_are_byte_identical(name: str) -> None:
    text = getattr(protocol_module, name)
    assert (len(text), hashlib.sha256(text.encode()).hexdigest()) == PROMPT_DIGESTS[name]


def test_prompt_files_hold_upstream_text_under_its_source_line() -> None:
    """The texts equal the verbatim upstream copies in tests/fixtures; each file's first line
    names the pinned upstream commit it is copied from, and is not part of the text."""
    fixtures = Path(__file__).parent / "fixtures"
    assert (fixtures / "search_r1_base_prefix.txt").read_text() == SEARCH_R1_PROMPT
    assert (fixtures / "research_system_prompt.txt").read_text() == RESEARCH_SYSTEM_PROMPT
    base = (fixtures / "research_base_template.txt").read_text()
    assert base.format(prompt="{question}") == RESEARCH_BASE_PROMPT
    files = sorted((resources.files("research_r1") / "prompts").iterdir(), key=lambda f: f.name)
    assert [f.name for f in files if f.name.endswith(".txt")] == [
        "research_base.txt",
        "research_system.txt",
        "search_r1.txt",
        "search_r1_invalid_notice.txt",
    ]
    for file in files:
        source = file.read_text().partition("\n")[0]
        assert re.match(r"# [\w.-]+/[\w.-]+@[0-9a-f]{40}:\S+", source), file.name
        assert source not in upstream_text(file.name.removesuffix(".txt"))
    package_data = configparser.ConfigParser()
    package_data.read(Path(__file__).parents[1] / "setup.cfg")
    assert package_data["options.package_data"]["research_r1.prompts"] == "*.txt"


def _chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory, with a minimal chat template (no downloads)."""
    model = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer


def test_render_prompt_with_chat_template() -> None:
    tokenizer = _chat_tokenizer()
    messages = TEMPLATES["research_instruct"].prompt("Q?")
    assert render_prompt(messages, tokenizer) == (
        f"<|system|>{TEMPLATES['research_instruct'].system}\n<|user|>Q?\n<|assistant|>"
    )
    user = TEMPLATES["search_r1"].prompt("Q?")[0]["content"]
    assert render_prompt(TEMPLATES["search_r1"].prompt("Q?"), tokenizer) == (
        f"<|user|>{user}\n<|assistant|>"
    )


def test_render_prompt_without_chat_template() -> None:
    messages = TEMPLATES["research_instruct"].prompt("Q?")
    expected = f"{TEMPLATES['research_instruct'].system}\n\nQ?"
    assert render_prompt(messages) == expected
    tokenizer = _chat_tokenizer()
    tokenizer.chat_template = None
    assert render_prompt(messages, tokenizer) == expected
    # Search-R1 prompts a base model with the user text alone.
    search_r1 = TEMPLATES["search_r1"].prompt("Q?")
    assert render_prompt(search_r1) == search_r1[0]["content"]
    # Plain text passes through untouched, with or without a chat template.
    plain = TEMPLATES["research_base"].prompt("Q?")
    assert render_prompt(plain) == plain
    assert render_prompt(plain, _chat_tokenizer()) == plain


def qwen_tokenizer():
    """A tiny tokenizer with Qwen2.5's public chat template (tests/fixtures)."""
    tokenizer = build_tokenizer(["x"], SEARCH_R1.tags, chat=True)
    tokenizer.chat_template = (FIXTURES / "qwen2_5_chat_template.jinja").read_text()
    return tokenizer


def test_search_r1_prompt_through_qwens_chat_template_is_the_original_byte_for_byte():
    """The fixture is `make_prefix` of Search-R1's scripts/data_process/nq_search.py
    (template_type "base"), copied verbatim."""
    question = "who wrote hamlet?"
    prefix = (FIXTURES / "search_r1_base_prefix.txt").read_text().format(question=question)
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        f"<|im_end|>\n<|im_start|>user\n{prefix}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(TEMPLATES["search_r1"].prompt(question), qwen_tokenizer()) == expected


def test_research_prompts_are_the_originals_byte_for_byte():
    """The fixtures are ReSearch's base-model template (filled with `.format(prompt=...)`) and
    its instruct system prompt, copied verbatim from its FlashRAG pipeline."""
    question = "who wrote hamlet?"
    base = (FIXTURES / "research_base_template.txt").read_text().format(prompt=question)
    system = (FIXTURES / "research_system_prompt.txt").read_text()
    tokenizer = qwen_tokenizer()
    assert render_prompt(TEMPLATES["research_base"].prompt(question), tokenizer) == base
    assert render_prompt(TEMPLATES["research_instruct"].prompt(question), tokenizer) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------------------------------------
# User templates from YAML


def _write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_template_builtin() -> None:
    for name, template in TEMPLATES.items():
        assert load_template(name) is template


def test_load_template_from_yaml(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "protocol: research\nsystem: Be brief.\nuser: 'Q: {question}'\n",
        name="brief.yaml",
    )
    template = load_template(path)
    assert (template.name, template.protocol, template.system, template.chat) == (
        "brief",
        RESEARCH,
        "Be brief.",
        True,
    )
    assert template.prompt("Who?") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: Who?"},
    ]
    plain = load_template(
        _write(
            tmp_path, "name: plain\nprotocol: search_r1\nchat: false\nuser: 'Q: {question} A:'\n"
        )
    )
    assert (plain.name, plain.protocol, plain.chat, plain.system) == (
        "plain",
        SEARCH_R1,
        False,
        None,
    )
    assert plain.prompt("Who?") == "Q: Who? A:"
    assert load_template(str(path)) == template  # a str path works too


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "a template must be a mapping"),
        (
            "protocol: research\nuser: '{question}'\ncolour: red\n",
            r"unknown template keys \['colour'\]",
        ),
        ("user: '{question}'\n", "field 'protocol' is required and must be a string"),
        ("protocol: research\n", "field 'user' is required and must be a string"),
        ("protocol: research\nuser: 3\n", "field 'user' is required and must be a string"),
        (
            "protocol: research\nuser: 'no placeholder'\n",
            r"field 'user' must contain the placeholder \{question\}",
        ),
        (
            "protocol: research\nuser: '{question}'\nsystem: [a]\n",
            "field 'system' must be a string",
        ),
        (
            "protocol: research\nuser: '{question}'\nchat: maybe\n",
            "field 'chat' must be true or false",
        ),
        ("protocol: nope\nuser: '{question}'\n", "field 'protocol': unknown protocol 'nope'"),
        ("protocol: research\nuser: '{question}\n", "not valid YAML"),
        ("protocol: research\nuser: '{question}'\nname: 5\n", "field 'name' must be a string"),
        (
            "protocol: research\nuser: '{question}'\nsystem: Be brief.\nchat: false\n",
            "field 'system' needs a chat template",
        ),
    ],
)
def test_load_template_errors_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=re.escape(str(path)) + ": " + message):
        load_template(path)


def test_load_template_unknown_name(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(
        InputError,
        match=r"neither a built-in \(search_r1, research_base, research_instruct\)",
    ):
        load_template(missing)
    with pytest.raises(InputError, match="'no_such_template' is neither a built-in"):
        load_template("no_such_template")


@pytest.mark.parametrize(
    ("protocol", "text", "expected"),
    [
        (
            SEARCH_R1,
            "<think> I need the author </think>\n<search> hamlet author </search>",
            ("I need the author", Action("search", "hamlet author")),
        ),
        (
            R1_SEARCHER,
            "<think> hm </think><|begin_of_query|> hamlet <|end_of_query|>",
            ("hm", Action("search", " hamlet ")),
        ),
        (
            SEARCH_R1,
            "<think> sure </think> <answer> Paris </answer>",
            ("sure", Action("answer", "Paris")),
        ),
        (SEARCH_R1, "<think> lost </think>", ("lost", Action("invalid"))),
    ],
)
def test_split_turn_gives_the_thought_before_the_action(protocol, text, expected):
    assert split_turn(text, protocol) == expected
