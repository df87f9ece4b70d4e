"""research_r1.hub against the loopback Hub: real huggingface_hub and datasets calls, no network."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
from pathlib import Path

import datasets
import httpx2
import pytest
from huggingface_hub import HfApi, HfFileSystem, constants
from huggingface_hub.errors import HfHubHTTPError

from research_r1 import hub as hub_io
from research_r1.errors import InputError, Unreachable
from research_r1.hub import (
    HubLocation,
    is_hub_uri,
    parse_uri,
    push_dataset,
    push_folder,
    reassemble,
    resolve,
    resolve_split,
    retry,
    user_error,
)


def upload_file(
    data: bytes, path_in_repo: str, repo_id: str, repo_type: str = "model", *, token: str
) -> str:
    """Put a file on the loopback Hub (huggingface_hub's own call); the commit sha."""
    return (
        HfApi(token=token)
        .upload_file(
            path_or_fileobj=data, path_in_repo=path_in_repo, repo_id=repo_id, repo_type=repo_type
        )
        .oid
    )


def create_repo(
    repo_id: str, repo_type: str = "model", *, token: str, private: bool = False
) -> None:
    """An empty repo on the loopback Hub (huggingface_hub's own call)."""
    HfApi(token=token).create_repo(repo_id, repo_type=repo_type, private=private)


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _http_error(status: int, message: str) -> HfHubHTTPError:
    request = httpx2.Request("POST", "http://127.0.0.1/api/models/org/name/commit/main")
    return HfHubHTTPError(message, response=httpx2.Response(status, request=request))


def test_parse_uri_reads_every_repo_type_and_revision() -> None:
    assert parse_uri("hf://datasets/org/corpus@v1/index/part_aa") == HubLocation(
        "org/corpus", "dataset", "index/part_aa", "v1"
    )
    assert parse_uri("hf://org/model") == HubLocation("org/model", "model", "", None)
    assert parse_uri("hf://spaces/org/demo/app.py") == HubLocation("org/demo", "space", "app.py")
    sha = "a" * 40
    location = parse_uri(f"hf://datasets/org/qa@{sha}/nq/train.parquet")
    assert (location.revision, location.path) == (sha, "nq/train.parquet")
    assert location.uri == f"hf://datasets/org/qa@{sha}/nq/train.parquet"
    assert parse_uri("hf://org/model/config.json").uri == "hf://org/model/config.json"
    assert is_hub_uri("hf://org/model")
    assert not is_hub_uri("/data/org/model")
    assert not is_hub_uri(None)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hf://", "malformed Hub URI 'hf://'"),
        ("hf://datasets/onlyname", "malformed Hub URI 'hf://datasets/onlyname'"),
        ("hf://org/name@/file", "malformed Hub URI 'hf://org/name@/file'"),
        ("hf://buckets/org/bucket/file", "bucket repos are not handled"),
        ("/local/path", "not a Hub URI: '/local/path'"),
    ],
)
def test_parse_uri_rejects_malformed_uris(uri: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_uri(uri)


def test_resolve_returns_local_paths_and_names_missing_ones(tmp_path) -> None:
    present = tmp_path / "corpus.jsonl"
    present.write_text("{}\n")
    assert resolve(present) == present
    assert resolve(str(present)) == present
    with pytest.raises(InputError, match=f"{tmp_path / 'absent.jsonl'} does not exist"):
        resolve(tmp_path / "absent.jsonl")


def test_push_folder_creates_the_repo_and_uploads_in_one_commit(hub, tmp_path) -> None:
    repo_id = hub.new_repo_id("artefacts")
    folder = tmp_path / "upload"
    (folder / "corpus").mkdir(parents=True)
    (folder / "index").mkdir()
    (folder / "corpus" / "shard-0.jsonl").write_text('{"id": "0", "contents": "a"}\n')
    (folder / "corpus" / "shard-1.jsonl").write_text('{"id": "1", "contents": "b"}\n')
    vectors = _random_bytes(4096, seed=0)
    (folder / "index" / "vectors.bin").write_bytes(vectors)
    (folder / "notes.txt").write_text("notes")
    (folder / "embeddings").mkdir()
    (folder / "embeddings" / "chunk-0.npy").write_bytes(b"left out")
    commit = push_folder(
        folder, repo_id, repo_type="dataset", ignore_patterns=["embeddings/*"], token=hub.token
    )
    assert len(commit) == 40
    # The 4 KiB binary went through the LFS batch and storage endpoints.
    assert f"PUT /lfs-storage/{hashlib.sha256(vectors).hexdigest()}" in hub.requests
    upload_file(b"extra", "extra/readme.txt", repo_id, "dataset", token=hub.token)
    # The repo exists now: a second push commits to it and keeps the files already there.
    (folder / "notes.txt").write_text("notes, again")
    assert push_folder(folder, repo_id, repo_type="dataset", token=hub.token) != commit

    downloaded = resolve(f"hf://datasets/{repo_id}/index/vectors.bin", token=hub.token)
    assert downloaded.read_bytes() == vectors

    shards = resolve(f"hf://datasets/{repo_id}/corpus", allow_patterns=["*-1.jsonl"])
    assert shards.is_dir() and shards.name == "corpus"
    assert sorted(path.name for path in shards.iterdir()) == ["shard-1.jsonl"]
    assert (shards / "shard-1.jsonl").read_text() == '{"id": "1", "contents": "b"}\n'

    root = resolve(f"hf://datasets/{repo_id}", allow_patterns=["*.txt"])
    assert (root / "notes.txt").read_text() == "notes, again"
    assert (root / "extra" / "readme.txt").read_text() == "extra"
    assert not (root / "corpus" / "shard-0.jsonl").exists()

    filesystem = HfFileSystem(token=hub.token)
    assert filesystem.read_bytes(f"hf://datasets/{repo_id}/index/vectors.bin") == vectors
    assert sorted(filesystem.ls(f"datasets/{repo_id}/corpus", detail=False)) == [
        f"datasets/{repo_id}/corpus/shard-0.jsonl",
        f"datasets/{repo_id}/corpus/shard-1.jsonl",
    ]
    with pytest.raises(InputError, match="is not a folder to upload"):
        push_folder(folder / "notes.txt", repo_id, token=hub.token)


def test_space_files_resolve(hub, tmp_path) -> None:
    repo_id = hub.new_repo_id("demo")
    (tmp_path / "app.py").write_bytes(b"import gradio\n")
    push_folder(tmp_path, repo_id, repo_type="space", token=hub.token)
    assert HfApi(token=hub.token).space_info(repo_id).sdk == "gradio"
    assert resolve(f"hf://spaces/{repo_id}/app.py").read_bytes() == b"import gradio\n"


def test_a_repo_without_matching_files_is_an_empty_folder(hub) -> None:
    """As Search-R1's published Flat, which has parts but no index_info.json; a missing repo
    is still an error."""
    repo_id = hub.new_repo_id("parts-only")
    create_repo(repo_id, token=hub.token)
    upload_file(b"flat", "part_aa", repo_id, token=hub.token)
    folder = resolve(f"hf://{repo_id}", allow_patterns=["index_info.json"])
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert resolve(f"hf://{repo_id}", allow_patterns=["part_*"]).joinpath("part_aa").is_file()
    with pytest.raises(InputError, match="not-there"):
        resolve(f"hf://{hub.new_repo_id('not-there')}", allow_patterns=["index_info.json"])


def test_old_revisions_keep_their_bytes(hub) -> None:
    repo_id = hub.new_repo_id("checkpoints")
    create_repo(repo_id, token=hub.token)
    old_weights, new_weights = _random_bytes(2000, seed=1), _random_bytes(2000, seed=2)
    first = upload_file(b"step 100", "step.txt", repo_id, token=hub.token)
    upload_file(old_weights, "weights.bin", repo_id, token=hub.token)
    HfApi(token=hub.token).create_tag(repo_id, tag="v1")
    upload_file(b"step 200", "step.txt", repo_id, token=hub.token)
    upload_file(new_weights, "weights.bin", repo_id, token=hub.token)

    assert resolve(f"hf://{repo_id}/step.txt").read_bytes() == b"step 200"
    assert resolve(f"hf://{repo_id}/weights.bin").read_bytes() == new_weights
    assert resolve(f"hf://{repo_id}@v1/step.txt").read_bytes() == b"step 100"
    assert resolve(f"hf://{repo_id}@v1/weights.bin").read_bytes() == old_weights
    assert resolve(f"hf://{repo_id}@{first}/step.txt").read_bytes() == b"step 100"
    with pytest.raises(
        InputError, match=f"no file or folder 'weights.bin' in model repo '{repo_id}'"
    ):
        resolve(f"hf://{repo_id}@{first}/weights.bin")


def test_split_index_is_resolved_and_reassembled_byte_exact(hub, tmp_path) -> None:
    """The reassembled file goes beside the Hub cache (under HF_HOME), never into a snapshot
    folder that huggingface_hub manages; each revision gets its own file, reused on later calls."""
    repo_id = hub.new_repo_id("wiki-e5-index")
    parts = {"part_aa": _random_bytes(3000, 3), "part_ab": _random_bytes(1500, 4), "part_ac": b"!"}
    folder = tmp_path / "flat"
    folder.mkdir()
    for name, data in parts.items():
        (folder / name).write_bytes(data)
    (folder / "LICENSE").write_text("cc-by-sa")
    push_folder(folder, repo_id, repo_type="dataset", path_in_repo="flat", token=hub.token)

    uri = f"hf://datasets/{repo_id}/flat"
    index = resolve_split(uri)
    assert index.name == "e5_Flat.index"
    assert index.read_bytes() == parts["part_aa"] + parts["part_ab"] + parts["part_ac"]
    snapshot = resolve(uri, allow_patterns=["part_*"])
    assert sorted(path.name for path in snapshot.iterdir()) == sorted(parts)  # nothing new
    cache = Path(constants.HF_HUB_CACHE)
    assembled = Path(constants.HF_HOME) / "research_r1" / "assembled"
    assert index == assembled / snapshot.relative_to(cache) / "e5_Flat.index"
    assert not index.resolve().is_relative_to(cache.resolve())
    written = index.stat()
    assert resolve_split(uri) == index
    assert index.stat().st_mtime_ns == written.st_mtime_ns  # complete and newer: not rewritten
    assert resolve_split(snapshot) == index  # the cached folder itself, as resolve_index passes

    upload_file(b"?", "flat/part_ac", repo_id, "dataset", token=hub.token)
    new_revision = resolve_split(uri)
    assert new_revision != index and new_revision.read_bytes().endswith(b"?")
    assert index.read_bytes().endswith(b"!")  # the old revision's file is left as it was

    elsewhere = resolve_split(uri, out_dir=tmp_path / "out")
    assert elsewhere == tmp_path / "out" / "e5_Flat.index"
    assert elsewhere.read_bytes() == new_revision.read_bytes()


def test_resolve_split_reads_local_folders(tmp_path) -> None:
    (tmp_path / "part_ab").write_bytes(b"world")
    (tmp_path / "part_aa").write_bytes(b"hello ")
    assert resolve_split(tmp_path, name="joined.bin").read_bytes() == b"hello world"
    with pytest.raises(InputError, match=r"no files matching 'shard_\*'"):
        resolve_split(tmp_path, parts_glob="shard_*")


def test_reassemble_sorts_parts_and_rebuilds_stale_output(tmp_path) -> None:
    first, second = tmp_path / "part_aa", tmp_path / "part_ab"
    first.write_bytes(b"abc")
    second.write_bytes(b"def")
    out = tmp_path / "joined"
    assert reassemble([second, first], out).read_bytes() == b"abcdef"

    out.write_bytes(b"XXXXXX")  # same size, newer than the parts: taken as done
    assert reassemble([first, second], out).read_bytes() == b"XXXXXX"
    os.utime(second, ns=(out.stat().st_mtime_ns + 10**9,) * 2)  # a part changed since
    assert reassemble([first, second], out).read_bytes() == b"abcdef"
    out.write_bytes(b"abc")  # truncated: rebuilt
    assert reassemble([first, second], out).read_bytes() == b"abcdef"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["joined", "part_aa", "part_ab"]

    with pytest.raises(InputError, match=f"part {tmp_path / 'part_zz'} does not exist"):
        reassemble([first, tmp_path / "part_zz"], tmp_path / "other")
    with pytest.raises(InputError, match="no parts given"):
        reassemble([], out)


def test_missing_repo_file_and_revision_are_named(hub) -> None:
    repo_id = hub.new_repo_id("qa")
    create_repo(repo_id, "dataset", token=hub.token)
    upload_file(b"q", "nq/test.jsonl", repo_id, "dataset", token=hub.token)

    with pytest.raises(InputError) as missing_repo:
        resolve("hf://datasets/loopback-user/no-such-repo/nq/test.jsonl", token=hub.token)
    message = str(missing_repo.value)
    assert "dataset repo 'loopback-user/no-such-repo' not found on http://127.0.0.1:" in message
    assert message.endswith("if it is private, log in with `hf auth login` or set HF_TOKEN")

    with pytest.raises(InputError) as missing_file:
        resolve(f"hf://datasets/{repo_id}/nq/train.jsonl")
    assert str(missing_file.value) == (
        f"no file or folder 'nq/train.jsonl' in dataset repo '{repo_id}' at revision 'main' "
        f"on {hub.endpoint}: check its path and revision"
    )

    with pytest.raises(InputError, match=f"revision 'v9' not found in dataset repo '{repo_id}'"):
        resolve(f"hf://datasets/{repo_id}@v9/nq/test.jsonl")
    with pytest.raises(InputError, match=f"revision 'v9' not found in dataset repo '{repo_id}'"):
        resolve(f"hf://datasets/{repo_id}@v9/nq")


def test_bad_or_missing_token_gives_a_clear_error_without_the_token(hub, tmp_path) -> None:
    bad_token = "hf_" + "Wrong" * 6 + "Toke"
    repo_id = hub.new_repo_id("private-ckpt")
    create_repo(repo_id, private=True, token=hub.token)
    upload_file(b"secret", "weights.txt", repo_id, token=hub.token)

    with pytest.raises(InputError) as refused_read:
        resolve(f"hf://{repo_id}/weights.txt", token=bad_token)
    with pytest.raises(InputError) as refused_write:
        push_folder(tmp_path, hub.new_repo_id("never"), token=bad_token)
    assert str(refused_read.value).startswith(
        f"{hub.endpoint} refused access to model repo '{repo_id}' (HTTP 401): the token is "
        "missing, invalid or has no access to it; log in with `hf auth login` or set HF_TOKEN"
    )
    assert str(refused_write.value).startswith(
        f"{hub.endpoint} refused the push to model repo 'loopback-user/never-"
    )
    assert "(HTTP 401): the token is missing or invalid; log in" in str(refused_write.value)
    for refused in (refused_read, refused_write):
        assert bad_token not in str(refused.value) and hub.token not in str(refused.value)

    with pytest.raises(InputError, match=f"model repo '{repo_id}' not found .* if it is private"):
        resolve(f"hf://{repo_id}/weights.txt")
    assert resolve(f"hf://{repo_id}/weights.txt", token=hub.token).read_bytes() == b"secret"


def test_offline_mode_serves_cached_files_and_names_uncached_ones(hub, monkeypatch) -> None:
    repo_id = hub.new_repo_id("offline")
    create_repo(repo_id, "dataset", token=hub.token)
    upload_file(b"cached", "cached.txt", repo_id, "dataset", token=hub.token)
    upload_file(b"never fetched", "uncached.txt", repo_id, "dataset", token=hub.token)
    online = resolve(f"hf://datasets/{repo_id}/cached.txt")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(f"hf://datasets/{repo_id}/cached.txt") == online
    assert online.read_bytes() == b"cached"
    for uri in (f"hf://datasets/{repo_id}/uncached.txt", f"hf://datasets/{repo_id}/folder"):
        with pytest.raises(InputError) as uncached:
            resolve(uri)
        assert str(uncached.value).startswith(
            f"{uri} is not in the Hub cache and offline mode is on (HF_HUB_OFFLINE=1)"
        )
    assert not any("uncached.txt" in line for line in hub.requests)


def test_retry_backs_off_on_transient_errors_then_reraises(caplog, hub) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _http_error(503, f"service unavailable for token {hub.token}")
        return "pushed"

    with caplog.at_level(logging.WARNING, logger="research_r1.hub"):
        assert retry(flaky, attempts=3, backoff_s=0, what="checkpoint push") == "pushed"
    assert len(calls) == 3
    assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING"]
    assert "checkpoint push failed (attempt 1/3), retrying in 0.0s" in caplog.text

    caplog.clear()
    calls.clear()

    def down() -> None:
        calls.append(1)
        raise _http_error(429, f"rate limited, Authorization: Bearer {hub.token}")

    with caplog.at_level(logging.WARNING, logger="research_r1.hub"), pytest.raises(HfHubHTTPError):
        retry(down, attempts=3, backoff_s=0)
    assert len(calls) == 3
    assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING", "ERROR"]
    assert "push failed (attempt 3/3)" in caplog.text
    assert hub.token not in caplog.text and "Bearer hf_***" in caplog.text


@pytest.mark.parametrize(
    "error", [_http_error(401, "unauthorized"), ValueError("bad config"), InputError("bad repo")]
)
def test_retry_does_not_repeat_permanent_errors(error: Exception) -> None:
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retry(fails, attempts=3, backoff_s=0)
    assert len(calls) == 1


def test_push_folder_retries_a_server_error(hub, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hub_io, "retry", functools.partial(hub_io.retry, backoff_s=0.0))
    repo_id = hub.new_repo_id("flaky-push")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.txt").write_bytes(b"checkpoint")
    hub.inject_failure(f"/api/models/{repo_id}/commit/", status=500, times=1)

    commit = push_folder(tmp_path, repo_id, token=hub.token, what="checkpoint push")

    assert resolve(f"hf://{repo_id}@{commit}/ckpt/state.txt").read_bytes() == b"checkpoint"
    commits = [line for line in hub.requests if line.endswith(f"{repo_id}/commit/main")]
    assert len(commits) == 2


def test_pushed_splits_load_back_by_name(hub, monkeypatch) -> None:
    monkeypatch.setattr(hub_io, "retry", functools.partial(hub_io.retry, backoff_s=0.0))
    repo_id = hub.new_repo_id("prepared")
    train = datasets.Dataset.from_dict(
        {"id": ["q0", "q1"], "question": ["who?", "when?"], "golden_answers": [["a"], ["b", "c"]]}
    )
    dev = datasets.Dataset.from_dict({"id": ["q2"], "question": ["where?"], "golden_answers": [[]]})

    assert len(push_dataset(train, repo_id, split="train", token=hub.token)) == 40
    push_dataset(dev, repo_id, split="dev", token=hub.token)

    assert datasets.load_dataset(repo_id, split="train").to_dict() == train.to_dict()
    assert datasets.load_dataset(repo_id, split="dev").to_dict() == dev.to_dict()
    push_dataset(dev, repo_id, split="train", token=hub.token)  # a split pushed again replaces it
    assert datasets.load_dataset(repo_id, split="train", download_mode="force_redownload")[
        "id"
    ] == ["q2"]


# Every command's one place for the Hub's failures: `user_error`.


def test_a_hub_that_cannot_be_reached_is_named_with_the_way_out(no_hub) -> None:
    """HF_ENDPOINT refuses connections: what was fetched (repo, file), the cause, and the way
    out (connect, or the cache with HF_HUB_OFFLINE=1) in one Unreachable (exit 4)."""
    repo_id = no_hub.new_repo_id("never-fetched")
    with pytest.raises(Unreachable) as down:
        resolve(f"hf://datasets/{repo_id}/nq/test.jsonl")
    assert str(down.value) == (
        f"cannot reach {no_hub.endpoint} to fetch 'nq/test.jsonl' in dataset repo '{repo_id}' "
        "at revision 'main' (ConnectError: [Errno 111] Connection refused): connect to the "
        "network (or fix HF_ENDPOINT); if it is in the Hub cache, set HF_HUB_OFFLINE=1 to use it"
    )

    from transformers import AutoConfig  # raises OSError from the Hub's error, as ST does

    model_id = no_hub.new_repo_id("never-fetched-model")
    with pytest.raises(OSError) as wrapped:
        AutoConfig.from_pretrained(model_id)
    mapped = user_error(wrapped.value)
    assert isinstance(mapped, Unreachable)
    assert str(mapped).startswith(
        f"cannot reach {no_hub.endpoint} to fetch 'config.json' in model repo '{model_id}' at "
        "revision 'main' (ConnectError: [Errno 111] Connection refused): connect to the "
    )
    assert str(mapped).endswith(
        "if it is in the Hub cache (`research-r1 download` puts a model there), set "
        "HF_HUB_OFFLINE=1 to use it"
    )


CREATE = {"name": "n", "organization": "o", "type": "space"}


@pytest.mark.parametrize(
    ("method", "path", "body", "named"),
    [
        ("GET", "/api/models/org/name/tree/main", None, "model repo 'org/name'"),
        ("GET", "/api/datasets/o/d/revision/v1%2Fx", None, "dataset repo 'o/d' at revision 'v1/x'"),
        ("HEAD", "/gpt2/resolve/main/./c", None, "'c' in model repo 'gpt2' at revision 'main'"),
        ("HEAD", "/spaces/o/s/resolve/v2/a", None, "'a' in space repo 'o/s' at revision 'v2'"),
        ("POST", "/api/repos/create", CREATE, "push to space repo 'o/n'"),
        ("POST", "/datasets/o/d.git/info/lfs/objects/batch", {}, "push to dataset repo 'o/d'"),
        ("POST", "/api/models/o/m/commit/main", {}, "push to model repo 'o/m'"),
    ],
)
def test_what_a_failed_request_was_about_is_read_from_its_url(method, path, body, named) -> None:
    request = httpx2.Request(method, constants.ENDPOINT + path, json=body)
    mapped = user_error(httpx2.ConnectError("[Errno 111] Connection refused", request=request))
    assert isinstance(mapped, Unreachable) and f" {named} (ConnectError: " in str(mapped)


def _raised_from(error: Exception, cause: Exception) -> Exception:
    try:
        raise error from cause
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    "error",
    [
        TypeError("a bug"),
        KeyError("a bug"),
        OSError("No space left on device"),
        ConnectionError("a retrieval server"),
        _raised_from(RuntimeError("a bug while handling it"), httpx2.ConnectError("refused")),
        _raised_from(ValueError("a bug while handling it"), _http_error(404, "not found")),
    ],
    ids=repr,
)
def test_an_error_that_is_not_the_hubs_is_left_alone(error: Exception) -> None:
    """Anything but huggingface_hub's and httpx2's errors (or the OSError raised from one)
    keeps its traceback: `errors.report` re-raises what `user_error` does not map."""
    assert user_error(error) is None


def test_no_token_appears_in_a_mapped_error(hub, monkeypatch) -> None:
    token = "hf_" + "Secret" * 6
    monkeypatch.setenv("HF_TOKEN", token)
    request = httpx2.Request("GET", f"{hub.endpoint}/api/models/org/name?token={token}")
    said = HfHubHTTPError(
        f"400 for url with Bearer {token}",
        response=httpx2.Response(400, request=request),
        server_message=f"bad token {token}",
    )
    mapped = user_error(said)
    assert isinstance(mapped, InputError) and "hf_***" in str(mapped)
    assert token not in str(mapped)
