"""QA sets for training and evaluation: load, check every row, add prompts, write a parquet split.

Sources are QA sets in FlashRAG format (JSON lines `{"id", "question", "golden_answers",
"metadata"}`) read from a Hub dataset repo with one config per dataset (by default
RUC-NLPIR/FlashRAG_datasets), from local `.jsonl` or `.parquet` files, or from Search-R1's
parquet layout (`data_source`, `prompt`, `reward_model.ground_truth.target`, `extra_info`).
Every source comes out in one shape:

    id, question, golden_answers, data_source, prompt, template

Ids are `{data_source}-{split}-{original id, or the row number when there is none}` and are
checked to be unique across the merged sources: Search-R1 keyed rows by a per-source row index,
which collided as soon as two sources were merged, and anything that groups rollouts or results
by id would then mix questions.

Rows are checked before anything is written. A bare string answer ("Paris") is taken as the
one-answer list ["Paris"]: it is unambiguous and a common way to write a single answer. Any other
answer value that is not a non-empty list of non-empty strings is a bad row (an empty gold answer
would let an empty prediction score). Blank lines in jsonl files are ignored.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetNotFoundError

from research_r1 import hub, outputs
from research_r1.errors import InputError, closest
from research_r1.protocol import Template, load_template

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
FLASHRAG_DATASETS = (
    "nq",
    "triviaqa",
    "popqa",
    "hotpotqa",
    "2wikimultihopqa",
    "musique",
    "bamboogle",
)
# Short names people use for the FlashRAG config names.
ALIASES = {
    "2wiki": "2wikimultihopqa",
    "2wikimqa": "2wikimultihopqa",
    "hotpot": "hotpotqa",
    "trivia": "triviaqa",
    "tqa": "triviaqa",
    "natural_questions": "nq",
}
FILE_SUFFIXES = (".jsonl", ".parquet")
COLUMNS = ("id", "question", "golden_answers", "data_source", "prompt", "template")

_SPLIT_STEMS = {"train", "dev", "test", "validation", "val"}
_NAME = re.compile(r"^[\w.-]+$")
_BLANK = "blank line"
_PROBLEM = "_problem"


@dataclass(frozen=True)
class Source:
    """One QA set named on the command line: what to call it and where its rows are."""

    name: str
    split: str
    path: Path | None = None
    repo: str | None = None
    config: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        """Where the rows come from, as error messages and the summary name it."""
        if self.path is not None:
            return str(self.path)
        revision = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}{revision} (config {self.config!r}, split {self.split!r})"


@dataclass
class SourceSummary:
    """What one source gave: rows kept, and bad rows skipped, counted by reason."""

    source: Source
    rows: int
    skipped: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------------------------------------
# Finding and loading sources


def find_source(spec: str, split: str, source: str = FLASHRAG_REPO) -> Source:
    """The source a `--datasets` entry names.

    An entry is a dataset name (a config of the `source` repo, or a `NAME/SPLIT.jsonl|parquet`
    file under a local `source` directory), a local file, or an `hf://` file URI; `NAME=ENTRY`
    renames it, which sets its `data_source` and id prefix.
    """
    name, sep, location = spec.partition("=")
    if not sep or not _NAME.match(name):
        name, location = "", spec
    if hub.is_hub_uri(location):
        path = hub.resolve(location)
        return Source(name or _name_from_path(path), split, path=_check_file(path, spec))
    if Path(location).is_file() or "/" in location or location.endswith(FILE_SUFFIXES):
        return Source(
            name or _name_from_path(Path(location)), split, path=_check_file(Path(location), spec)
        )
    config = ALIASES.get(location.lower(), location)
    if Path(source).is_dir():
        return Source(name or config, split, path=_split_file(Path(source), config, split))
    if not hub.is_hub_uri(source):
        return Source(name or config, split, repo=source, config=config)
    repo = hub.parse_uri(source)
    if repo.repo_type != "dataset" or repo.path:
        raise InputError(f"--source {source!r}: expected hf://datasets/ORG/NAME[@REVISION]")
    return Source(name or config, split, repo=repo.repo_id, config=config, revision=repo.revision)


def _check_file(path: Path, spec: str) -> Path:
    if not path.is_file():
        raise InputError(f"dataset {spec!r}: no such file {path}")
    if path.suffix not in FILE_SUFFIXES:
        raise InputError(f"dataset {spec!r}: {path} is not a {' or '.join(FILE_SUFFIXES)} file")
    return path


def _split_file(root: Path, config: str, split: str) -> Path:
    """`root/config/split.jsonl` (or .parquet): the FlashRAG repo layout, downloaded."""
    for suffix in FILE_SUFFIXES:
        path = root / config / f"{split}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{root}: no {config}/{split}.jsonl or {config}/{split}.parquet")


def _name_from_path(path: Path) -> str:
    """`nq/train.jsonl` is `nq`, `my_set.jsonl` is `my_set`."""
    return path.parent.name if path.stem in _SPLIT_STEMS and path.parent.name else path.stem


def load_source(source: Source) -> datasets.Dataset:
    """The raw rows of one source: one `text` row per line for jsonl, the columns otherwise.

    jsonl is read as lines so that a line that is not JSON, or a field whose type differs from
    the other rows', is reported with its row number instead of failing the whole file.
    """
    try:
        if source.path is None:
            return datasets.load_dataset(
                source.repo, source.config, split=source.split, revision=source.revision
            )
        builder = "text" if source.path.suffix == ".jsonl" else "parquet"
        return datasets.load_dataset(builder, data_files=str(source.path), split="train")
    except (
        ValueError,
        FileNotFoundError,
        ConnectionError,
        datasets.exceptions.DatasetsError,
    ) as error:
        if isinstance(error, ConnectionError) and _unknown(source):
            raise InputError(
                f"{source}: {source.config!r} is none of the FlashRAG sets we know "
                f"({_closest(source.config)}known: {', '.join(FLASHRAG_DATASETS)}), and the Hub "
                f"could not be reached to look for it: {error}"
            ) from None
        if isinstance(error, ConnectionError) and source.repo is not None:  # datasets' words
            location = hub.HubLocation(source.repo, "dataset", revision=source.revision)
            what = f"{location.named()}, config '{source.config}', split '{source.split}'"
            raise hub.unreachable(location, str(error), what) from None
        if isinstance(error, DatasetNotFoundError):  # a missing, private or gated repo
            raise InputError(
                f"{source}: cannot load: {error} Check the id (--source); if it is private, "
                f"{hub.LOG_IN}"
            ) from None
        raise InputError(f"{source}: cannot load: {error}") from None


def _unknown(source: Source) -> bool:
    """Whether `source` names a config of FlashRAG's repo that is none of the sets we know (it
    may still be one of the repo's others): offline, a typo must not read as a network error."""
    return source.repo == FLASHRAG_REPO and source.config not in FLASHRAG_DATASETS


def _closest(name: str) -> str:
    meant = closest(name.lower(), [*FLASHRAG_DATASETS, *ALIASES])
    return f"did you mean {ALIASES.get(meant, meant)!r}? " if meant else ""


# ---------------------------------------------------------------------------------------------
# Checking rows


def check_rows(
    raw: datasets.Dataset, source: Source, skip_bad: bool = False
) -> tuple[datasets.Dataset, Counter[str]]:
    """The source's rows in the common shape, and the bad rows skipped, counted by reason.

    Without `skip_bad`, a bad row raises InputError naming the source, the row and the field.
    """
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "golden_answers": datasets.List(datasets.Value("string")),
            "data_source": datasets.Value("string"),
            _PROBLEM: datasets.Value("string"),
        }
    )
    checked = raw.map(
        _check_row,
        with_indices=True,
        fn_kwargs={
            "source": source,
            "jsonl": source.path is not None and source.path.suffix == ".jsonl",
        },
        remove_columns=raw.column_names,
        features=features,
        desc=f"Checking {source.name}",
    )
    problems = list(checked[_PROBLEM])
    bad = Counter(problem for problem in problems if problem and problem != _BLANK)
    if bad and not skip_bad:
        row = next(i for i, problem in enumerate(problems) if problem and problem != _BLANK)
        raise InputError(
            f"{source}: row {row + 1}: {problems[row]} ({_rows(bad.total())} bad in all; "
            "--skip-bad skips them)"
        )
    good = checked.filter(lambda problem: not problem, input_columns=_PROBLEM)
    if len(good) == 0:
        raise InputError(f"{source}: no usable rows")
    return good.remove_columns(_PROBLEM), bad


def _check_row(row: Mapping[str, Any], index: int, source: Source, jsonl: bool) -> dict[str, Any]:
    """One raw row in the common shape, or an empty row whose `_problem` says what is wrong."""
    try:
        record = _parse_line(row["text"]) if jsonl else row
        if "reward_model" in record and "golden_answers" not in record:
            original_id, question, answers, data_source = _search_r1_fields(record, source)
        else:
            original_id = _original_id(record.get("id"))
            question = _question(record.get("question"), "question")
            answers = _answers(record.get("golden_answers"), "golden_answers")
            data_source = source.name
    except InputError as problem:
        return {
            "id": "",
            "question": "",
            "golden_answers": [],
            "data_source": "",
            _PROBLEM: str(problem),
        }
    if original_id is None or original_id == "":
        original_id = index + 1
    return {
        "id": f"{data_source}-{source.split}-{original_id}",
        "question": question,
        "golden_answers": answers,
        "data_source": data_source,
        _PROBLEM: "",
    }


def _parse_line(line: str) -> dict[str, Any]:
    if not line.strip():
        raise InputError(_BLANK)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise InputError("not a JSON object")
    return record


def _search_r1_fields(record: Mapping[str, Any], source: Source) -> tuple[Any, str, list[str], str]:
    """Id, question, answers and data source of a row in Search-R1's training layout."""
    if record.get("question") is not None:
        question = _question(record["question"], "question")
    else:
        question = _question(_question_from_prompt(record.get("prompt")), "prompt")
    answers = _answers(
        _dig(record, "reward_model", "ground_truth", "target"), "reward_model.ground_truth.target"
    )
    original_id = _original_id(record.get("id", _dig(record, "extra_info", "index")))
    data_source = record.get("data_source")
    return original_id, question, answers, str(data_source) if data_source else source.name


def _original_id(value: Any) -> str | int | None:
    if value is not None and not isinstance(value, str | int):
        raise InputError("field 'id' must be a string or an integer")
    return value


def _question_from_prompt(prompt: Any) -> str | None:
    """The text after the last `Question:` of the prompt's last user turn (Search-R1's template)."""
    if isinstance(prompt, list):
        users = [
            m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"
        ]
        prompt = users[-1] if users else None
    if not isinstance(prompt, str):
        return None
    start = prompt.rfind("Question:")
    if start < 0:
        raise InputError("field 'prompt' has no 'Question: ...'")
    return prompt[start + len("Question:") :]


def _dig(record: Mapping[str, Any], *keys: str) -> Any:
    """`record[k1][k2]...`, or None where a level is missing or not a mapping."""
    value: Any = record
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _question(value: Any, name: str) -> str:
    if value is None:
        raise InputError(f"field {name!r} is missing")
    if not isinstance(value, str):
        raise InputError(f"field {name!r} must be a string")
    if not value.strip():
        raise InputError(f"field {name!r} is empty")
    return value.strip()


def _answers(value: Any, name: str) -> list[str]:
    if value is None:
        raise InputError(f"field {name!r} is missing")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(answer, str) for answer in value):
        raise InputError(f"field {name!r} must be a list of strings")
    if not value:
        raise InputError(f"field {name!r} is an empty list")
    if not all(answer.strip() for answer in value):
        raise InputError(f"field {name!r} holds an empty answer")
    return value


# ---------------------------------------------------------------------------------------------
# Sampling, merging, prompts


def sample_rows(dataset: datasets.Dataset, max_rows: int | None, seed: int) -> datasets.Dataset:
    """At most `max_rows` rows drawn with `seed`, kept in their original order."""
    if max_rows is None or len(dataset) <= max_rows:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), max_rows)))


def merge(parts: Sequence[datasets.Dataset]) -> datasets.Dataset:
    """One dataset of all sources, refused if two rows share an id."""
    merged = datasets.concatenate_datasets(list(parts))
    repeated = [(id_, n) for id_, n in Counter(merged["id"]).items() if n > 1]
    if repeated:
        shown = ", ".join(f"{id_!r} ({n} times)" for id_, n in repeated[:5])
        raise InputError(
            f"{len(repeated)} ids occur more than once: {shown}. Ids are "
            "{data_source}-{split}-{original id}: give each source its own name "
            "(NAME=PATH in --datasets) and each row its own id"
        )
    return merged


def add_prompts(dataset: datasets.Dataset, template: Template) -> datasets.Dataset:
    """The `prompt` the template renders for each question, and the template's name."""
    return dataset.map(
        lambda questions: {
            "prompt": [template.prompt(question) for question in questions],
            "template": [template.name] * len(questions),
        },
        input_columns="question",
        batched=True,
        desc=f"Prompts ({template.name})",
    )


def prepare(
    specs: Sequence[str],
    split: str,
    template: Template,
    source: str = FLASHRAG_REPO,
    skip_bad: bool = False,
    max_rows: int | None = None,
    seed: int = 0,
) -> tuple[datasets.Dataset, list[SourceSummary]]:
    """The merged, checked split with prompts, and what each source gave."""
    parts, summaries = [], []
    for spec in specs:
        found = find_source(spec, split, source)
        rows, skipped = check_rows(load_source(found), found, skip_bad)
        rows = sample_rows(rows, max_rows, seed)
        parts.append(rows)
        summaries.append(SourceSummary(found, len(rows), skipped))
    merged = add_prompts(merge(parts), template)
    return merged.select_columns(list(COLUMNS)), summaries


def write_split(dataset: datasets.Dataset, out_dir: Path, split: str) -> Path:
    """`out_dir/{split}.parquet`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{split}.parquet"
    dataset.to_parquet(str(path))
    return path


def load_split(dataset: str, split: str, key: str, config: str | None = None) -> datasets.Dataset:
    """A split prepare-data wrote: `{split}.parquet` in a local folder, or a split of a Hub
    dataset it pushed (`hf://datasets/ORG/NAME[@REV]`, `config` its config name). `key` is the
    recipe key naming the split, for messages."""
    if hub.is_hub_uri(dataset):
        location = hub.parse_uri(dataset)
        if location.repo_type != "dataset":
            raise InputError(
                f"dataset_name: {dataset} is not a dataset repo (hf://datasets/ORG/NAME)"
            )
        try:
            return datasets.load_dataset(
                location.repo_id, config, split=split, revision=location.revision
            )
        except ConnectionError as error:  # datasets' words, without the cause
            raise hub.unreachable(location, str(error)) from error
        except (DatasetNotFoundError, ValueError) as error:
            raise InputError(
                f"dataset_name: no split {split!r} ({key}) in {dataset}: {error}"
            ) from error
    path = Path(dataset) / f"{split}.parquet"
    if not path.is_file():
        raise InputError(f"dataset_name: no {split}.parquet ({key}) in {dataset}")
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def check_split(dataset: datasets.Dataset, split: str, template: Template) -> None:
    """The columns training reads, and the template the prompts were written with."""
    missing = {"id", "question", "prompt", "golden_answers"} - set(dataset.column_names)
    if missing:
        raise InputError(
            f"dataset_name: split {split!r} lacks columns {sorted(missing)} (has "
            f"{dataset.column_names}); write it with `research-r1 prepare-data`"
        )
    if len(dataset) == 0:
        raise InputError(f"dataset_name: split {split!r} is empty")
    if "template" in dataset.column_names:
        used = set(dataset.unique("template"))
        if used != {template.name}:
            raise InputError(
                f"template: the recipe says {template.name!r} but split {split!r} was prepared "
                f"with {sorted(used)}"
            )


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass
class PrepareDataArguments:
    """Load QA sets, check every row, add the template's prompt and write
    OUTPUT_DIR/{split}.parquet with columns id, question, golden_answers, data_source, prompt,
    template. Ids are {data_source}-{split}-{original id} and unique across the merged sources."""

    datasets: str = field(
        metadata={
            "help": "comma-separated: dataset names, i.e. configs of --source (FlashRAG: "
            f"{', '.join(FLASHRAG_DATASETS)}; aliases such as 2wiki work), local .jsonl/.parquet "
            "files (FlashRAG or Search-R1 layout) or hf:// file URIs; NAME=ENTRY sets the "
            "data_source name"
        }
    )
    output_dir: Path | None = field(
        default=None,
        metadata={
            "help": "output directory (default: outputs/data/NAMES, the sets' names joined by _)",
            "metavar": "DIR",
        },
    )
    split: str = field(default="train", metadata={"help": "train, dev or test"})
    template: str = field(
        default="search_r1",
        metadata={
            "help": "built-in template (search_r1, research_base, research_instruct) or a YAML file"
        },
    )
    source: str = field(
        default=FLASHRAG_REPO,
        metadata={
            "help": "Hub dataset repo (ORG/NAME or hf://datasets/ORG/NAME[@REV], one config per "
            "dataset), or a local directory laid out as NAME/SPLIT.jsonl"
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "also push the split there", "metavar": "ORG/NAME"}
    )
    private: bool = field(default=False, metadata={"help": "make a pushed repo private"})
    skip_bad: bool = field(default=False, metadata={"help": "skip bad rows and count them"})
    max_rows: int | None = field(
        default=None,
        metadata={
            "help": "at most N rows per source, sampled with --seed (default: all)",
            "metavar": "N",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for --max-rows sampling"})


def run_prepare_data(args: PrepareDataArguments) -> int:
    specs = [spec.strip() for spec in args.datasets.split(",") if spec.strip()]
    if not specs:
        raise InputError("--datasets names no dataset")
    if not _NAME.match(args.split):
        raise InputError(f"--split {args.split!r} is not a simple name")
    if args.max_rows is not None and args.max_rows < 1:
        raise InputError(f"--max_rows must be a positive integer, got {args.max_rows}")
    template = load_template(args.template)
    dataset, summaries = prepare(
        specs, args.split, template, args.source, args.skip_bad, args.max_rows, args.seed
    )
    output_dir = args.output_dir or default_output_dir(summaries)
    path = write_split(dataset, Path(output_dir), args.split)
    for summary in summaries:
        print(f"{summary.source.name}: {_rows(summary.rows)} from {summary.source}")
        for reason, count in summary.skipped.most_common():
            print(f"  skipped {count}: {reason}")
    print(f"wrote {_rows(len(dataset))} to {path}")
    if args.push_to_hub:
        hub.push_dataset(dataset, args.push_to_hub, split=args.split, private=args.private)
        print(f"pushed split {args.split!r} to {args.push_to_hub}")
    return 0


def default_output_dir(summaries: Sequence[SourceSummary]) -> Path:
    """`outputs/data/<names>`: the sets' names joined by `_` (`nq,hotpotqa`: nq_hotpotqa), so
    the train and test splits of one selection share a folder."""
    return outputs.output_dir(
        "data", outputs.folder_name("_".join(s.source.name for s in summaries))
    )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"
