"""Passages in observations: how a family writes the passages a search found, and how they are
read back from an observation (the Space shows them one by one; the demo's scripted agent reads
its facts from them).

A `PassageFormat` writes any layout; the two kinds that also read theirs back are Search-R1's
`Doc i(Title: t) text` lines (`DocLines`) and passages written as their corpus contents
(`ContentsBlocks`, ReSearch's). Each protocol holds its format (`Protocol.passages`), so
nothing else ever looks at a layout.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple


class PassageLike(typing.Protocol):
    """What the model is shown of a passage: a retrieved `Passage`, or a `ShownPassage`."""

    @property
    def title(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def title_line(self) -> str: ...

    @property
    def contents(self) -> str: ...


class ShownPassage(NamedTuple):
    """A passage read back from an observation: only its title and text are shown."""

    title: str
    text: str

    @property
    def title_line(self) -> str:
        return self.title

    @property
    def contents(self) -> str:
        return f"{self.title}\n{self.text}"


@dataclass(frozen=True)
class PassageFormat:
    """How one family writes a passage list, and reads it back.

    `layout` writes one passage (`{i}`: its rank from 1; `{title}` and `{text}` as people read
    them; `{title_line}`: the first line of its corpus `contents` as stored, quotes and all;
    `{contents}`: all of it); the passages are joined by `separator`. This class reads nothing
    back (`parse` finds no passages, and the Space shows the observation's body as it is); its
    subclasses read back the `layouts` they name. `for_layout` picks the kind once, when a
    protocol is built from its audited values (none of which names a reader).
    """

    layout: str = "Doc {i}(Title: {title}) {text}"
    separator: str = "\n"

    layouts: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def for_layout(layout: str, separator: str) -> PassageFormat:
        """The format that writes `layout`, of the kind that reads it back if one does."""
        kind = next((k for k in (DocLines, ContentsBlocks) if layout in k.layouts), PassageFormat)
        return kind(layout, separator)

    def format(self, passages: Sequence[PassageLike]) -> str:
        """The passage list as this family writes it."""
        return self.separator.join(
            self.layout.format(
                i=i, title=p.title, text=p.text, title_line=p.title_line, contents=p.contents
            )
            for i, p in enumerate(passages, 1)
        )

    def parse(self, body: str) -> tuple[ShownPassage, ...]:
        """The passages of an observation's body, read back: none for this layout."""
        return ()


_DOC_START = re.compile(r"(?:^|\n)Doc \d+\(Title: ")


@dataclass(frozen=True)
class DocLines(PassageFormat):
    """Search-R1's `Doc i(Title: t) text` lines: the title as people read it (ours), or as the
    corpus stores it (`{title_line}`, Search-R1's own loop; read back without its quotes)."""

    layouts: ClassVar[tuple[str, ...]] = (
        "Doc {i}(Title: {title}) {text}",
        "Doc {i}(Title: {title_line}) {text}",
    )

    def parse(self, body: str) -> tuple[ShownPassage, ...]:
        """The inverse of `format`: a title ends at the first `)` that closes no `(` of its own,
        so "Hamlet (play)" survives; a list cut inside a title (the observation ran out of
        tokens) gives that title and no text. Text before the first `Doc` line is no passage."""
        as_stored = "{title_line}" in self.layout
        passages = []
        for chunk in _DOC_START.split(body)[1:]:  # what follows each "Doc i(Title: "
            title, text, depth = chunk, "", 0
            for i, char in enumerate(chunk):
                if char == "(":
                    depth += 1
                elif char == ")" and depth:
                    depth -= 1
                elif char == ")":
                    title, text = chunk[:i], chunk[i + 1 :].removeprefix(" ")
                    break
            passages.append(ShownPassage(title.strip().strip('"') if as_stored else title, text))
        return tuple(passages)


@dataclass(frozen=True)
class ContentsBlocks(PassageFormat):
    """Each passage as its corpus contents, `"Title"` on the first line (ReSearch's)."""

    layouts: ClassVar[tuple[str, ...]] = ('"{title}"\n{text}', "{contents}")

    def parse(self, body: str) -> tuple[ShownPassage, ...]:
        """One passage per block between separators: the first line is its title (read
        without its quotes), the rest its text."""
        blocks = body.split(self.separator) if body.strip() else []
        return tuple(ShownPassage(*_title_and_text(block)) for block in blocks)


def _title_and_text(block: str) -> tuple[str, str]:
    title, _, text = block.partition("\n")
    return title.strip().strip('"'), text
