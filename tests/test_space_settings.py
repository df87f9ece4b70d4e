"""research_r1.space.settings: the Space's settings, read from space_config.json under the
Space variables, and the messages that name a bad one."""

from __future__ import annotations

import json

import pytest

from research_r1.errors import InputError
from research_r1.space.settings import SpaceSettings, load_settings


def test_settings_read_the_file_under_the_space_variables(tmp_path):
    (tmp_path / "retriever.yaml").write_text("type: remote\nurl: http://search.example\n")
    (tmp_path / "space_config.json").write_text(
        json.dumps({"MODEL_ID": "org/agent", "RETRIEVER_CONFIG": "retriever.yaml", "TOPK": 5})
    )
    assert load_settings(tmp_path, {}) == SpaceSettings(
        model_id="org/agent",
        retriever_config=str(tmp_path / "retriever.yaml"),
        top_k=5,  # template and searches: the model's own
    )
    variables = {
        "RETRIEVER_CONFIG": '{"type": "remote", "url": "http://search.example"}',
        "TEMPLATE": "research_instruct",
        "MAX_TURNS": "0",
    }
    assert load_settings(tmp_path, variables) == SpaceSettings(
        model_id="org/agent",
        retriever_config={"type": "remote", "url": "http://search.example"},
        template="research_instruct",
        max_turns=0,
        top_k=5,
    )
    assert load_settings(tmp_path, {"RETRIEVER_CONFIG": " hf://datasets/o/r/c.yaml "}) == (
        SpaceSettings(model_id="org/agent", retriever_config="hf://datasets/o/r/c.yaml", top_k=5)
    )


NOT_SET = "is not set: set the Space variable, or push with push-space"
JSON_ERROR = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RETRIEVER_CONFIG": "r.yaml"}, f"MODEL_ID {NOT_SET}"),
        ({"MODEL_ID": "o/m"}, f"RETRIEVER_CONFIG {NOT_SET}"),
        ({"MODEL_ID": " ", "RETRIEVER_CONFIG": "r.yaml"}, f"MODEL_ID {NOT_SET}"),
        ({"MODEL_ID": "o/m", "RETRIEVER_CONFIG": ""}, f"RETRIEVER_CONFIG {NOT_SET}"),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "{nope"},
            "Space variables: key 'RETRIEVER_CONFIG': not a valid JSON object "
            f"({JSON_ERROR}), got '{{nope'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": "three"},
            "Space variables: key 'TOPK': Input should be a valid integer, unable to parse "
            "string as an integer, got 'three'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": "0"},
            "Space variables: key 'TOPK': Input should be greater than or equal to 1, got '0'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "MAX_TURNS": "-1"},
            "Space variables: key 'MAX_TURNS': Input should be greater than or equal to 0, "
            "got '-1'",
        ),
    ],
)
def test_bad_settings_name_the_variable(tmp_path, variables, message):
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, variables)
    assert str(raised.value) == message


def test_bad_settings_in_the_file_name_the_file_and_key(tmp_path):
    path = tmp_path / "space_config.json"
    path.write_text('{"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": 0}')
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, {})
    assert str(raised.value) == (
        f"{path}: key 'TOPK': Input should be greater than or equal to 1, got 0"
    )
    # The same value from a Space variable overrides the file's.
    assert load_settings(tmp_path, {"TOPK": "2"}).top_k == 2


def test_unknown_keys_in_the_settings_file_are_named(tmp_path):
    """Before the setting they look like a misspelling of (RETRIEVER_CONFIG is missing)."""
    path = tmp_path / "space_config.json"
    path.write_text('{"MODEL_ID": "o/m", "TOP_K": 3}')
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, {})
    assert str(raised.value) == (
        f"{path}: unknown settings ['TOP_K'] (known: "
        "['MODEL_ID', 'RETRIEVER_CONFIG', 'TEMPLATE', 'MAX_TURNS', 'TOPK', 'RESULTS', "
        "'EXAMPLES'])"
    )
