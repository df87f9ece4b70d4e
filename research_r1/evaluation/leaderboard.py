"""leaderboard: merge evaluation runs into one leaderboard, one table per setting.

A number is only comparable to numbers measured the same way: the same metric, and the same
question sets, corpus, retriever, top-k and subset. `research-r1 eval` writes the latter into
one `config.setting` string, so rows are grouped by it and never ranked across it; a board shows
one metric (every name means one computation, `research_r1.evaluation.scoring.METRICS`), and a run
that does not report it is left out of that board. The papers' published numbers sit in the table of
their setting as `reported` rows, next to the `measured` runs that reproduce them.

A run file (`research-r1 eval` writes one per run) is JSON:
`{"config": {"model", "revision", "method", "setting", "date", ...}, "results": {DATASET:
{METRIC: value, "n": questions, "METRIC_ci95": [low, high], ...}}}`. Keys this module does not
read are allowed, since eval records every setting of the run.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from research_r1 import hub, outputs
from research_r1.data import FLASHRAG_DATASETS
from research_r1.errors import InputError, invalid
from research_r1.markdown import markdown_table

MEASURED = "measured"
REPORTED = "reported"
REPORTED_METRIC = "em"  # the papers' tables give exact match only
CSV_COLUMNS = (
    "setting",
    "model",
    "revision",
    "method",
    "kind",
    "source",
    "date",
    "dataset",
    "metric",
    "value",
    "n",
    "ci95_low",
    "ci95_high",
)
_HUB_PATTERNS = ("*.json", "**/*.json")
_MISSING = "—"


@dataclass(frozen=True)
class Score:
    """One dataset's number in a row; reported rows have no `n` or interval."""

    value: float
    n: int | None = None
    ci95: tuple[float, float] | None = None


@dataclass(frozen=True)
class Row:
    """One leaderboard row: a measured run or a paper's reported numbers, in one setting."""

    setting: str
    model: str
    method: str
    kind: str
    source: str
    scores: Mapping[str, Score]
    revision: str | None = None
    date: datetime | None = None

    @property
    def average(self) -> float:
        """Mean over the datasets this row has, which may be fewer than its table's."""
        return sum(score.value for score in self.scores.values()) / len(self.scores)

    @property
    def n(self) -> int | None:
        """Questions scored over all its datasets; None for reported rows."""
        counts = [score.n for score in self.scores.values()]
        return None if None in counts else sum(counts)

    @property
    def name(self) -> str:
        """The model as the tables show it: with the revision evaluated, when one was."""
        return f"{self.model}@{self.revision}" if self.revision else self.model


SEARCH_R1_SETTING = "search_r1 · wiki-18, e5-base-v2 · top-3"
RESEARCH_SETTING = "research · wiki-18, e5-base-v2 · top-5"
SEARCH_R1_PAPER = "Search-R1 paper v5 (arXiv:2503.09516)"
AUTOREFINE_PAPER = "AutoRefine paper (arXiv:2505.11277)"
RESEARCH_PAPER = "ReSearch paper (arXiv:2503.19470)"
_RESEARCH_DATASETS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def _reported(
    setting: str,
    source: str,
    datasets: Sequence[str],
    rows: Iterable[tuple[str, str, tuple[float, ...]]],
) -> list[Row]:
    return [
        Row(
            setting,
            model,
            method,
            REPORTED,
            source,
            {name: Score(value) for name, value in zip(datasets, values, strict=True)},
        )
        for model, method, values in rows
    ]


# The papers' exact-match numbers (as fractions), columns in FlashRAG dataset order.
REPORTED_ROWS: tuple[Row, ...] = (
    *_reported(
        SEARCH_R1_SETTING,
        SEARCH_R1_PAPER,
        FLASHRAG_DATASETS,
        [
            ("Qwen2.5-7B", "direct", (0.134, 0.408, 0.140, 0.183, 0.250, 0.031, 0.120)),
            ("Qwen2.5-7B", "rag", (0.349, 0.585, 0.392, 0.299, 0.235, 0.058, 0.208)),
            ("Qwen2.5-7B", "Search-R1 base PPO", (0.480, 0.638, 0.457, 0.433, 0.382, 0.196, 0.432)),
            (
                "Qwen2.5-7B",
                "Search-R1 instruct PPO",
                (0.393, 0.610, 0.397, 0.370, 0.414, 0.146, 0.368),
            ),
            (
                "Qwen2.5-7B",
                "Search-R1 base GRPO",
                (0.395, 0.560, 0.388, 0.326, 0.297, 0.125, 0.360),
            ),
            (
                "Qwen2.5-7B",
                "Search-R1 instruct GRPO",
                (0.429, 0.623, 0.427, 0.386, 0.346, 0.162, 0.400),
            ),
            ("Qwen2.5-3B", "direct", (0.106, 0.288, 0.108, 0.149, 0.244, 0.020, 0.024)),
            ("Qwen2.5-3B", "rag", (0.348, 0.544, 0.387, 0.255, 0.226, 0.047, 0.080)),
            ("Qwen2.5-3B", "Search-R1 base PPO", (0.406, 0.587, 0.435, 0.284, 0.273, 0.049, 0.088)),
            (
                "Qwen2.5-3B",
                "Search-R1 instruct PPO",
                (0.341, 0.545, 0.378, 0.324, 0.319, 0.103, 0.264),
            ),
            (
                "Qwen2.5-3B",
                "Search-R1 base GRPO",
                (0.421, 0.583, 0.413, 0.297, 0.274, 0.066, 0.128),
            ),
            (
                "Qwen2.5-3B",
                "Search-R1 instruct GRPO",
                (0.397, 0.565, 0.391, 0.331, 0.310, 0.124, 0.232),
            ),
        ],
    ),
    *_reported(
        SEARCH_R1_SETTING,
        AUTOREFINE_PAPER,
        FLASHRAG_DATASETS,
        [("Qwen2.5-7B", "AutoRefine base", (0.484, 0.659, 0.487, 0.451, 0.405, 0.187, 0.512))],
    ),
    *_reported(
        RESEARCH_SETTING,
        RESEARCH_PAPER,
        _RESEARCH_DATASETS,
        [
            ("Qwen2.5-7B", "ReSearch", (0.4057, 0.4467, 0.2168, 0.4320)),
            ("Qwen2.5-7B-Instruct", "ReSearch", (0.4352, 0.4759, 0.2230, 0.4240)),
            ("Qwen2.5-7B-Instruct", "naive RAG", (0.3190, 0.2578, 0.0621, 0.2080)),
        ],
    ),
)


class RunConfig(BaseModel):
    """The keys of a run's `config` the leaderboard reads; eval's other keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    model: str = Field(min_length=1)
    revision: str | None = None
    method: str = Field(min_length=1)
    setting: str = Field(min_length=1)
    date: datetime | None = None


@functools.cache
def _run_model(metric: str) -> type[BaseModel]:
    """A run file's schema for `metric`: every result must have it (a finite number) and `n`,
    so a bad file fails on its own key instead of showing up as a gap in the table."""
    score = create_model(
        "DatasetResult",
        __config__=ConfigDict(extra="allow", frozen=True, strict=True),
        n=(int, Field(ge=1)),
        value=(float, Field(alias=metric, allow_inf_nan=False)),
        ci95=(tuple[float, float] | None, Field(None, alias=f"{metric}_ci95")),
    )
    return create_model(
        "RunFile",
        __config__=ConfigDict(extra="allow", frozen=True, strict=True),
        config=(RunConfig, ...),
        results=(dict[str, score], Field(min_length=1)),
    )


def read_run(data: bytes, source: str, metric: str = "em") -> Row | None:
    """The measured row of one run file's bytes, or None when the run reports other metrics
    than `metric`; `source` names the file in errors and rows."""
    try:
        results = json.loads(data).get("results")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        results = None  # validation below names what is wrong
    if (
        isinstance(results, dict)
        and results
        and all(isinstance(r, dict) and metric not in r for r in results.values())
    ):
        return None
    try:
        run = _run_model(metric).model_validate_json(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InputError(f"{source}: not JSON ({first['ctx']['error']})") from error
        raise invalid(error, source) from error
    config = run.config
    return Row(
        config.setting,
        config.model,
        config.method,
        MEASURED,
        source,
        {name: Score(result.value, result.n, result.ci95) for name, result in run.results.items()},
        config.revision,
        config.date,
    )


def load_runs(sources: Sequence[str], metric: str = "em") -> list[Row]:
    """The runs reporting `metric` of every source: a run file, a folder (every `*.json` below
    it) or a Hub results dataset `hf://datasets/ORG/NAME[@REV][/path]` (every `*.json` in
    it)."""
    found: list[Row | None] = []
    for source in sources:
        path = hub.resolve(source, allow_patterns=_HUB_PATTERNS)
        if path.is_file():
            found.append(read_run(path.read_bytes(), str(source), metric))
            continue
        files = sorted(path.rglob("*.json"))
        if not files:
            raise InputError(f"{source}: no *.json run files in it")
        for file in files:
            relative = file.relative_to(path).as_posix()
            name = f"{str(source).rstrip('/')}/{relative}"
            found.append(read_run(file.read_bytes(), name, metric))
    return [row for row in found if row is not None]


def _dataset_order(name: str) -> tuple[int, str]:
    """FlashRAG's order (the papers' column order), then other datasets by name."""
    known = name in FLASHRAG_DATASETS
    return (FLASHRAG_DATASETS.index(name) if known else len(FLASHRAG_DATASETS), name)


def _row_order(row: Row) -> tuple[float, str, str, str, str, str]:
    date = row.date.isoformat() if row.date else ""
    return (-row.average, row.model, row.method, row.kind, date, row.source)


def sections(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows grouped by setting (settings sorted), each group best average first."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.setting, []).append(row)
    return {setting: sorted(grouped[setting], key=_row_order) for setting in sorted(grouped)}


def datasets_of(rows: Iterable[Row]) -> list[str]:
    return sorted({name for row in rows for name in row.scores}, key=_dataset_order)


def _ranks(rows: Sequence[Row]) -> list[int]:
    """1 for the best average; rows whose averages read the same share a rank."""
    shown = [round(row.average, 3) for row in rows]
    return [1 + sum(other > value for other in shown) for value in shown]


def _average_text(row: Row, datasets: Sequence[str]) -> str:
    """The average, with the number of datasets it is over when the row lacks some."""
    text = f"{row.average:.3f}"
    return text if len(row.scores) == len(datasets) else f"{text} ({len(row.scores)})"


def markdown(board: Mapping[str, Sequence[Row]], metric: str = "em") -> str:
    """The leaderboard as markdown: one section per setting, headed by the setting string."""
    lines = [
        f"# Leaderboard: {metric}",
        "",
        "Rows are ranked only against rows of the same setting. `measured`: a run of "
        "`research-r1 eval`; `reported`: a paper's published numbers. Search-R1's and "
        "AutoRefine's evaluation code samples at temperature 1 where it means to decode "
        "greedily, so their agents' reported rows are one sampled draw (`research-r1 eval "
        "MODEL --dry-run` shows each family's decoding).",
    ]
    for setting, rows in board.items():
        datasets = datasets_of(rows)
        columns = ["rank", "model", "method", "kind", *datasets, "average", "n", "date", "source"]
        cells = [
            [
                rank,
                row.name,
                row.method,
                row.kind,
                *(
                    f"{row.scores[name].value:.3f}" if name in row.scores else _MISSING
                    for name in datasets
                ),
                _average_text(row, datasets),
                _MISSING if row.n is None else row.n,
                row.date.date().isoformat() if row.date else _MISSING,
                row.source,
            ]
            for rank, row in zip(_ranks(rows), rows, strict=True)
        ]
        right = {"rank", *datasets, "average", "n"}
        lines += ["", f"## {setting}", "", markdown_table(columns, cells, right)]
        if any(len(row.scores) < len(datasets) for row in rows):
            lines += [
                "",
                f"{_MISSING}: not in that row. An average followed by (k) is over the k "
                "datasets its row has.",
            ]
    return "\n".join(lines) + "\n"


def table(board: Mapping[str, Sequence[Row]]) -> list[dict[str, Any]]:
    """The leaderboard as records for a sortable table (the app's tab): one per row, with its
    setting and rank in it, a column per dataset (None where the row has none)."""
    datasets = datasets_of(row for rows in board.values() for row in rows)
    return [
        {
            "setting": setting,
            "rank": rank,
            "model": row.name,
            "method": row.method,
            "kind": row.kind,
            **{name: row.scores[name].value if name in row.scores else None for name in datasets},
            "average": round(row.average, 4),
            "n": row.n,
        }
        for setting, rows in board.items()
        for rank, row in zip(_ranks(rows), rows, strict=True)
    ]


def write_csv(board: Mapping[str, Sequence[Row]], path: Path, metric: str = "em") -> Path:
    """One line per (row, dataset), in the tables' order, values unrounded."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for setting, rows in board.items():
            datasets = datasets_of(rows)
            for row in rows:
                for name in (name for name in datasets if name in row.scores):
                    score = row.scores[name]
                    low, high = score.ci95 or ("", "")
                    writer.writerow(
                        [
                            setting,
                            row.model,
                            row.revision or "",
                            row.method,
                            row.kind,
                            row.source,
                            row.date.isoformat() if row.date else "",
                            name,
                            metric,
                            score.value,
                            "" if score.n is None else score.n,
                            low,
                            high,
                        ]
                    )
    return path


def chart(board: Mapping[str, Sequence[Row]], metric: str = "em") -> Figure:
    """One horizontal bar chart of the averages per setting; reported bars are hatched. Every
    axis starts at 0, also where every score is 0 (a random model's)."""
    heights = [len(rows) for rows in board.values()]  # bars, plus 0.9 in per chart for text
    figure = Figure(figsize=(11, 0.5 + sum(0.32 * n + 0.9 for n in heights)), layout="constrained")
    axes = figure.subplots(len(board), 1, squeeze=False, height_ratios=heights)[:, 0]
    style = {
        MEASURED: {"facecolor": "tab:blue"},
        REPORTED: {"facecolor": "0.88", "edgecolor": "0.35", "hatch": "///"},
    }
    for axis, (setting, rows) in zip(axes, board.items(), strict=True):
        datasets = datasets_of(rows)
        positions = range(len(rows))
        for position, row in zip(positions, rows, strict=True):
            axis.barh(position, row.average, height=0.7, **style[row.kind])
            axis.text(
                row.average,
                position,
                f" {_average_text(row, datasets)}",
                va="center",
                fontsize=9,
            )
        labels = [
            " · ".join([row.name, row.method, *([f"{row.date:%Y-%m-%d}"] if row.date else [])])
            for row in rows
        ]
        axis.set_yticks(list(positions), labels, fontsize=9)
        axis.set_ylim(len(rows) - 0.4, -0.6)  # best on top; one bar as thick in every chart
        axis.set_xlim(0, max(max(row.average for row in rows) * 1.18, 0.1))
        plural = "s" if len(datasets) > 1 else ""
        axis.set_title(f"{setting}  ({len(datasets)} dataset{plural})", loc="left", fontsize=11)
        axis.set_xlabel(f"average {metric}; one followed by (k) is over the k datasets its row has")
        axis.spines[["top", "right"]].set_visible(False)
    figure.legend(
        [Patch(**style[MEASURED]), Patch(**style[REPORTED])],
        [f"{MEASURED} (a run)", f"{REPORTED} (a paper's number)"],
        loc="outside upper right",
        ncols=2,
    )
    return figure


def plot(board: Mapping[str, Sequence[Row]], path: Path, metric: str = "em") -> Path:
    chart(board, metric).savefig(path, dpi=110)
    return path


@dataclass
class LeaderboardArguments:
    """Merge evaluation runs (and the papers' reported numbers) into OUTPUT_DIR/leaderboard.md,
    .csv and .png: one table per setting, so numbers from different corpora, retrievers, top-k or
    metrics are never ranked together."""

    sources: list[str] = field(
        metadata={
            "positional": True,
            "metavar": "SOURCE",
            "help": "a run file (results.json), a folder (every *.json below it) or a Hub "
            "results dataset hf://datasets/ORG/NAME[@REV] (every *.json in it)",
        }
    )
    output_dir: Path | None = field(
        default=None,
        metadata={"metavar": "DIR", "help": "output directory (default: outputs/leaderboard)"},
    )
    no_reported: bool = field(
        default=False, metadata={"help": "leave out the papers' reported numbers"}
    )
    metric: str = field(
        default="em",
        metadata={
            "help": "the metric the tables show; every result must have it; the papers' numbers "
            f"are {REPORTED_METRIC} only"
        },
    )


def run_leaderboard(args: LeaderboardArguments) -> int:
    rows = load_runs(args.sources, args.metric)
    if not args.no_reported and args.metric == REPORTED_METRIC:
        rows += REPORTED_ROWS
    board = sections(rows)
    out = Path(args.output_dir or outputs.output_dir("leaderboard"))
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(board, args.metric)
    (out / "leaderboard.md").write_text(text)
    write_csv(board, out / "leaderboard.csv", args.metric)
    plot(board, out / "leaderboard.png", args.metric)
    print(text)
    print(f"wrote leaderboard.md, leaderboard.csv and leaderboard.png to {out}")
    return 0
