"""Passage lists in observations (research_r1.passages): Search-R1's `Doc i(Title: ...)` lines
and ReSearch's contents blocks are written and read back exactly; other layouts are only
written."""

from __future__ import annotations

import pytest
from helpers import TWO_PASSAGES

from research_r1.evaluation.families import get_family
from research_r1.passages import ContentsBlocks, DocLines, PassageFormat, ShownPassage
from research_r1.protocol import RESEARCH, SEARCH_R1

# Published families' protocols, as their audited data builds them.
AUTOREFINE, R1_SEARCHER, STEPSEARCH, ZEROSEARCH = (
    get_family(name).template.protocol
    for name in ("autorefine", "r1_searcher", "stepsearch", "zerosearch")
)


def test_format_passages_exact() -> None:
    assert SEARCH_R1.passages.format(TWO_PASSAGES) == (
        "Doc 1(Title: Paris) Paris is the capital of France.\n"
        "Doc 2(Title: Eiffel Tower) A tower in Paris.\nBuilt in 1889."
    )
    assert SEARCH_R1.passages.format([]) == ""


@pytest.mark.parametrize(
    "passages",
    [
        [],
        [ShownPassage("Paris", "Paris is the capital of France.")],
        [
            ShownPassage("Hamlet (play)", "A tragedy (c. 1600) by Shakespeare."),  # `)` ends it
            ShownPassage("A (b (c)) d", "nested parentheses"),
            ShownPassage("(1999)", ") a text that starts with a parenthesis"),
            ShownPassage("Lines", "line one\nline two\n"),  # multi-line, a trailing newline
            ShownPassage("", ""),  # an empty title and an empty text
            ShownPassage(" Spaced ", " text with spaces "),
        ],
    ],
)
def test_parse_passages_inverts_format_passages(passages: list[ShownPassage]) -> None:
    written = SEARCH_R1.passages.format(passages)
    assert SEARCH_R1.passages.parse(written) == tuple(passages)
    assert SEARCH_R1.passages.format(SEARCH_R1.passages.parse(written)) == written


def test_parse_passages_of_a_list_cut_inside_a_title() -> None:
    """An observation cut at its token budget: the cut title is kept, with no text."""
    assert SEARCH_R1.passages.parse("Doc 1(Title: A (b)) one\ntwo\nDoc 2(Title: Cut (ti") == (
        ("A (b)", "one\ntwo"),
        ("Cut (ti", ""),
    )


def test_parse_passages_reads_only_doc_lines() -> None:
    assert SEARCH_R1.passages.parse("") == ()
    assert SEARCH_R1.passages.parse("Search failed: connection refused") == ()
    assert SEARCH_R1.passages.parse("before\nDoc 1(Title: T) text") == (("T", "text"),)


def test_each_protocol_reads_back_the_passages_it_writes() -> None:
    """Search-R1's lines (titles shown or as stored) and contents blocks are read back; other
    layouts are only written, and the Space shows their body as it is."""
    assert type(SEARCH_R1.passages) is DocLines and type(AUTOREFINE.passages) is DocLines
    assert type(RESEARCH.passages) is ContentsBlocks
    assert type(get_family("research").template.protocol.passages) is ContentsBlocks
    for protocol in (R1_SEARCHER, STEPSEARCH, ZEROSEARCH):
        assert type(protocol.passages) is PassageFormat
        assert protocol.passages.parse(protocol.passages.format(TWO_PASSAGES)) == ()
    stored = AUTOREFINE.passages.format(TWO_PASSAGES[:1])
    assert stored == 'Doc 1(Title: "Paris") Paris is the capital of France.'
    assert AUTOREFINE.passages.parse(stored) == (("Paris", "Paris is the capital of France."),)
