"""The one markdown table renderer, `markdown_table`: the demo's summary, the leaderboard,
the model card's results and the fidelity document are written with it."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[str] = ()
) -> str:
    """A GitHub-flavoured markdown table, without a trailing newline: the header, the delimiter
    row (`---:` under the columns named in `right`, `---` under the others) and a line per row.
    Each cell is `str()` of its value with `|` escaped, so a cell holds any text on one line.

    Not `tabulate` (nor pandas' `to_markdown`, which calls it): it pads every cell to its
    column's widest. docs/fidelity.md quotes upstream prompts as JSON, cells of up to 1,500
    characters, and padded it grows from 0.23 to 1.26 MB, with an edit to one cell rewriting
    its whole column; unpadded rows render the same and diff line by line.
    """
    lines = [_line(columns), "|" + "".join("---:|" if c in right else "---|" for c in columns)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(columns)} columns")
        lines.append(_line(row))
    return "\n".join(lines)


def _line(cells: Sequence[object]) -> str:
    texts = [str(cell) for cell in cells]
    if any("\n" in text for text in texts):
        raise ValueError(f"a table cell holds a line break: {texts}")
    return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"
