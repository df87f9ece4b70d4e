"""`research-r1 leaderboard` (research_r1.evaluation.leaderboard): runs from files, folders and
the Hub merged with the papers' numbers, one table per setting."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from research_r1.cli import parse
from research_r1.errors import InputError
from research_r1.evaluation.leaderboard import (
    REPORTED_ROWS,
    SEARCH_R1_SETTING,
    chart,
    load_runs,
    sections,
)

BM25_SETTING = "search_r1 · wiki-18, bm25 · top-3"
FULL = {  # dataset: (em, n)
    "nq": (0.5, 3610),
    "triviaqa": (0.65, 11313),
    "popqa": (0.46, 14267),
    "hotpotqa": (0.44, 7405),
    "2wikimultihopqa": (0.4, 12576),
    "musique": (0.2, 2417),
    "bamboogle": (0.44, 125),
}


def run_json(
    model: str, setting: str, scores: dict[str, tuple[float, int]], date: str, **config: object
) -> dict:
    """A run file as `research-r1 eval` writes it, with keys the leaderboard does not read."""
    results = {name: {"em": em, "f1": em + 0.1, "n": n} for name, (em, n) in scores.items()}
    return {
        "config": {
            "model": model,
            "revision": None,
            "family": "search_r1",
            "method": "agent",
            "setting": setting,
            "k": 3,
            "metric": "em",
            "retriever": {"config": "retriever.yaml", "type": "dense"},
            "date": date,
            **config,
        },
        "results": results,
    }


RUN_7B = run_json("org/searcher-7b", SEARCH_R1_SETTING, FULL, "2026-11-29T18:00:00+00:00")
RUN_7B["config"]["revision"] = "step-200"
RUN_7B["results"]["nq"]["em_ci95"] = [0.484, 0.516]
RUN_3B = run_json(
    "org/searcher-3b",
    SEARCH_R1_SETTING,
    {"nq": (0.42, 3610), "bamboogle": (0.2, 125)},
    "2026-11-30T09:30:00+00:00",
)
RUN_BM25 = run_json("org/searcher-7b", BM25_SETTING, {"nq": (0.4, 3610)}, "2026-12-01T00:00:00Z")


def write(path: Path, content: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def leaderboard(*argv: str) -> int:
    """`research-r1 leaderboard ARGV`, its errors raised rather than printed."""
    run, args = parse(["leaderboard", *argv])
    return run(args)


def section(markdown: str, setting: str) -> list[str]:
    """The lines of the section headed by `setting`, up to the next section."""
    text = markdown.split(f"## {setting}\n", 1)[1].split("\n## ", 1)[0]
    return text.strip().splitlines()


def three_runs(tmp_path: Path) -> list[str]:
    return [
        str(write(tmp_path / "runs" / "7b.json", RUN_7B)),
        str(write(tmp_path / "runs" / "3b.json", RUN_3B)),
        str(write(tmp_path / "runs" / "bm25.json", RUN_BM25)),
    ]


def test_runs_share_a_table_with_the_papers_only_in_their_own_setting(tmp_path, capsys) -> None:
    out = tmp_path / "board"
    run_7b, run_3b, run_bm25 = three_runs(tmp_path)

    assert leaderboard(run_7b, run_3b, run_bm25, "--output_dir", str(out)) == 0

    markdown = (out / "leaderboard.md").read_text()
    wrote = f"wrote leaderboard.md, leaderboard.csv and leaderboard.png to {out}"
    assert capsys.readouterr().out == f"{markdown}\n{wrote}\n"
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == [
        "## research · wiki-18, e5-base-v2 · top-5",
        f"## {BM25_SETTING}",
        f"## {SEARCH_R1_SETTING}",
    ]
    sr1 = "| — | — | Search-R1 paper v5 (arXiv:2503.09516) |"
    assert section(markdown, SEARCH_R1_SETTING) == [
        "| rank | model | method | kind | nq | triviaqa | popqa | hotpotqa | 2wikimultihopqa "
        "| musique | bamboogle | average | n | date | source |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        "| 1 | Qwen2.5-7B | AutoRefine base | reported "
        "| 0.484 | 0.659 | 0.487 | 0.451 | 0.405 | 0.187 | 0.512 | 0.455 "
        "| — | — | AutoRefine paper (arXiv:2505.11277) |",
        "| 2 | org/searcher-7b@step-200 | agent | measured "
        "| 0.500 | 0.650 | 0.460 | 0.440 | 0.400 | 0.200 | 0.440 | 0.441 "
        f"| 51713 | 2026-11-29 | {run_7b} |",
        "| 3 | Qwen2.5-7B | Search-R1 base PPO | reported "
        f"| 0.480 | 0.638 | 0.457 | 0.433 | 0.382 | 0.196 | 0.432 | 0.431 {sr1}",
        "| 4 | Qwen2.5-7B | Search-R1 instruct GRPO | reported "
        f"| 0.429 | 0.623 | 0.427 | 0.386 | 0.346 | 0.162 | 0.400 | 0.396 {sr1}",
        "| 5 | Qwen2.5-7B | Search-R1 instruct PPO | reported "
        f"| 0.393 | 0.610 | 0.397 | 0.370 | 0.414 | 0.146 | 0.368 | 0.385 {sr1}",
        "| 6 | Qwen2.5-7B | Search-R1 base GRPO | reported "
        f"| 0.395 | 0.560 | 0.388 | 0.326 | 0.297 | 0.125 | 0.360 | 0.350 {sr1}",
        "| 7 | Qwen2.5-3B | Search-R1 instruct GRPO | reported "
        f"| 0.397 | 0.565 | 0.391 | 0.331 | 0.310 | 0.124 | 0.232 | 0.336 {sr1}",
        "| 8 | Qwen2.5-3B | Search-R1 instruct PPO | reported "
        f"| 0.341 | 0.545 | 0.378 | 0.324 | 0.319 | 0.103 | 0.264 | 0.325 {sr1}",
        "| 9 | Qwen2.5-3B | Search-R1 base GRPO | reported "
        f"| 0.421 | 0.583 | 0.413 | 0.297 | 0.274 | 0.066 | 0.128 | 0.312 {sr1}",
        "| 10 | org/searcher-3b | agent | measured "
        f"| 0.420 | — | — | — | — | — | 0.200 | 0.310 (2) | 3735 | 2026-11-30 | {run_3b} |",
        "| 11 | Qwen2.5-7B | rag | reported "
        f"| 0.349 | 0.585 | 0.392 | 0.299 | 0.235 | 0.058 | 0.208 | 0.304 {sr1}",
        "| 12 | Qwen2.5-3B | Search-R1 base PPO | reported "
        f"| 0.406 | 0.587 | 0.435 | 0.284 | 0.273 | 0.049 | 0.088 | 0.303 {sr1}",
        "| 13 | Qwen2.5-3B | rag | reported "
        f"| 0.348 | 0.544 | 0.387 | 0.255 | 0.226 | 0.047 | 0.080 | 0.270 {sr1}",
        "| 14 | Qwen2.5-7B | direct | reported "
        f"| 0.134 | 0.408 | 0.140 | 0.183 | 0.250 | 0.031 | 0.120 | 0.181 {sr1}",
        "| 15 | Qwen2.5-3B | direct | reported "
        f"| 0.106 | 0.288 | 0.108 | 0.149 | 0.244 | 0.020 | 0.024 | 0.134 {sr1}",
        "",
        "—: not in that row. An average followed by (k) is over the k datasets its row has.",
    ]
    # The BM25 run is ranked alone, never against the paper's dense-retrieval numbers.
    assert section(markdown, BM25_SETTING) == [
        "| rank | model | method | kind | nq | average | n | date | source |",
        "|---:|---|---|---|---:|---:|---:|---|---|",
        "| 1 | org/searcher-7b | agent | measured | 0.400 | 0.400 | 3610 | 2026-12-01 "
        f"| {run_bm25} |",
    ]
    assert section(markdown, "research · wiki-18, e5-base-v2 · top-5")[2:] == [
        "| 1 | Qwen2.5-7B-Instruct | ReSearch | reported | 0.435 | 0.476 | 0.223 | 0.424 | 0.390 "
        "| — | — | ReSearch paper (arXiv:2503.19470) |",
        "| 2 | Qwen2.5-7B | ReSearch | reported | 0.406 | 0.447 | 0.217 | 0.432 | 0.375 "
        "| — | — | ReSearch paper (arXiv:2503.19470) |",
        "| 3 | Qwen2.5-7B-Instruct | naive RAG | reported | 0.319 | 0.258 | 0.062 | 0.208 | 0.212 "
        "| — | — | ReSearch paper (arXiv:2503.19470) |",
    ]

    with (out / "leaderboard.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == [
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
    ]
    run = [SEARCH_R1_SETTING, "org/searcher-3b", "", "agent", "measured", run_3b]
    assert [row for row in rows if row[5] == run_3b] == [
        [*run, "2026-11-30T09:30:00+00:00", "nq", "em", "0.42", "3610", "", ""],
        [*run, "2026-11-30T09:30:00+00:00", "bamboogle", "em", "0.2", "125", "", ""],
    ]
    run = [SEARCH_R1_SETTING, "org/searcher-7b", "step-200", "agent", "measured", run_7b]
    assert [row for row in rows if row[5] == run_7b and row[7] == "nq"] == [
        [*run, "2026-11-29T18:00:00+00:00", "nq", "em", "0.5", "3610", "0.484", "0.516"]
    ]
    assert len(rows) == 1 + 7 + 2 + 1 + 13 * 7 + 3 * 4

    png = (out / "leaderboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 800
    assert len(png) > 50_000


def test_no_reported_leaves_only_the_runs(tmp_path) -> None:
    out = tmp_path / "board"
    run_7b, run_3b, run_bm25 = three_runs(tmp_path)

    assert leaderboard(run_7b, run_3b, run_bm25, "--output_dir", str(out), "--no-reported") == 0

    markdown = (out / "leaderboard.md").read_text()
    assert "reported |" not in markdown
    assert "paper" not in (out / "leaderboard.csv").read_text()
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == [
        f"## {BM25_SETTING}",
        f"## {SEARCH_R1_SETTING}",
    ]
    assert [line.split(" | ")[:3] for line in section(markdown, SEARCH_R1_SETTING)[2:4]] == [
        ["| 1", "org/searcher-7b@step-200", "agent"],
        ["| 2", "org/searcher-3b", "agent"],
    ]


def test_every_axis_starts_at_zero_even_when_every_score_is_zero(tmp_path) -> None:
    zero = run_json("org/random", BM25_SETTING, {"bamboogle": (0.0, 125)}, "2026-11-29T00:00:00Z")
    board = sections(load_runs([str(write(tmp_path / "zero.json", zero))]))
    [axis] = chart(board).axes
    assert axis.get_xlim() == (0.0, 0.1)
    assert [text.get_text() for text in axis.texts] == [" 0.000"]


def test_metric_picks_the_column_and_drops_the_papers_em(tmp_path) -> None:
    out = tmp_path / "board"
    run_7b, run_3b, _ = three_runs(tmp_path)

    assert leaderboard(run_7b, run_3b, "--output_dir", str(out), "--metric", "f1") == 0

    markdown = (out / "leaderboard.md").read_text()
    assert markdown.startswith("# Leaderboard: f1\n")
    assert "reported |" not in markdown
    assert section(markdown, SEARCH_R1_SETTING)[3].startswith(
        "| 2 | org/searcher-3b | agent | measured | 0.520 | — |"
    )
    assert {row["metric"] for row in csv.DictReader((out / "leaderboard.csv").open())} == {"f1"}


def test_a_folder_source_reads_every_run_file_below_it(tmp_path) -> None:
    runs = tmp_path / "runs"
    write(runs / "a" / "results.json", RUN_7B)
    write(runs / "b" / "nested" / "run-3b.json", RUN_3B)
    out = tmp_path / "board"

    assert leaderboard(str(runs), "--output_dir", str(out), "--no-reported") == 0

    sources = [row["source"] for row in csv.DictReader((out / "leaderboard.csv").open())]
    assert sorted(set(sources)) == [f"{runs}/a/results.json", f"{runs}/b/nested/run-3b.json"]


def test_a_hub_results_dataset_is_a_source_at_its_revision(hub, tmp_path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id("eval-results")
    api.create_repo(repo_id, repo_type="dataset")

    def upload(run: dict, path_in_repo: str) -> str:
        data = json.dumps(run).encode()
        return api.upload_file(
            path_or_fileobj=data, path_in_repo=path_in_repo, repo_id=repo_id, repo_type="dataset"
        ).oid

    first = upload(RUN_7B, "searcher-7b/results.json")
    upload(RUN_BM25, "bm25.json")
    out = tmp_path / "board"

    assert leaderboard(f"hf://datasets/{repo_id}", "--output_dir", str(out), "--no-reported") == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert sorted({(row["setting"], row["source"]) for row in rows}) == [
        (BM25_SETTING, f"hf://datasets/{repo_id}/bm25.json"),
        (SEARCH_R1_SETTING, f"hf://datasets/{repo_id}/searcher-7b/results.json"),
    ]

    assert leaderboard(f"hf://datasets/{repo_id}@{first}", "--output_dir", str(out)) == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert {row["source"] for row in rows if row["kind"] == "measured"} == {
        f"hf://datasets/{repo_id}@{first}/searcher-7b/results.json"
    }


def without(run: dict, *keys: str) -> dict:
    """`run` with the key at the dotted path `keys` removed."""
    run = json.loads(json.dumps(run))
    *parents, last = keys
    inner = run
    for key in parents:
        inner = inner[key]
    del inner[last]
    return run


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"config": {"model": "m"', "not JSON (EOF while parsing an object"),
        (without(RUN_7B, "config", "setting"), "key 'config.setting': Field required"),
        (without(RUN_7B, "results", "musique", "em"), "key 'results.musique.em': Field required"),
        (without(RUN_7B, "results", "nq", "n"), "key 'results.nq.n': Field required"),
    ],
)
def test_a_bad_run_file_is_named_with_its_key(tmp_path, content, named) -> None:
    path = write(tmp_path / "runs" / "sub" / "bad.json", content)

    for source, name in ((path, path), (tmp_path / "runs", f"{tmp_path}/runs/sub/bad.json")):
        with pytest.raises(InputError) as error:
            leaderboard(str(source), "--output_dir", str(tmp_path / "board"))
        assert str(error.value).startswith(f"{name}: {named}")
    assert not (tmp_path / "board").exists()


def test_a_folder_without_run_files_is_an_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no \*\.json run files in it"):
        leaderboard(str(tmp_path / "empty"), "--output_dir", str(tmp_path / "board"))


def test_a_board_shows_one_metric_and_leaves_out_runs_that_report_others(tmp_path):
    """A ZeroSearch-style run reports substring EM, not EM: it is left out of the EM board
    (where the papers' EM rows are) and is the only row of the substring-EM board, where no
    paper's EM number is ranked beside it."""
    subem = run_json("org/zerosearch", SEARCH_R1_SETTING, FULL, "2026-12-02T00:00:00Z")
    subem["results"] = {
        name: {"subem": r["em"], "f1": r["f1"], "n": r["n"]} for name, r in subem["results"].items()
    }
    runs = tmp_path / "runs"
    write(runs / "7b.json", RUN_7B)
    write(runs / "zs.json", subem)
    em_board = sections(load_runs([str(runs)]) + list(REPORTED_ROWS))
    assert "org/zerosearch" not in {row.model for rows in em_board.values() for row in rows}
    subem_board = sections(load_runs([str(runs)], metric="subem"))
    assert [(row.model, row.kind) for row in subem_board[SEARCH_R1_SETTING]] == [
        ("org/zerosearch", "measured")
    ]
    f1_rows = sections(load_runs([str(runs)], metric="f1"))[SEARCH_R1_SETTING]
    assert {row.model for row in f1_rows} == {"org/searcher-7b", "org/zerosearch"}
    out = tmp_path / "board"
    assert leaderboard(str(runs), "--metric", "subem", "--output_dir", str(out)) == 0
    assert "| reported |" not in (out / "leaderboard.md").read_text()  # the papers': EM only
