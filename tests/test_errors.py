"""The one-line error helpers (research_r1.errors)."""

from __future__ import annotations

from research_r1.errors import closest


def test_closest_takes_the_one_choice_a_name_begins_then_the_nearest_spelling():
    options = ["--output_dir", "--output-dir", "--overwrite", "--suite", "--limit"]
    assert closest("--out", options) == "--output_dir"  # one option in its two spellings
    assert closest("--ov", options) == "--overwrite"
    assert closest("--o", options) is None  # two options begin with it, none spelled near
    assert closest("--limt", options) == "--limit"
    assert closest("--xyz", options) is None
    assert closest("bamboogle", ["bamboogle", "nq"]) == "bamboogle"
