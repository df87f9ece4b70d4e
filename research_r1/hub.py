"""Hub I/O: name artefacts by local path or `hf://` URI, fetch them, push results.

Corpora, FAISS indexes, parquet splits and checkpoints are named either by a local path or by a
Hub URI in the form HfFileSystem writes: `hf://datasets/ORG/NAME[@REV]/path`, `hf://ORG/NAME/...`
for models, `hf://spaces/ORG/NAME/...`. huggingface_hub does the work (cache, revisions, LFS,
offline mode); this module only turns names into calls and the client's exceptions into
one-line errors a user can act on (`user_error`: every command's one place for that). Tokens
never appear in messages or logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit

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
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import parse_hf_uri, validate_repo_id
from tqdm.auto import tqdm

from research_r1.errors import InputError, Unreachable

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

    def named(self) -> str:
        """`describe()` for a file; for a repo, its revision only where one other than the
        default branch is set."""
        if self.path:
            return self.describe()
        revision = f" at revision '{self.revision}'" if self.revision not in (None, "main") else ""
        return f"{self.repo_type} repo '{self.repo_id}'{revision}"


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
    """huggingface_hub's exceptions about `location` as our one-line errors (`user_error`).

    Transient failures (network, HTTP 5xx, 429) pass through untouched so `retry` can act; once
    its attempts are spent, the command's `errors.report` maps the last one (see cli.main).
    """
    try:
        yield
    except Exception as error:
        mapped = None if _is_transient(error) else user_error(error, location)
        if mapped is None:
            raise
        raise mapped from error


# What `user_error` recognises: huggingface_hub's own errors, and failures of its HTTP client's
# transport (httpx2, which nothing else here uses): a refused connection, DNS, a timeout.
_HUB_FAILURES = (
    HfHubHTTPError,
    EntryNotFoundError,
    OfflineModeIsEnabled,
    HFValidationError,
    LocalTokenNotFoundError,
    httpx2.TransportError,
)
LOG_IN = "log in with `hf auth login` or set HF_TOKEN"


def user_error(
    error: BaseException, location: HubLocation | None = None
) -> InputError | Unreachable | None:
    """The one-line error a failure to fetch from or push to the Hub reads as: `Unreachable`
    (exit 4) when the Hub could not be reached, `InputError` (exit 2) for a missing, private or
    gated repo, a missing revision or file, a refused token, offline mode; None for any other
    error, which keeps its traceback (a bug is not a Hub failure).

    Recognised precisely: huggingface_hub's exceptions and httpx2's transport errors, raised
    as they are or as the `__cause__` of the OSError that transformers and
    sentence-transformers raise `from` them. Each message names what was fetched or pushed to
    (`location` when the caller knows it, else read from the failed request's URL), the cause,
    and the way out; tokens are masked.
    """
    failure = error
    while not isinstance(failure, _HUB_FAILURES):
        if not isinstance(failure, OSError) or failure.__cause__ is None:
            return None
        failure = failure.__cause__
    request = _request_of(failure)
    location = location or _location_of(failure, request)
    mapped = _mapped(failure, location, request)
    return type(mapped)(scrub(str(mapped)))


def model_error(
    error: BaseException, model: str, revision: str | None = None
) -> InputError | Unreachable | None:
    """`user_error` for a failure to load the model `model` (at `revision`), named as such even
    where the failure does not say which repo it was about (offline); None where `model` is a
    local path or no repo id, or the failure is not the Hub's."""
    if Path(model).exists():
        return None
    try:
        validate_repo_id(model)
    except HFValidationError:
        return None
    return user_error(error, HubLocation(model, "model", revision=revision))


def _mapped(
    failure: BaseException, location: HubLocation | None, request: httpx2.Request | None
) -> InputError | Unreachable:
    endpoint = _endpoint()
    repo = f"{location.repo_type} repo '{location.repo_id}'" if location else "the repo"
    what = location.named() if location else _url(request) if request else "the files asked for"
    pushing = request is not None and _is_push(request)
    if isinstance(failure, GatedRepoError):
        return InputError(
            f"{repo} on {endpoint} is gated: accept its terms on its page, then {LOG_IN} "
            "(a token of an account that has access)"
        )
    if isinstance(failure, RepositoryNotFoundError):
        return InputError(
            f"{repo} not found on {endpoint}: check the id (and its type: hf://datasets/... for "
            f"a dataset, hf://spaces/... for a Space); if it is private, {LOG_IN}"
        )
    if isinstance(failure, RevisionNotFoundError):
        revision = location.revision if location else None
        return InputError(
            f"revision '{revision or 'main'}' not found in {repo} on {endpoint}: use an "
            "existing branch, tag or commit sha"
        )
    if isinstance(failure, OfflineModeIsEnabled):
        return InputError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot reach {endpoint} for "
            f"{location.uri if location else what}; unset HF_HUB_OFFLINE, or fetch it while "
            "online beforehand (`research-r1 download` fetches a model and its index)"
        )
    if isinstance(failure, LocalEntryNotFoundError) and _offline():
        return _not_cached(location.uri if location else what)
    if isinstance(failure, (LocalEntryNotFoundError, httpx2.TransportError)):
        return _unreachable(endpoint, what, _cause(failure), pushing, location)
    if isinstance(failure, EntryNotFoundError):
        return _no_entry(what)
    if isinstance(failure, HFValidationError):
        given = f" ({location.uri})" if location else ""
        return InputError(f"not a Hub repo id{given}: {_first_line(failure)}")
    if isinstance(failure, LocalTokenNotFoundError):
        return InputError(f"no Hub token here: {LOG_IN}")
    assert isinstance(failure, HfHubHTTPError)
    status = failure.response.status_code if failure.response is not None else None
    if status in (401, 403):
        if pushing:
            lacks = "is missing or invalid" if status == 401 else "has no write access to it"
            return InputError(
                f"{endpoint} refused the push to {repo} (HTTP {status}): the token {lacks}; "
                f"{LOG_IN} with a write token of an account that may write there"
            )
        return InputError(
            f"{endpoint} refused access to {repo} (HTTP {status}): the token is missing, "
            f"invalid or has no access to it; {LOG_IN}"
        )
    said = failure.server_message or _first_line(failure)
    if status in _RETRY_STATUS:
        return Unreachable(
            f"{endpoint} answered HTTP {status} for {what} through every retry ({said}); "
            "try again later"
        )
    return InputError(f"{endpoint} answered HTTP {status} for {what}: {said}")


def _unreachable(
    endpoint: str, what: str, cause: str, pushing: bool, location: HubLocation | None
) -> Unreachable:
    if pushing:
        return Unreachable(
            f"cannot reach {endpoint} to push to {what} ({cause}): connect to the network (or "
            "fix HF_ENDPOINT) and run it again"
        )
    model = location is not None and location.repo_type == "model"
    download = " (`research-r1 download` puts a model there)" if model else ""
    return Unreachable(
        f"cannot reach {endpoint} to fetch {what} ({cause}): connect to the network (or fix "
        f"HF_ENDPOINT); if it is in the Hub cache{download}, set HF_HUB_OFFLINE=1 to use it"
    )


def unreachable(
    location: HubLocation, cause: str, what: str | None = None
) -> InputError | Unreachable:
    """What a fetch of `location` (`what`, when it says more) that could not reach the Hub reads
    as, for a library that reports it without its cause (datasets' `ConnectionError`):
    `Unreachable`, or, with HF_HUB_OFFLINE=1, an `InputError` saying it is not in the cache."""
    if _offline():
        return _not_cached(location.uri)
    return _unreachable(_endpoint(), what or location.named(), scrub(cause), False, location)


def _no_entry(what: str) -> InputError:
    return InputError(f"no file or folder {what} on {_endpoint()}: check its path and revision")


def _not_cached(what: str) -> InputError:
    return InputError(
        f"{what} is not in the Hub cache and offline mode is on (HF_HUB_OFFLINE=1): download it "
        "once while online (`research-r1 download` fetches a model and its index), or unset "
        "HF_HUB_OFFLINE"
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _cause(failure: BaseException) -> str:
    """The transport error under `failure`, e.g. `ConnectError: [Errno 111] Connection refused`."""
    link: BaseException | None = failure
    while link is not None and not isinstance(link, httpx2.TransportError):
        link = link.__cause__ or link.__context__
    if link is None:
        return "no answer, and not in the Hub cache"
    return f"{type(link).__name__}: {link}" if str(link) else type(link).__name__


def _request_of(failure: BaseException) -> httpx2.Request | None:
    """The HTTP request that failed: an HTTP error's, or the transport error's under it."""
    link: BaseException | None = failure
    while link is not None:
        if isinstance(link, HfHubHTTPError) and link.response is not None:
            return link.response.request
        if isinstance(link, httpx2.RequestError):
            try:
                return link.request
            except RuntimeError:  # raised without one
                return None
        link = link.__cause__ or link.__context__
    return None


# The Hub's URL paths, as huggingface_hub builds them: its API (`/api/models/ORG/NAME/tree/REV`,
# `.../revision/REV`, `.../commit/REV`, ...), file downloads (`/datasets/ORG/NAME/resolve/REV/
# PATH`) and LFS (`/ORG/NAME.git/info/lfs/...`). A repo id is NAME or ORG/NAME.
_REPO_ID = r"(?P<id>[^/]+(?:/[^/]+)?)"
_API_PATH = re.compile(
    rf"/api/(?P<type>models|datasets|spaces)/{_REPO_ID}"
    r"(?:/(?:revision|tree|paths-info|preupload|commit|commits|refs|branch|tag)"
    r"(?:/(?P<rev>[^/]+)(?:/(?P<path>.+))?)?)?"
)
_FILE_PATH = re.compile(
    rf"/(?:(?P<type>datasets|spaces)/)?{_REPO_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
)
_LFS_PATH = re.compile(rf"/(?:(?P<type>datasets|spaces)/)?{_REPO_ID}\.git/.*")
_OFFLINE_URL = re.compile(r"Cannot reach (\S+?):? offline mode")


def _location_of(failure: BaseException, request: httpx2.Request | None) -> HubLocation | None:
    """The repo (and revision and file) a failed Hub request was about, read from its URL (or,
    for offline mode, from the URL its message names); None for a URL of no repo."""
    if request is not None:
        url, method = str(request.url), request.method
    elif isinstance(failure, OfflineModeIsEnabled) and (found := _OFFLINE_URL.search(str(failure))):
        url, method = found.group(1), "GET"
    else:
        return None
    parts, base = urlsplit(url), urlsplit(_endpoint())
    if parts.netloc != base.netloc or not parts.path.startswith(base.path):
        return None
    path = parts.path[len(base.path.rstrip("/")) :]
    if method == "POST" and path == "/api/repos/create":
        return _created(request)
    for pattern in (_API_PATH, _FILE_PATH, _LFS_PATH):
        if found := pattern.fullmatch(path):
            groups = found.groupdict()
            kind = (groups["type"] or "models").removesuffix("s")
            revision = unquote(groups["rev"]) if groups.get("rev") else None
            file = unquote(groups.get("path") or "").removeprefix("./")
            return HubLocation(unquote(found["id"]), kind, file, revision)
    return None


def _created(request: httpx2.Request | None) -> HubLocation | None:
    """The repo a `create_repo` request was for, from its JSON body."""
    try:
        body = json.loads(request.content) if request is not None else {}
    except (httpx2.RequestNotRead, ValueError):
        return None
    if not isinstance(body, dict) or not body.get("name"):
        return None
    owner = f"{body['organization']}/" if body.get("organization") else ""
    return HubLocation(f"{owner}{body['name']}", str(body.get("type") or "model"))


def _is_push(request: httpx2.Request) -> bool:
    """Whether a request writes to the Hub (creates a repo, commits, uploads)."""
    return request.method in ("POST", "PUT", "DELETE") and "/paths-info/" not in request.url.path


def _url(request: httpx2.Request) -> str:
    parts = urlsplit(str(request.url))
    return f"'{parts.scheme}://{parts.netloc}{parts.path}'"


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
    if not location.path and not _offline():
        # The repo was found (else snapshot_download raised) and none of its files matched:
        # an empty folder, e.g. Search-R1's published Flat, which holds no index_info.json.
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        if _offline():
            raise _not_cached_offline(location)
        raise _no_entry(location.describe())
    return folder


def _not_cached_offline(location: HubLocation) -> InputError:
    return _not_cached(location.uri)


def _endpoint() -> str:
    return constants.ENDPOINT


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set since then."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in constants.ENV_VARS_TRUE_VALUES


# What a push can fail with from outside this program (the Hub's answer, the network, the disk):
# a caller that must survive a failed push catches these, and lets a bug in its own code raise.
PUSH_ERRORS: tuple[type[Exception], ...] = (HfHubHTTPError, httpx2.HTTPError, OSError, Unreachable)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, HfHubHTTPError):
        response = error.response
        return response is not None and response.status_code in _RETRY_STATUS
    if isinstance(error, OfflineModeIsEnabled):
        return False
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError))
