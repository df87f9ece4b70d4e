"""A loopback Hugging Face Hub: a small HTTP server on 127.0.0.1 for tests without network.

No installable local Hub server exists, so this module speaks the subset of the Hub's HTTP API that
the real `huggingface_hub` 2.4 client and `datasets` use: repo creation and info, tree listing,
paths-info, refs, commits, branch and tag creation, preupload, ndjson commits, the LFS batch
protocol, `/resolve` downloads (with HEAD, Range and the `X-Repo-Commit` / `ETag` /
`X-Linked-Etag` / `X-Linked-Size` headers), validate-yaml and whoami. Real client calls
(`HfApi.upload_folder`, `hf_hub_download`, `snapshot_download`, `HfFileSystem`,
`Dataset.push_to_hub`, `load_dataset`) then run unchanged against it.

How it mirrors the Hub:
- Every commit gets a new sha and keeps the full file tree, so a branch, a tag or a commit sha
  resolves to the content of that revision. Repos start with an "initial commit" holding
  `.gitattributes`, as on the Hub.
- Files larger than `LFS_THRESHOLD_BYTES`, or binary ones, are uploaded through LFS: the LFS
  storage is served on `localhost` (another origin than the `127.0.0.1` endpoint, like the Hub's
  CDN), with signed URLs, so the client follows the same redirect and auth-stripping paths.
- Auth: `TOKEN` is the one valid token. A wrong token gets 401 on every endpoint, writes need the
  token, and a private repo is invisible without it (401 `RepoNotFound`, as on the Hub).
- Errors carry the `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`)
  that the client turns into its typed exceptions.

Contents live in a temporary directory (content-addressed blobs) and repo metadata in memory;
both disappear with the server. Clients must set `HF_HUB_DISABLE_XET=1` and point `HF_ENDPOINT`
at `LoopbackHub.endpoint` before importing `huggingface_hub` (see tests/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TOKEN = "hf_LoopbackHubWriteToken0123456789abc"  # shaped like a real token: hf_ + 34
USER = "loopback-user"
LFS_THRESHOLD_BYTES = 1024
MAX_BODY_BYTES = 512 * 1024 * 1024
MAX_CONCURRENT_REQUESTS = 32
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)
_REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
_API_REPO = r"/api/(?P<types>models|datasets|spaces)/" + _REPO
_GIT_REPO = r"/(?:(?P<prefix>datasets|spaces)/)?" + _REPO


class HubError(Exception):
    """An HTTP error answer, with the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers: dict[str, str] = {}


@dataclass(frozen=True)
class Entry:
    """One file in a commit's tree: its content blob, and its git blob oid (of the LFS pointer
    file for LFS files, as git stores them)."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @staticmethod
    def regular(sha256: str, data: bytes) -> Entry:
        return Entry(sha256, len(data), False, _git_oid(data))

    @staticmethod
    def lfs_file(sha256: str, size: int) -> Entry:
        return Entry(sha256, size, True, _git_oid(_lfs_pointer(sha256, size)))


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Entry]
    title: str
    message: str
    date: str


@dataclass
class Failure:
    """Requests whose path contains `path_part` get `status`, `remaining` more times."""

    path_part: str
    status: int
    remaining: int


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


class LoopbackHub:
    """The server and its state. Use as a context manager, or call `start()` and `stop()`.

    Attributes for tests: `endpoint` (for HF_ENDPOINT), `token`, `new_repo_id(name)`,
    `requests` (the last request lines, e.g. to check the LFS path ran),
    `inject_failure(path_part, status, times)` to make matching requests fail, and `down()`, a
    block during which the Hub cannot be reached.
    """

    def __init__(self, port: int = 0) -> None:
        self.token = TOKEN
        self.requests: deque[str] = deque(maxlen=2000)
        self._root = Path(tempfile.mkdtemp(prefix="loopback-hub-"))
        self._blobs = self._root / "blobs"
        self._blobs.mkdir()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._failures: list[Failure] = []
        self._lock = threading.RLock()
        self._secret = hashlib.sha256(self._root.name.encode()).digest()
        self._names = itertools.count(1)
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.hub = self
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> LoopbackHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def new_repo_id(self, name: str) -> str:
        """A repo id no other caller of this server has been given: `loopback-user/NAME-N`."""
        return f"{USER}/{name}-{next(self._names)}"

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The Hub unreachable: nothing listens on its port, so every connection is refused,
        until the block ends; then it serves again on the same port, with the same repos."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        try:
            yield
        finally:
            self._server = _Server(("127.0.0.1", self.port), _Handler)
            self._server.hub = self
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()

    def inject_failure(self, path_part: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests whose path contains `path_part` with `status`."""
        with self._lock:
            self._failures.append(Failure(path_part, status, times))

    # --- state shared by the request threads ---

    def take_failure(self, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure.path_part in path and failure.remaining > 0:
                    failure.remaining -= 1
                    return failure.status
        return None

    def store_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blobs / sha256
        if not path.exists():
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha256

    def blob_path(self, sha256: str) -> Path | None:
        path = self._blobs / sha256
        return path if re.fullmatch(r"[0-9a-f]{64}", sha256) and path.exists() else None

    def sign(self, action: str, oid: str) -> str:
        return hmac.new(self._secret, f"{action}:{oid}".encode(), hashlib.sha256).hexdigest()

    def storage_url(self, action: str, oid: str, size: int | None = None) -> str:
        """A signed LFS storage URL on `localhost`, an origin other than the API's."""
        url = f"http://localhost:{self.port}/lfs-storage/{oid}?sig={self.sign(action, oid)}"
        return url if size is None else f"{url}&size={size}"

    def repo(self, repo_type: str, repo_id: str, authed: bool) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            status = 404 if authed else 401
            raise HubError(status, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def create_repo(
        self, repo_type: str, repo_id: str, private: bool, sdk: str | None
    ) -> tuple[Repo, bool]:
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return self._repos[(repo_type, repo_id)], False
            repo = Repo(repo_type, repo_id, private, sdk, _now())
            self._repos[(repo_type, repo_id)] = repo
            tree = {".gitattributes": Entry.regular(self.store_blob(GITATTRIBUTES), GITATTRIBUTES)}
            self.add_commit(repo, "main", tree, "initial commit", "")
            return repo, True

    def add_commit(self, repo: Repo, branch: str, tree: dict, title: str, message: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([parent, sorted((p, e.sha256) for p, e in tree.items()), title, _now()])
        oid = hashlib.sha1(f"{seed}{len(repo.commits)}".encode()).hexdigest()
        commit = Commit(oid, parent, tree, title, message, _now())
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    @staticmethod
    def resolve_revision(repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]


class _Server(ThreadingHTTPServer):
    """A threading server with a bound on concurrent requests (connections close after each)."""

    daemon_threads = True
    hub: LoopbackHub

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    """Parses one request, routes it to a method of this class, and writes the answer."""

    server: _Server
    timeout = 30
    routes = (
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", _API_REPO + r"/refs", "refs"),
        ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", _API_REPO + r"/tag/(?P<rev>[^/]+)", "create_tag"),
        ("POST", _GIT_REPO + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", _GIT_REPO + r"\.git/info/lfs/objects/verify", "lfs_verify"),
        ("GET", _GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "storage_get"),
        ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "storage_put"),
    )

    # --- plumbing ---

    def log_message(self, format: str, *args: object) -> None:
        """Silent: tests read `LoopbackHub.requests` instead of stderr."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET", head=True)

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    @property
    def hub(self) -> LoopbackHub:
        return self.server.hub

    def _dispatch(self, method: str, head: bool = False) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.head_only = head
        self.hub.requests.append(f"{self.command} {url.path}")
        self.body_read = False
        try:
            status = self.hub.take_failure(url.path)
            if status is not None:
                raise HubError(status, f"injected failure {status}")
            self.authed = self._check_token()
            for route_method, pattern, name in self.routes:
                match = re.fullmatch(pattern, url.path)
                if route_method == method and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, f"handle_{name}")(**params)
                    return
            raise HubError(404, f"no loopback route for {self.command} {url.path}")
        except HubError as error:
            self._send_error(error)
        except (KeyError, TypeError, ValueError) as error:
            self._send_error(HubError(400, f"malformed request: {error!r}"))

    def _send_error(self, error: HubError) -> None:
        if not self.body_read:
            # Drain the body so the client is not cut off while still sending it.
            with contextlib.suppress(HubError, ValueError):
                self._body()
        headers = {"X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send_json({"error": error.message}, error.status, headers)

    def _check_token(self) -> bool:
        header = self.headers.get("Authorization")
        if header is None:
            return False
        if header != f"Bearer {TOKEN}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _require_write(self) -> None:
        if not self.authed:
            raise HubError(401, "You must be authenticated to write to the Hub")

    def _body(self) -> bytes:
        self.body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "request body too large")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        try:
            body = json.loads(self._body() or b"{}")
        except ValueError as error:
            raise HubError(400, f"invalid JSON body: {error}") from error
        if not isinstance(body, dict):
            raise HubError(400, "JSON body must be an object")
        return body

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def _send_json(self, payload: object, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _send_blob(self, path: Path, headers: dict[str, str]) -> None:
        """Send a file, honouring a single `Range: bytes=a-b` request as the Hub's storage does."""
        size = path.stat().st_size
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not match or match.groups() == ("", ""):
            self._send(200, path.read_bytes(), headers)
            return
        first, last = match.groups()
        start = int(first) if first else max(size - int(last), 0)
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size or start > end:
            raise HubError(416, f"range not satisfiable for a {size}-byte file")
        with path.open("rb") as file:
            file.seek(start)
            data = file.read(end - start + 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, data, headers)

    def _host(self) -> str:
        return f"http://{self.headers.get('Host', f'127.0.0.1:{self.hub.port}')}"

    def _repo(self, types: str, ns: str, name: str) -> Repo:
        return self.hub.repo(REPO_TYPES[types], f"{ns}/{name}", self.authed)

    def _entry_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.tree.get(path)
        if entry is None:
            children = sorted(
                f"{p}:{e.sha256}" for p, e in commit.tree.items() if p.startswith(path + "/")
            )
            info = {"type": "directory", "oid": _git_oid("\n".join(children).encode()), "size": 0}
        else:
            info = {"type": "file", "oid": entry.oid, "size": entry.size}
            if entry.lfs:
                info["lfs"] = {
                    "oid": entry.sha256,
                    "size": entry.size,
                    "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
                }
        info["path"] = path
        if expand:
            last = self._last_commit(repo, commit, path)
            info["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return info

    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The oldest ancestor in the unbroken run of commits where `path` looks the same."""

        def snapshot(c: Commit) -> list:
            return sorted(
                (p, e) for p, e in c.tree.items() if p == path or p.startswith(path + "/")
            )

        current = snapshot(commit)
        while commit.parent is not None:
            parent = repo.commits[commit.parent]
            if snapshot(parent) != current:
                break
            commit = parent
        return commit

    @staticmethod
    def _folders(tree: dict[str, Entry]) -> set[str]:
        return {p.rsplit("/", i)[0] for p in tree for i in range(1, p.count("/") + 1)}

    @staticmethod
    def _branch(repo: Repo, rev: str) -> str:
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        return rev

    # --- endpoints ---

    def handle_whoami(self) -> None:
        if not self.authed:
            raise HubError(401, "Invalid credentials in Authorization header")
        token_info = {"displayName": "loopback", "role": "write"}
        self._send_json(
            {
                "type": "user",
                "id": "loopback-user-id",
                "name": USER,
                "fullname": "Loopback User",
                "email": None,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": token_info},
            }
        )

    def handle_create_repo(self) -> None:
        self._require_write()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        name, namespace = body.get("name"), body.get("organization") or USER
        if repo_type not in URL_PREFIX or not re.fullmatch(r"[\w.-]+", str(name)):
            raise HubError(400, f"invalid repo type {repo_type!r} or name {name!r}")
        private = body.get("visibility") == "private" or body.get("private") is True
        repo_id = f"{namespace}/{name}"
        _, created = self.hub.create_repo(repo_type, repo_id, private, body.get("sdk"))
        url = f"{self._host()}/{URL_PREFIX[repo_type]}{repo_id}"
        if not created:
            self._send_json(
                {"error": f"You already created this {repo_type} repo", "url": url}, 409
            )
            return
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def handle_validate_yaml(self) -> None:
        content = str(self._json_body().get("content", ""))
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        errors = []
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "YAML metadata must be a mapping"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML: {error}"})
        self._send_json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def handle_repo_info(self, types: str, ns: str, name: str, rev: str = "main") -> None:
        repo = self._repo(types, ns, name)
        with self.hub._lock:
            commit = self.hub.resolve_revision(repo, rev)
            siblings = []
            for path in sorted(commit.tree):
                sibling: dict = {"rfilename": path}
                if self.query.get("blobs", "").lower() == "true":
                    info = self._entry_json(repo, commit, path, expand=False)
                    sibling.update(size=info["size"], blobId=info["oid"])
                    if "lfs" in info:
                        lfs = info["lfs"]
                        sibling["lfs"] = {
                            "size": lfs["size"],
                            "sha256": lfs["oid"],
                            "pointerSize": lfs["pointerSize"],
                        }
                siblings.append(sibling)
        info = {
            "_id": repo.repo_id,
            "id": repo.repo_id,
            "author": ns,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.sdk:
            info["sdk"] = repo.sdk
        self._send_json(info)

    def handle_tree(self, types: str, ns: str, name: str, rev: str, path: str = "") -> None:
        repo = self._repo(types, ns, name)
        recursive = self.query.get("recursive", "").lower() == "true"
        expand = self.query.get("expand", "").lower() == "true"
        path = path.strip("/")
        with self.hub._lock:
            commit = self.hub.resolve_revision(repo, rev)
            folders = self._folders(commit.tree)
            if path and path not in folders:
                raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
            prefix = f"{path}/" if path else ""
            names = sorted(
                p
                for p in [*folders, *commit.tree]
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
            )
            entries = [self._entry_json(repo, commit, p, expand) for p in names]
        self._send_json(entries)

    def handle_paths_info(self, types: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(types, ns, name)
        form = parse_qs(self._body().decode())
        expand = form.get("expand", ["false"])[-1].lower() == "true"
        with self.hub._lock:
            commit = self.hub.resolve_revision(repo, rev)
            folders = self._folders(commit.tree)
            paths = [p.strip("/") for p in form.get("paths", [])]
            infos = [
                self._entry_json(repo, commit, p, expand)
                for p in paths
                if p in commit.tree or p in folders
            ]
        self._send_json(infos)

    def handle_refs(self, types: str, ns: str, name: str) -> None:
        repo = self._repo(types, ns, name)

        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid}
                for n, oid in sorted(names.items())
            ]

        with self.hub._lock:
            payload = {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
                "pullRequests": [],
            }
        self._send_json(payload)

    def handle_commits(self, types: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(types, ns, name)
        with self.hub._lock:
            commit: Commit | None = self.hub.resolve_revision(repo, rev)
            history = []
            while commit is not None:
                history.append(
                    {
                        "id": commit.oid,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": USER}],
                        "date": commit.date,
                    }
                )
                commit = repo.commits[commit.parent] if commit.parent else None
        self._send_json(history)

    def handle_preupload(self, types: str, ns: str, name: str, rev: str) -> None:
        self._require_write()
        repo = self._repo(types, ns, name)
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, "preupload body needs a 'files' list")
        with self.hub._lock:
            tree = repo.commits[repo.branches[self._branch(repo, rev)]].tree
            answers = []
            for file in files:
                sample = base64.b64decode(file.get("sample", ""))
                lfs = int(file["size"]) > LFS_THRESHOLD_BYTES or b"\0" in sample
                existing = tree.get(file["path"])
                oid = None
                if existing is not None:
                    oid = existing.sha256 if lfs else existing.oid
                answers.append(
                    {
                        "path": file["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
        self._send_json({"files": answers, "commitOid": repo.branches[rev]})

    def handle_commit(self, types: str, ns: str, name: str, rev: str) -> None:
        self._require_write()
        repo = self._repo(types, ns, name)
        if self.query.get("create_pr"):
            raise HubError(400, "the loopback Hub does not support pull requests")
        try:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        except ValueError as error:
            raise HubError(400, f"invalid ndjson commit payload: {error}") from error
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub._lock:
            head = repo.branches[self._branch(repo, rev)]
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, f"A commit has happened since {parent}: head is {head}")
            tree = dict(repo.commits[head].tree)
            for line in lines[1:]:
                self._apply(tree, line.get("key"), line.get("value") or {})
            commit = self.hub.add_commit(
                repo, rev, tree, header.get("summary") or "update", header.get("description", "")
            )
        url = f"{self._host()}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._send_json(
            {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}
        )

    def _apply(self, tree: dict[str, Entry], key: str | None, value: dict) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise HubError(400, f"invalid path in commit: {path!r}")
        if key == "file":
            data = base64.b64decode(value.get("content", ""))
            tree[path] = Entry.regular(self.hub.store_blob(data), data)
        elif key == "lfsFile":
            oid = str(value.get("oid", ""))
            blob = self.hub.blob_path(oid)
            if blob is None:
                raise HubError(400, f"LFS object {oid} for {path} was never uploaded")
            tree[path] = Entry.lfs_file(oid, blob.stat().st_size)
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for file in [p for p in tree if p.startswith(path + "/")]:
                del tree[file]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")

    def handle_create_branch(self, types: str, ns: str, name: str, branch: str) -> None:
        self._require_write()
        repo = self._repo(types, ns, name)
        start = self._json_body().get("startingPoint") or "main"
        with self.hub._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self.hub.resolve_revision(repo, start).oid
        self._send_json({})

    def handle_create_tag(self, types: str, ns: str, name: str, rev: str) -> None:
        self._require_write()
        repo = self._repo(types, ns, name)
        tag = str(self._json_body().get("tag", ""))
        if not re.fullmatch(r"[\w.-]+", tag):
            raise HubError(400, f"invalid tag name {tag!r}")
        with self.hub._lock:
            if tag in repo.tags:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = self.hub.resolve_revision(repo, rev).oid
        self._send_json({})

    def handle_lfs_batch(self, ns: str, name: str, prefix: str = "models") -> None:
        self._require_write()
        repo = self._repo(prefix, ns, name)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "the loopback Hub only implements LFS uploads")
        verify = (
            f"{self._host()}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"
        )
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", -1))
            answer: dict = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                answer["error"] = {"code": 422, "message": f"invalid LFS object {oid}"}
            elif self.hub.blob_path(oid) is None:
                answer["actions"] = {
                    "upload": {"href": self.hub.storage_url("upload", oid, size), "header": {}},
                    "verify": {"href": verify, "header": {}},
                }
            objects.append(answer)
        self._send_json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def handle_lfs_verify(self, ns: str, name: str, prefix: str = "models") -> None:
        self._require_write()
        self._repo(prefix, ns, name)
        body = self._json_body()
        blob = self.hub.blob_path(str(body.get("oid")))
        if blob is None or blob.stat().st_size != body.get("size"):
            raise HubError(404, f"LFS object {body.get('oid')} not found or wrong size")
        self._send_json({})

    def handle_storage_put(self, oid: str) -> None:
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub.sign("upload", oid)):
            raise HubError(403, "bad signature on LFS upload URL")
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid or str(len(data)) != self.query.get("size"):
            raise HubError(400, f"uploaded bytes do not match LFS object {oid}")
        self.hub.store_blob(data)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def handle_storage_get(self, oid: str) -> None:
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub.sign("download", oid)):
            raise HubError(403, "bad signature on LFS download URL")
        blob = self.hub.blob_path(oid)
        if blob is None:
            raise HubError(404, f"LFS object {oid} not found")
        self._send_blob(blob, {"ETag": f'"{oid}"'})

    def handle_resolve(
        self, ns: str, name: str, rev: str, path: str, prefix: str = "models"
    ) -> None:
        repo = self._repo(prefix, ns, name)
        with self.hub._lock:
            commit = self.hub.resolve_revision(repo, rev)
            entry = commit.tree.get(path)
        if entry is None:
            error = HubError(404, f"Entry not found: {path}", "EntryNotFound")
            error.headers["X-Repo-Commit"] = commit.oid
            raise error
        headers = {"X-Repo-Commit": commit.oid}
        if entry.lfs:
            headers.update(
                {
                    "ETag": f'"{entry.oid}"',
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                    "Location": self.hub.storage_url("download", entry.sha256),
                }
            )
            self._send(302, b"", headers)
            return
        blob = self.hub.blob_path(entry.sha256)
        assert blob is not None, f"blob {entry.sha256} missing from the loopback store"
        headers["ETag"] = f'"{entry.oid}"'
        self._send_blob(blob, headers)
