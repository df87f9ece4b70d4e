"""Hub I/O: name artefacts by local path or `hf://` URI, fetch them, push results.

Corpora, FAISS indexes, parquet splits and checkpoints are named either by a local path or by a
Hub URI in the form HfFileSystem writes: `hf://datasets/ORG/NAME[@REV]/path`, `hf://ORG/NAME/...`
for models, `hf://spaces/ORG/NAME/...`. huggingface_hub does the work (cache, revisions, LFS,
offline mode); this module only turns names into calls and the client's exceptions into
`InputError` messages a user can act on. Tokens never appear in messages or logs.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx2
import tenacity
from huggingface_hub import (
    HfApi,
    constants,
    get_token,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HfUriError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import parse_hf_uri
from tqdm.auto import tqdm

from research_r1.errors import InputError

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

T = TypeVar("T")

REPO_TYPES = ("model", "dataset", "space")
# Canonical user access tokens are "hf_" followed by 34 letters and digits.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
_CHUNK_BYTES = 16 * 1024 * 1024
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class HubLocation:
    """Where an artefact lives on the Hub. `path` is "" for the whole repo; `revision` None
    means the default branch."""

    repo_id: str
    repo_type: str
    path: str = ""
    revision: str | None = None

    @property
    def uri(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        revision = f"@{self.revision}" if self.revision else ""
        path = f"/{self.path}" if self.path else ""
        return f"hf://{prefix}{self.repo_id}{revision}{path}"

    def describe(self) -> str:
        """`'path' in dataset repo 'org/name' at revision 'main'`, for messages."""
        where = f"{self.repo_type} repo '{self.repo_id}' at revision '{self.revision or 'main'}'"
        return f"'{self.path}' in {where}" if self.path else where


def is_hub_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith("hf://")


def parse_uri(uri: str) -> HubLocation:
    """Parse `hf://[datasets/|spaces/]ORG/NAME[@REV][/path]` with huggingface_hub's own parser."""
    expected = "expected hf://[datasets/|spaces/]ORG/NAME[@REVISION][/path]"
    if not is_hub_uri(uri):
        raise InputError(f"not a Hub URI: {uri!r} ({expected})")
    try:
        parsed = parse_hf_uri(uri)
    except HfUriError as error:
        raise InputError(f"malformed Hub URI {uri!r}: {error.msg} ({expected})") from error
    if parsed.type not in REPO_TYPES:
        raise InputError(f"unsupported Hub URI {uri!r}: {parsed.type} repos are not handled")
    return HubLocation(parsed.id, parsed.type, parsed.path_in_repo.strip("/"), parsed.revision)


def resolve(
    uri_or_path: str | os.PathLike,
    allow_patterns: Sequence[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local path for an artefact: local paths are checked and returned as they are; Hub URIs
    are downloaded through the Hub cache (pinned to the URI's revision) and served from it.

    A URI naming a file returns the cached file; one naming a folder or a whole repo returns the
    cached folder, restricted to `allow_patterns` (relative to that folder) when given. With
    HF_HUB_OFFLINE=1 only the cache is used.
    """
    if not is_hub_uri(uri_or_path):
        path = Path(uri_or_path).expanduser()
        if not path.exists():
            raise InputError(f"{path} does not exist")
        return path
    location = parse_uri(str(uri_or_path))
    with hub_errors(location):
        if location.path:
            try:
                return _download_file(location, token)
            except EntryNotFoundError as error:
                # Not a file, so maybe a folder; offline, an uncached file looks the same.
                if isinstance(error, LocalEntryNotFoundError) and not _offline():
                    raise
        return _download_folder(location, allow_patterns, token)


def resolve_split(
    uri_or_dir: str | os.PathLike,
    parts_glob: str = "part_*",
    name: str = "e5_Flat.index",
    token: str | bool | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Fetch a file published in parts (Search-R1's flat index: `part_aa`, `part_ab`) and return
    the reassembled file, written to `out_dir` if given, else next to local parts, else (parts in
    the Hub cache) under `$HF_HOME/research_r1/assembled`."""
    folder = resolve(uri_or_dir, allow_patterns=[parts_glob], token=token)
    if not folder.is_dir():
        raise InputError(f"{uri_or_dir} must name a folder holding {parts_glob} files")
    out = Path(out_dir or _assembled_dir(folder)) / name
    parts = [path for path in folder.glob(parts_glob) if path != out]
    if not parts:
        if out.exists():
            return out
        raise InputError(f"no files matching {parts_glob!r} in {uri_or_dir} ({folder})")
    return reassemble(parts, out)


def _assembled_dir(folder: Path) -> Path:
    """Where a file reassembled from the parts in `folder` goes: next to them, unless `folder` is
    in the Hub cache. huggingface_hub manages that cache (snapshot folders of symlinks into
    blobs, sized and pruned by `hf cache`), so a 60 GB file of ours there would escape its
    accounting and clash with a repo file of the same name. It goes beside the cache instead,
    at `$HF_HOME/research_r1/assembled/<the folder's path in the cache>`: that path names the
    revision, so a new revision gets its own file and the same one is reused."""
    try:
        relative = folder.resolve().relative_to(Path(constants.HF_HUB_CACHE).resolve())
    except ValueError:
        return folder
    return Path(constants.HF_HOME) / "research_r1" / "assembled" / relative


def reassemble(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Concatenate `parts` in name order into `out`, streaming in chunks and writing atomically.

    Skipped when `out` already has the parts' total size and is newer than every part, so a
    60 GB index is only rebuilt when its parts change.
    """
    out = Path(out)
    paths = sorted((Path(part) for part in parts), key=lambda path: path.name)
    if not paths:
        raise InputError(f"no parts given to reassemble into {out}")
    for path in paths:
        if not path.is_file():
            raise InputError(f"part {path} does not exist")
    stats = [path.stat() for path in paths]
    total = sum(stat.st_size for stat in stats)
    if out.exists():
        done = out.stat()
        if done.st_size == total and done.st_mtime >= max(stat.st_mtime for stat in stats):
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with (
            tmp.open("wb") as sink,
            tqdm(total=total, unit="B", unit_scale=True, desc=f"reassembling {out.name}") as bar,
        ):
            for path in paths:
                with path.open("rb") as source:
                    while chunk := source.read(_CHUNK_BYTES):
                        sink.write(chunk)
                        bar.update(len(chunk))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    path_in_repo: str = "",
    commit_message: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    private: bool = False,
    token: str | bool | None = None,
    what: str = "push",
) -> str:
    """Create the repo unless it exists and upload `folder` in one commit, each step retried
    (`retry`); return the commit sha. The one upload path of checkpoints, Spaces, indexes and
    dataset splits. A Space is created with the Gradio SDK."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder to upload")
    api = HfApi(token=token)
    location = HubLocation(repo_id, repo_type, path_in_repo)

    def create() -> None:
        with hub_errors(location):
            api.create_repo(
                repo_id,
                repo_type=repo_type,
                private=private,
                exist_ok=True,
                space_sdk="gradio" if repo_type == "space" else None,
            )

    def upload() -> str:
        with hub_errors(location):
            return api.upload_folder(
                folder_path=folder,
                repo_id=repo_id,
                repo_type=repo_type,
                path_in_repo=path_in_repo or None,
                commit_message=commit_message,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
            ).oid

    retry(create, what=f"create {repo_id}")
    return retry(upload, what=what)


def push_dataset(
    dataset: Dataset,
    repo_id: str,
    split: str = "train",
    private: bool = False,
    token: str | bool | None = None,
) -> str:
    """Push `dataset` as split `split` of a dataset repo, through `push_folder`; the commit sha.

    The file goes where `datasets.push_to_hub` puts a one-shard split,
    `data/{split}-00000-of-00001.parquet`: `datasets.load_dataset(repo_id, split=split)` finds
    every split laid out so by its name (`dev` included, which a plain `dev.parquet` would make
    `validation`), with no dataset card to keep in step. Other splits already there are kept."""
    with tempfile.TemporaryDirectory(prefix="research-r1-split-") as folder:
        (Path(folder) / "data").mkdir()
        dataset.to_parquet(str(Path(folder) / "data" / f"{split}-00000-of-00001.parquet"))
        return push_folder(
            folder,
            repo_id,
            repo_type="dataset",
            private=private,
            token=token,
            commit_message=f"Upload split {split}",
            what=f"push split {split!r} to {repo_id}",
        )


def retry(
    fn: Callable[[], T], *, attempts: int = 3, backoff_s: float = 2.0, what: str = "push"
) -> T:
    """Run `fn`, retrying network errors, HTTP 5xx and 429 with exponential backoff
    (`backoff_s`, then twice that, ...). Other errors and the last failure are re-raised.

    Each retried failure is logged with its message scrubbed of tokens (never with a traceback,
    which could hold one), and so is the last when retries ran out; an error that is not
    retried is left to the caller, which reports it once.
    """
    if attempts < 1:
        raise InputError(f"retry attempts must be at least 1, got {attempts}")

    def log_retry(state: tenacity.RetryCallState) -> None:
        logger.warning(
            "%s failed (attempt %d/%d), retrying in %.1fs: %s",
            what,
            state.attempt_number,
            attempts,
            state.upcoming_sleep,
            _scrubbed(state.outcome.exception()),
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        wait=tenacity.wait_exponential(multiplier=backoff_s),
        stop=tenacity.stop_after_attempt(attempts),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as error:
        number = retrying.statistics["attempt_number"]
        if number > 1:
            logger.error("%s failed (attempt %d/%d): %s", what, number, attempts, _scrubbed(error))
        raise


def _scrubbed(error: BaseException) -> str:
    return scrub(f"{type(error).__name__}: {error}")


def scrub(text: str) -> str:
    """`text` with Hub tokens (any canonical `hf_...` token, and the configured one) masked."""
    text = _TOKEN_PATTERN.sub("hf_***", text)
    token = get_token()
    return text.replace(token, "hf_***") if token else text


@contextmanager
def hub_errors(location: HubLocation) -> Iterator[None]:
    """Turn huggingface_hub's exceptions about `location` into InputErrors that say what to fix.

    Transient failures (network, HTTP 5xx, 429) pass through untouched so `retry` can act.
    """
    endpoint = _endpoint()
    repo = f"{location.repo_type} repo '{location.repo_id}'"
    try:
        yield
    except GatedRepoError as error:
        raise InputError(
            f"{repo} on {endpoint} is gated: accept its terms on the Hub, then pass a token "
            "(HF_TOKEN or `hf auth login`) from an account that has access"
        ) from error
    except RepositoryNotFoundError as error:
        raise InputError(
            f"{repo} not found on {endpoint}: check the repo id and type "
            "(hf://datasets/..., hf://spaces/..., hf://ORG/NAME for models); a private repo "
            "needs a token (HF_TOKEN or `hf auth login`) with access to it"
        ) from error
    except RevisionNotFoundError as error:
        raise InputError(
            f"revision '{location.revision or 'main'}' not found in {repo} on {endpoint}: "
            "use an existing branch, tag or commit sha"
        ) from error
    except LocalEntryNotFoundError as error:
        if _offline():
            raise _not_cached_offline(location) from error
        raise InputError(
            f"could not reach {endpoint} for {location.uri} and it is not in the Hub cache: "
            "check the network or HF_ENDPOINT"
        ) from error
    except EntryNotFoundError as error:
        raise InputError(f"no file or folder {location.describe()} on {endpoint}") from error
    except OfflineModeIsEnabled as error:
        raise InputError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot reach {endpoint} for {location.uri}"
        ) from error
    except HFValidationError as error:
        raise InputError(f"invalid Hub name for {location.uri}: {scrub(str(error))}") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise InputError(
                f"{endpoint} answered HTTP {status} for {repo}: the token is missing, invalid or "
                "lacks access; set HF_TOKEN or run `hf auth login` (uploads need write access)"
            ) from error
        raise


def _download_file(location: HubLocation, token: str | bool | None) -> Path:
    return Path(
        hf_hub_download(
            location.repo_id,
            location.path,
            repo_type=location.repo_type,
            revision=location.revision,
            token=token,
            local_files_only=_offline(),
        )
    )


def _download_folder(
    location: HubLocation, allow_patterns: Sequence[str] | None, token: str | bool | None
) -> Path:
    patterns = list(allow_patterns) if allow_patterns else ["*"]
    if location.path:
        patterns = [f"{location.path}/{pattern}" for pattern in patterns]
    snapshot = Path(
        snapshot_download(
            location.repo_id,
            repo_type=location.repo_type,
            revision=location.revision,
            allow_patterns=patterns,
            token=token,
            local_files_only=_offline(),
        )
    )
    folder = snapshot / location.path
    if not folder.is_dir():
        if _offline():
            raise _not_cached_offline(location)
        raise InputError(f"no file or folder {location.describe()} on {_endpoint()}")
    return folder


def _not_cached_offline(location: HubLocation) -> InputError:
    return InputError(
        f"{location.uri} is not in the Hub cache and offline mode is on (HF_HUB_OFFLINE=1): "
        "download it once while online, or unset HF_HUB_OFFLINE"
    )


def _endpoint() -> str:
    return constants.ENDPOINT


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set since then."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in constants.ENV_VARS_TRUE_VALUES


# What a push can fail with from outside this program (the Hub's answer, the network, the disk):
# a caller that must survive a failed push catches these, and lets a bug in its own code raise.
PUSH_ERRORS: tuple[type[Exception], ...] = (HfHubHTTPError, httpx2.HTTPError, OSError)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, HfHubHTTPError):
        response = error.response
        return response is not None and response.status_code in _RETRY_STATUS
    if isinstance(error, OfflineModeIsEnabled):
        return False
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError))
