"""The one markdown table renderer (research_r1.markdown)."""

from __future__ import annotations

import pytest

from research_r1.markdown import markdown_table


def test_a_table_has_its_header_delimiters_and_rows_unpadded():
    table = markdown_table(["name", "n", "score"], [["a", 3, "0.500"], ["bb", 10, "—"]], {"n"})
    assert table.splitlines() == [
        "| name | n | score |",
        "|---|---:|---|",
        "| a | 3 | 0.500 |",
        "| bb | 10 | — |",
    ]


def test_a_pipe_in_a_cell_is_escaped_and_an_empty_cell_stays():
    table = markdown_table(["a", "b"], [["x|y", ""], ["`1|2`", "z"]])
    assert table.splitlines()[2:] == ["| x\\|y |  |", "| `1\\|2` | z |"]


def test_a_table_without_rows_is_its_header():
    assert markdown_table(["a"], []) == "| a |\n|---|"


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ([["one", "two"]], "a row of 2 cells in a table of 1 columns"),
        ([["two\nlines"]], "a table cell holds a line break"),
    ],
)
def test_a_row_that_would_break_the_table_is_refused(rows, error):
    with pytest.raises(ValueError, match=error):
        markdown_table(["a"], rows)
