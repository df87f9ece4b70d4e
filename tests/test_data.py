"""`research-r1 prepare-data` (research_r1.data): QA sets from jsonl, parquet (FlashRAG and
Search-R1 layouts) and the Hub, and a prepared split read back from a folder or the Hub."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest
from helpers import write_jsonl
from huggingface_hub import constants

from research_r1.cli import main
from research_r1.data import COLUMNS, find_source, load_source, load_split, prepare, write_split
from research_r1.errors import InputError, Unreachable
from research_r1.hub import push_dataset
from research_r1.protocol import SEARCH_R1_PROMPT, load_template

SEARCH_R1 = load_template("search_r1")
ROWS = [
    {
        "id": "1",
        "question": "who wrote hamlet?",
        "golden_answers": ["Shakespeare"],
        "metadata": {"type": "person"},
    },
    {"id": "2", "question": "capital of france?", "golden_answers": ["Paris", "paris"]},
    {"question": "  tallest mountain? ", "golden_answers": ["Everest"]},
]


def read_split(path: Path) -> list[dict]:
    return datasets.Dataset.from_parquet(str(path)).to_list()


def test_prepare_data_writes_checked_rows_with_prompts(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "nq" / "train.jsonl", ROWS)
    out = tmp_path / "out"

    assert main(["prepare-data", "--datasets", str(source), "--output_dir", str(out)]) == 0

    table = datasets.Dataset.from_parquet(str(out / "train.parquet"))
    assert table.column_names == list(COLUMNS)
    rows = table.to_list()
    assert [row["id"] for row in rows] == ["nq-train-1", "nq-train-2", "nq-train-3"]
    assert [row["question"] for row in rows] == [
        "who wrote hamlet?",
        "capital of france?",
        "tallest mountain?",
    ]
    assert [row["golden_answers"] for row in rows] == [
        ["Shakespeare"],
        ["Paris", "paris"],
        ["Everest"],
    ]
    assert {row["data_source"] for row in rows} == {"nq"}
    assert {row["template"] for row in rows} == {"search_r1"}
    assert rows[0]["prompt"] == [
        {"role": "user", "content": SEARCH_R1_PROMPT.replace("{question}", "who wrote hamlet?")}
    ]
    assert [row["prompt"] for row in rows] == [SEARCH_R1.prompt(row["question"]) for row in rows]


def test_ids_are_stable_and_plain_text_templates_give_text_prompts(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "set.jsonl", ROWS)
    template = load_template("research_base")

    first, _ = prepare([str(source)], "test", template)
    again, _ = prepare([str(source)], "test", template)

    assert first["id"][:] == again["id"][:] == ["set-test-1", "set-test-2", "set-test-3"]
    assert first["prompt"][:] == [template.prompt(q) for q in first["question"]]
    assert first["prompt"][0].endswith(" User: who wrote hamlet?. Assistant:")


def test_sources_with_the_same_original_ids_merge_without_collisions(tmp_path: Path) -> None:
    nq = write_jsonl(tmp_path / "nq.jsonl", ROWS[:2])
    hotpot = write_jsonl(tmp_path / "hotpotqa.jsonl", ROWS[:2])

    merged, summaries = prepare([str(nq), str(hotpot)], "train", SEARCH_R1)

    assert merged["id"][:] == ["nq-train-1", "nq-train-2", "hotpotqa-train-1", "hotpotqa-train-2"]
    assert merged["data_source"][:] == ["nq", "nq", "hotpotqa", "hotpotqa"]
    assert [(s.source.name, s.rows) for s in summaries] == [("nq", 2), ("hotpotqa", 2)]


def test_the_same_file_twice_collides_unless_renamed(tmp_path: Path) -> None:
    source = str(write_jsonl(tmp_path / "qa.jsonl", ROWS[:2]))

    with pytest.raises(InputError, match=r"2 ids occur more than once: 'qa-train-1' \(2 times\)"):
        prepare([source, source], "train", SEARCH_R1)

    merged, _ = prepare([f"a={source}", f"b={source}"], "train", SEARCH_R1)
    assert merged["id"][:] == ["a-train-1", "a-train-2", "b-train-1", "b-train-2"]


def test_search_r1_parquet_layout_is_read_back(tmp_path: Path) -> None:
    def row(source: str, index: int, question: str, answers: list[str]) -> dict:
        return {
            "data_source": source,
            "prompt": SEARCH_R1.prompt(question),
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
            "extra_info": {"split": "train", "index": index},
        }

    # Search-R1 numbers rows per source: both sources have an index 0.
    path = tmp_path / "search_r1" / "train.parquet"
    path.parent.mkdir()
    datasets.Dataset.from_list(
        [
            row("nq", 0, "who wrote hamlet?", ["Shakespeare"]),
            row("hotpotqa", 0, "Question: which is older?", ["Oxford", "oxford university"]),
            row("nq", 1, "capital of france?", ["Paris"]),
        ]
    ).to_parquet(str(path))
    with_column = tmp_path / "with_question.parquet"
    datasets.Dataset.from_list(
        [{**row("popqa", 7, "ignored", ["x"]), "question": "what is popqa?"}]
    ).to_parquet(str(with_column))

    merged, summaries = prepare([str(path), str(with_column)], "train", SEARCH_R1)

    assert merged.to_list() == [
        {
            "id": id_,
            "question": question,
            "golden_answers": answers,
            "data_source": source,
            "prompt": SEARCH_R1.prompt(question),
            "template": "search_r1",
        }
        for id_, question, answers, source in [
            ("nq-train-0", "who wrote hamlet?", ["Shakespeare"], "nq"),
            ("hotpotqa-train-0", "which is older?", ["Oxford", "oxford university"], "hotpotqa"),
            ("nq-train-1", "capital of france?", ["Paris"], "nq"),
            ("popqa-train-7", "what is popqa?", ["x"], "popqa"),
        ]
    ]
    assert [s.source.name for s in summaries] == ["search_r1", "with_question"]


GOOD = {"question": "q?", "golden_answers": ["a"]}
BAD_ROWS = [
    ({"id": "x", "golden_answers": ["a"]}, "field 'question' is missing"),
    ({"question": " ", "golden_answers": ["a"]}, "field 'question' is empty"),
    ({"question": 3, "golden_answers": ["a"]}, "field 'question' must be a string"),
    ({"question": "q?"}, "field 'golden_answers' is missing"),
    ({"question": "q?", "golden_answers": []}, "field 'golden_answers' is an empty list"),
    (
        {"question": "q?", "golden_answers": [1984]},
        "field 'golden_answers' must be a list of strings",
    ),
    (
        {"question": "q?", "golden_answers": {"a": 1}},
        "field 'golden_answers' must be a list of strings",
    ),
    (
        {"question": "q?", "golden_answers": ["a", " "]},
        "field 'golden_answers' holds an empty answer",
    ),
    (
        {"id": [1], "question": "q?", "golden_answers": ["a"]},
        "field 'id' must be a string or an integer",
    ),
    ('{"question": "q?", "golden_answers": ["a"]', "not valid JSON (Expecting ',' delimiter)"),
    ('["q?", ["a"]]', "not a JSON object"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD_ROWS, ids=[p for _, p in BAD_ROWS])
def test_a_bad_row_names_the_file_row_and_field(
    tmp_path: Path, bad: dict | str, problem: str
) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [GOOD, GOOD, bad, GOOD])

    with pytest.raises(InputError) as error:
        prepare([str(path)], "train", SEARCH_R1)

    assert str(error.value) == f"{path}: row 3: {problem} (1 row bad in all; --skip-bad skips them)"


def test_skip_bad_skips_and_counts_each_reason(tmp_path: Path) -> None:
    rows = [
        GOOD,
        *(bad for bad, _ in BAD_ROWS),
        "",
        {"question": "last?", "golden_answers": "Paris"},
    ]
    rows.insert(5, BAD_ROWS[0][0])  # a second row missing its question
    path = write_jsonl(tmp_path / "qa.jsonl", rows)

    merged, summaries = prepare([str(path)], "train", SEARCH_R1, skip_bad=True)

    # The blank line is ignored, not counted; row numbers still count it (ids below).
    expected = Counter(problem for _, problem in BAD_ROWS)
    expected["field 'question' is missing"] += 1
    assert summaries[0].skipped == expected
    assert summaries[0].rows == 2
    # A bare string answer is taken as a one-answer list.
    assert merged.select_columns(["id", "question", "golden_answers"]).to_list() == [
        {"id": "qa-train-1", "question": "q?", "golden_answers": ["a"]},
        {"id": f"qa-train-{len(rows)}", "question": "last?", "golden_answers": ["Paris"]},
    ]


def test_a_source_without_usable_rows_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q?"}])

    with pytest.raises(InputError, match=r"qa.jsonl: no usable rows"):
        prepare([str(path)], "train", SEARCH_R1, skip_bad=True)


def test_max_rows_draws_a_seeded_sample_in_order(tmp_path: Path) -> None:
    rows = [{"id": str(i), "question": f"q{i}?", "golden_answers": [str(i)]} for i in range(20)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)

    first, summaries = prepare([str(path)], "train", SEARCH_R1, max_rows=5, seed=3)
    again, _ = prepare([str(path)], "train", SEARCH_R1, max_rows=5, seed=3)

    numbers = [int(id_.rsplit("-", 1)[1]) for id_ in first["id"]]
    assert len(numbers) == 5 and numbers == sorted(numbers)
    assert first["id"][:] == again["id"][:]
    assert summaries[0].rows == 5
    assert [f"q{n}?" for n in numbers] == first["question"][:]


def test_a_local_source_directory_and_name_aliases(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "flashrag" / "2wikimultihopqa" / "dev.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "flashrag" / "nq" / "dev.jsonl", ROWS[1:2])

    merged, _ = prepare(["2wiki", "nq"], "dev", SEARCH_R1, source=str(tmp_path / "flashrag"))

    assert merged["id"][:] == ["2wikimultihopqa-dev-1", "nq-dev-2"]
    with pytest.raises(InputError, match=r"no popqa/dev.jsonl or popqa/dev.parquet"):
        prepare(["popqa"], "dev", SEARCH_R1, source=str(tmp_path / "flashrag"))


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_jsonl(tmp_path / "nq.jsonl", ROWS)
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"question": "q?", "golden_answers": []}])
    out = tmp_path / "out"

    code = main(
        [
            "prepare-data",
            "--datasets",
            f"{good},{bad}",
            "--split",
            "test",
            "--template",
            "research_instruct",
            "--output_dir",
            str(out),
            "--skip-bad",
        ]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert f"nq: 3 rows from {good}" in printed
    assert f"bad: 1 row from {bad}\n  skipped 1: field 'golden_answers' is an empty list" in printed
    assert f"wrote 4 rows to {out / 'test.parquet'}" in printed
    rows = read_split(out / "test.parquet")
    assert [row["id"] for row in rows] == ["nq-test-1", "nq-test-2", "nq-test-3", "bad-test-1"]
    assert rows[0]["prompt"][0]["role"] == "system"
    assert {row["template"] for row in rows} == {"research_instruct"}

    code = main(["prepare-data", "--datasets", str(bad), "--output_dir", str(tmp_path / "none")])

    assert code == 2
    # Progress bars share stderr: the error is its last line.
    assert capsys.readouterr().err.endswith(
        f"\nerror: {bad}: row 2: field 'golden_answers' is an empty list "
        "(1 row bad in all; --skip-bad skips them)\n"
    )
    assert not (tmp_path / "none").exists()


def test_cli_refuses_a_missing_file_and_an_unknown_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["prepare-data", "--datasets", str(missing), "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: dataset {str(missing)!r}: no such file {missing}\n"

    source = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    argv = ["prepare-data", "--datasets", str(source), "--output_dir", str(tmp_path)]
    assert main([*argv, "--template", "nope"]) == 2
    assert "template 'nope' is neither a built-in" in capsys.readouterr().err
    assert main([*argv, "--split", "../train"]) == 2
    assert capsys.readouterr().err == "error: --split '../train' is not a simple name\n"
    assert main([*argv, "--max_rows", "0"]) == 2
    assert capsys.readouterr().err == "error: --max_rows must be a positive integer, got 0\n"


def test_hub_dataset_config_is_loaded_and_the_split_pushed(
    tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = hub.new_repo_id("flashrag")
    datasets.Dataset.from_list(ROWS[:2]).push_to_hub(repo, config_name="nq", token=hub.token)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    target = hub.new_repo_id("prepared")
    out = tmp_path / "out"

    code = main(
        [
            "prepare-data",
            "--datasets",
            "nq",
            "--source",
            repo,
            "--split",
            "train",
            "--output_dir",
            str(out),
            "--push-to-hub",
            target,
        ]
    )

    assert code == 0
    written = read_split(out / "train.parquet")
    assert [row["id"] for row in written] == ["nq-train-1", "nq-train-2"]
    pushed = datasets.load_dataset(target, split="train")
    assert pushed.to_list() == written


def test_hub_file_uri_and_missing_hub_config(
    tmp_path: Path, hub, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import HfApi

    repo = hub.new_repo_id("qa-files")
    HfApi(token=hub.token).create_repo(repo, repo_type="dataset")
    HfApi(token=hub.token).upload_file(
        path_or_fileobj=write_jsonl(tmp_path / "train.jsonl", ROWS),
        path_in_repo="nq/train.jsonl",
        repo_id=repo,
        repo_type="dataset",
    )

    merged, summaries = prepare([f"hf://datasets/{repo}/nq/train.jsonl"], "train", SEARCH_R1)

    assert merged["id"][:] == ["nq-train-1", "nq-train-2", "nq-train-3"]
    assert summaries[0].source.name == "nq"

    configs = hub.new_repo_id("configs")
    datasets.Dataset.from_list(ROWS[1:]).push_to_hub(configs, config_name="nq", token=hub.token)
    argv = ["prepare-data", "--datasets", "popqa", "--source", configs]
    argv += ["--output_dir", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {configs} (config 'popqa', split 'train'): cannot load: "
        "BuilderConfig 'popqa' not found. Available: ['nq']"
    )
    with pytest.raises(InputError) as error:
        prepare(["nq"], "dev", SEARCH_R1, source=f"hf://datasets/{configs}@main")
    assert str(error.value) == (
        f"{configs}@main (config 'nq', split 'dev'): cannot load: "
        "Unknown split \"dev\". Should be one of ['train']."
    )
    absent = hub.new_repo_id("absent")
    with pytest.raises(InputError) as error:
        prepare(["nq"], "dev", SEARCH_R1, source=absent)
    assert str(error.value) == (
        f"{absent} (config 'nq', split 'dev'): cannot load: "
        f"Dataset '{absent}' doesn't exist on the Hub or cannot be accessed. Check the id "
        "(--source); if it is private, log in with `hf auth login` or set HF_TOKEN"
    )


def test_a_split_pushed_to_the_hub_loads_like_a_local_one(tmp_path: Path, hub) -> None:
    dataset, _ = prepare([str(write_jsonl(tmp_path / "qa.jsonl", ROWS))], "train", SEARCH_R1)
    local = datasets.Dataset.from_parquet(str(write_split(dataset, tmp_path / "data", "train")))
    repo = hub.new_repo_id("toy-qa")
    push_dataset(local, repo, split="train", token=hub.token)

    uri = f"hf://datasets/{repo}"
    assert load_split(uri, "train", "dataset_train_split").to_list() == local.to_list()
    with pytest.raises(InputError, match=r"^dataset_name: no split 'dev' \(dataset_test_split\)"):
        load_split(uri, "dev", "dataset_test_split")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "hotpotq",
            "RUC-NLPIR/FlashRAG_datasets (config 'hotpotq', split 'dev'): 'hotpotq' is none of "
            "the FlashRAG sets we know (did you mean 'hotpotqa'? known: nq, triviaqa, popqa, "
            "hotpotqa, 2wikimultihopqa, musique, bamboogle), and the Hub could not be reached "
            "to look for it: Couldn't reach it",
        ),
        (
            "hotpot",  # an alias: a set we know, so the network is to blame (exit 4)
            "cannot reach {endpoint} to fetch dataset repo 'RUC-NLPIR/FlashRAG_datasets', config "
            "'hotpotqa', split 'dev' (Couldn't reach it): connect to the network (or fix "
            "HF_ENDPOINT); if it is in the Hub cache, set HF_HUB_OFFLINE=1 to use it",
        ),
    ],
)
def test_offline_an_unknown_set_is_told_from_an_unreachable_hub(name, message, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach it")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises((InputError, Unreachable)) as raised:
        load_source(find_source(name, "dev"))
    assert str(raised.value) == message.format(endpoint=constants.ENDPOINT)


def test_a_flashrag_set_without_network_is_one_line(no_hub, tmp_path, capsys) -> None:
    """datasets says only `Couldn't reach ...` (it drops the cause): that, the repo, the set
    and the way out, exit 4."""
    assert main(["prepare-data", "--datasets", "nq", "--output_dir", str(tmp_path)]) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach {no_hub.endpoint} to fetch dataset repo "
        "'RUC-NLPIR/FlashRAG_datasets', config 'nq', split 'train' (Couldn't reach "
        "'RUC-NLPIR/FlashRAG_datasets' on the Hub (LocalEntryNotFoundError)): connect to the "
        "network (or fix HF_ENDPOINT); if it is in the Hub cache, set HF_HUB_OFFLINE=1 to use it"
    ]
