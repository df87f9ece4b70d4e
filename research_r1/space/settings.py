"""The Space's settings, and how they are read: the values `push-space` wrote to
`space_config.json`, under the Space variables of the same names.

The Hub reads no variables from a Space's README header, so `push-space` (`push.py`) writes the
settings to `space_config.json` beside the app; Space variables of the same names (MODEL_ID,
RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS, TOPK, RESULTS: the Hub results dataset the leaderboard
tab reads, and EXAMPLES: a QA file of example questions), set on the Space's settings page,
override them without a new push. The app (`app.py`) loads what they name. No command here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from research_r1.errors import InputError, invalid
from research_r1.protocol import TEMPLATES

SETTINGS_FILE = "space_config.json"

_NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class SpaceSettings(BaseModel):
    """What the app loads. Each field is read from the Space variable named by its alias, or
    from the same key in space_config.json; `retriever_config` is a path (or `hf://` URI), or
    the config itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model_id: _NonBlank = Field(alias="MODEL_ID")
    retriever_config: _NonBlank | dict[str, Any] = Field(alias="RETRIEVER_CONFIG")
    # None: the model's own, from its family or its model card (as `eval` resolves them)
    template: str | None = Field(None, alias="TEMPLATE")
    max_turns: int | None = Field(None, alias="MAX_TURNS", ge=0)
    top_k: int | None = Field(None, alias="TOPK", ge=1)
    results: str | None = Field(None, alias="RESULTS")  # hf://datasets/ORG/NAME of eval runs
    examples: str | None = Field(None, alias="EXAMPLES")  # a QA file: its first questions

    @field_validator("retriever_config", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """A Space variable holds a config as JSON text; an object is the config itself."""
        if not isinstance(value, str) or not value.strip().startswith("{"):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a valid JSON object ({error})") from None


_VARIABLES = tuple(field.alias for field in SpaceSettings.model_fields.values())


def load_settings(
    folder: str | os.PathLike, environ: Mapping[str, str] = os.environ
) -> SpaceSettings:
    """Settings from the variables MODEL_ID, RETRIEVER_CONFIG (a YAML path, `hf://` URI or JSON
    object), TEMPLATE, MAX_TURNS and TOPK, over those `push-space` wrote to
    `folder/space_config.json`. Relative paths are read from `folder`."""
    folder = Path(folder)
    path = folder / SETTINGS_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a JSON object of settings")
    values.update({key: environ[key] for key in _VARIABLES if key in environ})
    try:
        settings = SpaceSettings.model_validate(values)
    except ValidationError as error:
        raise _settings_error(error, path, environ) from None
    config, template, examples = settings.retriever_config, settings.template, settings.examples
    return settings.model_copy(
        update={
            "model_id": _local(folder, settings.model_id),
            "retriever_config": config if isinstance(config, dict) else _local(folder, config),
            "template": template if template in (None, *TEMPLATES) else _local(folder, template),
            "examples": examples and _local(folder, examples),
        }
    )


def _settings_error(error: ValidationError, path: Path, environ: Mapping[str, str]) -> InputError:
    """One line for the first problem, naming the file or the variables it came from. Unknown
    keys come first: a misspelt key is why a setting looks unset."""
    problems = error.errors(include_url=False)
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        return InputError(f"{path}: unknown settings {unknown} (known: {list(_VARIABLES)})")
    key = problems[0]["loc"][0]
    if problems[0]["type"] in ("missing", "string_too_short"):
        return InputError(f"{key} is not set: set the Space variable, or push with push-space")
    return invalid(error, "Space variables" if key in environ else str(path))


def _local(folder: Path, value: str) -> str:
    """A relative path that exists in `folder` is read from there; anything else is kept."""
    candidate = folder / value
    return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value
