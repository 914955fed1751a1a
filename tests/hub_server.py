"""A small Hugging Face Hub-compatible HTTP server for tests (not part of the package).

It implements the endpoints that ``huggingface_hub`` 2.x uses for a push/pull round trip: repo creation, whoami,
preupload (every file is answered ``"regular"`` so it arrives base64 inside the commit),
NDJSON commits with deletions, branch creation, README metadata validation, model info,
tree listing and ``resolve`` downloads. Every commit keeps a full snapshot of the repo so
any commit sha can be pinned, and files are served back byte for byte.

The server listens on 127.0.0.1 on an ephemeral port, serves each connection in a daemon
thread with a socket timeout, answers 413 to bodies larger than ``max_body_bytes`` (default
``MAX_BODY_BYTES``) and stops with :meth:`HubServer.stop`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY_BYTES = 64 * 1024 * 1024
SOCKET_TIMEOUT_S = 30
DEFAULT_TOKEN = "hf_local_test_token"
DEFAULT_USER = "tester"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_YAML_BLOCK_RE = re.compile(r"^\s*---\r?\n([\S\s]*?)\r?\n---[ \t]*(?:\r?\n|$)")
_PIPELINE_TAGS = {"text-generation", "text2text-generation", "fill-mask", "text-classification"}


def git_blob_sha(data: bytes) -> str:
    """Return the git blob sha1 of ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error answered with the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit


@dataclass
class Commit:
    """One commit: its sha, message and the full snapshot of the repo after it."""

    sha: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    """A model repo: commits by sha (in creation order) and branch heads."""

    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """Return the commit a branch name or full commit sha points to."""
        sha = self.branches.get(revision, revision if revision in self.commits else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[sha]


class HubState:
    """Everything the server stores, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []  # requests not implemented or that failed (500)
        self._counter = itertools.count()

    def repo(self, repo_id: str) -> Repo:
        """Return a repo or raise the Hub's ``RepoNotFound`` error."""
        if repo_id not in self.repos:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return self.repos[repo_id]

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        """Create a repo whose ``main`` branch points at an empty initial commit."""
        repo = Repo(repo_id=repo_id, private=private)
        self.repos[repo_id] = repo
        self.add_commit(repo, "main", "initial commit", {})
        return repo

    def add_commit(self, repo: Repo, branch: str, message: str, files: dict[str, bytes]) -> str:
        """Record a snapshot as a new commit on ``branch`` and return its sha."""
        digest = hashlib.sha1(f"{repo.repo_id}\0{branch}\0{message}\0{next(self._counter)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha(files[path])}\0".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha=sha, message=message, files=dict(files))
        repo.branches[branch] = sha
        return sha


def _front_matter_errors(content: str) -> tuple[list[str], list[str]]:
    """Validate a README's YAML metadata roughly like the Hub does: (errors, warnings)."""
    match = _YAML_BLOCK_RE.match(content)
    if match is None:
        return [], ["Empty or missing yaml metadata in repo card"]
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return [f"YAML could not be parsed: {err}"], []
    if not isinstance(meta, dict):
        return ["YAML metadata must be a mapping"], []
    errors = [f'"{k}" must be a string' for k in ("license", "library_name") if not _is_opt(meta, k, str)]
    errors += [f'"{k}" must be a list of strings' for k in ("tags", "datasets") if not _is_str_list(meta, k)]
    if meta.get("pipeline_tag") is not None and meta["pipeline_tag"] not in _PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be one of {sorted(_PIPELINE_TAGS)}')
    return errors + _model_index_errors(meta.get("model-index")), []


def _is_opt(meta: dict, key: str, kind: type) -> bool:
    """True when ``meta[key]`` is absent or an instance of ``kind``."""
    return meta.get(key) is None or isinstance(meta[key], kind)


def _is_str_list(meta: dict, key: str) -> bool:
    """True when ``meta[key]`` is absent or a list of strings."""
    value = meta.get(key)
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _model_index_errors(model_index: object) -> list[str]:
    """Check the structure of a ``model-index`` entry (name, results, task, dataset, metrics)."""
    if model_index is None:
        return []
    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty list']
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in model.get("results") or [None]:
            errors += _result_errors(result)
    return errors


def _result_errors(result: object) -> list[str]:
    """Check one ``model-index[].results[]`` entry."""
    if not isinstance(result, dict):
        return ['"model-index[].results" must be a non-empty list of mappings']
    task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
    errors = []
    if not isinstance(task, dict) or not isinstance(task.get("type"), str):
        errors.append('"results[].task.type" must be a string')
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("name", "type")):
        errors.append('"results[].dataset" needs string "name" and "type"')
    if not isinstance(metrics, list) or not metrics:
        return errors + ['"results[].metrics" must be a non-empty list']
    for metric in metrics:
        if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
            errors.append('"results[].metrics[]" needs a string "type" and a "value"')
    return errors


class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP request to the Hub endpoint it implements."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet; requests are recorded in ``HubState.requests`` instead."""

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        """Parse the URL, call the route under the state lock and write the answer."""
        state = self.server.state
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with state.lock:
            state.requests.append((self.command, url.path))
        try:
            body = self._read_body()
            with state.lock:
                status, payload, headers = self._route(parts, query, body)
        except HubError as err:
            status, payload, headers = _error_answer(err)
        except Exception as err:  # a malformed request must still get an answer, not a dropped connection
            self.close_connection = True
            with state.lock:
                state.unhandled.append((self.command, self.path))
            status, payload, headers = _error_answer(HubError(500, f"test hub failure: {err!r}"))
        self._respond(status, b"" if head else payload, headers, len(payload))

    def _read_body(self) -> bytes:
        """Read exactly Content-Length bytes (bounded by the server's ``max_body_bytes``)."""
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise HubError(411, "chunked bodies are not supported; send Content-Length")
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise HubError(413, f"body of {length} bytes exceeds {self.server.max_body_bytes}")
        return self.rfile.read(length) if length else b""

    def _respond(self, status: int, data: bytes, headers: dict[str, str], length: int) -> None:
        """Write status, headers (with Content-Length) and body."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _route(self, parts: list[str], query: dict, body: bytes) -> tuple[int, bytes, dict]:
        """Map a request to its endpoint function."""
        method = self.command if self.command != "HEAD" else "GET"
        if parts[:1] == ["api"]:
            return self._route_api(method, parts[1:], query, body)
        if len(parts) >= 5 and parts[2] == "resolve" and method == "GET":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        return self._unhandled()

    def _route_api(self, method: str, parts: list[str], query: dict, body: bytes) -> tuple[int, bytes, dict]:
        """Map an ``/api/...`` request to its endpoint function."""
        if method == "GET" and parts == ["whoami-v2"]:
            return _json(self._whoami())
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo(_load_json(body))
        if method == "POST" and parts == ["validate-yaml"]:
            return self._validate_yaml(_load_json(body))
        if len(parts) < 3 or parts[0] != "models":
            return self._unhandled()
        repo_id, action, rest = "/".join(parts[1:3]), parts[3:4], parts[4:]
        if method == "GET" and not action:
            return _json(self._model_info(repo_id, "main", query))
        if method == "GET" and action == ["revision"] and len(rest) == 1:
            return _json(self._model_info(repo_id, rest[0], query))
        if method == "GET" and action == ["tree"] and rest:
            return _json(self._tree(repo_id, rest[0], "/".join(rest[1:]), _flag(query, "recursive")))
        if method == "POST" and action == ["preupload"] and len(rest) == 1:
            return _json(self._preupload(repo_id, rest[0], _load_json(body), query))
        if method == "POST" and action == ["commit"] and len(rest) == 1:
            return _json(self._commit(repo_id, rest[0], body, query))
        if method == "POST" and action == ["branch"] and len(rest) == 1:
            return _json(self._create_branch(repo_id, rest[0], _load_json(body)))
        return self._unhandled()

    def _unhandled(self) -> tuple[int, bytes, dict]:
        """Record and reject a request the fixture does not implement."""
        self.server.state.unhandled.append((self.command, self.path))
        raise HubError(404, f"not implemented by the test hub: {self.command} {self.path}")

    # --- authentication -------------------------------------------------------------

    def _authorized(self) -> bool:
        """True when the request carries the server's token."""
        return self.headers.get("Authorization") == f"Bearer {self.server.token}"

    def _require_auth(self) -> None:
        """Reject writes without the server's token."""
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_repo(self, repo_id: str) -> Repo:
        """Return a repo the caller may read (private repos need the token)."""
        repo = self.server.state.repo(repo_id)
        if repo.private and not self._authorized():
            raise HubError(401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str) -> Repo:
        """Return a repo the caller may write to."""
        self._require_auth()
        return self.server.state.repo(repo_id)

    # --- endpoints ------------------------------------------------------------------

    def _whoami(self) -> dict:
        """GET /api/whoami-v2."""
        self._require_auth()
        token = {"displayName": "test token", "role": "write"}
        return {"type": "user", "name": self.server.user, "orgs": [], "auth": {"accessToken": token}}

    def _create_repo(self, payload: dict) -> tuple[int, bytes, dict]:
        """POST /api/repos/create: 200 with the url, or 409 if the repo exists."""
        self._require_auth()
        name, namespace = payload.get("name", ""), payload.get("organization") or self.server.user
        valid_names = _NAME_RE.match(name) and _NAME_RE.match(namespace)
        if payload.get("type", "model") != "model" or not valid_names:
            raise HubError(400, f"invalid repo: type={payload.get('type')!r} name={namespace}/{name}")
        repo_id, state = f"{namespace}/{name}", self.server.state
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in state.repos:
            return 409, json.dumps({"error": "You already created this model repo", "url": url}).encode(), {}
        state.create_repo(repo_id, private=payload.get("visibility") == "private")
        return _json({"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict) -> tuple[int, bytes, dict]:
        """POST /api/validate-yaml: 400 with the errors when the README metadata is invalid.

        JSON ``{"errors": [...], "warnings": [...]}``, or the error lines for ``Accept: text/plain``.
        """
        errors, warnings = _front_matter_errors(str(payload.get("content", "")))
        status = 400 if errors else 200
        if "text/plain" in self.headers.get("Accept", ""):
            return status, "\n".join(errors).encode(), {"Content-Type": "text/plain"}
        answer = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        return status, json.dumps(answer).encode(), {"Content-Type": "application/json"}

    def _model_info(self, repo_id: str, revision: str, query: dict) -> dict:
        """GET /api/models/{repo}[/revision/{rev}]: sha and siblings."""
        repo = self._readable_repo(repo_id)
        commit = repo.resolve(revision)
        blobs = _flag(query, "blobs")
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_sha(d)} if blobs else {})}
            for p, d in sorted(commit.files.items())
        ]
        return {
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool) -> list[dict]:
        """GET /api/models/{repo}/tree/{rev}[/{path}]: files and folders under ``prefix``."""
        commit = self._readable_repo(repo_id).resolve(revision)
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        under = sorted(p for p in commit.files if p.startswith(base))
        if base and not under:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound", commit.sha)
        folders, files = set(), []
        for path in under:
            parents = Path(path[len(base) :]).parents
            dirs = [base + str(d) for d in reversed(list(parents)[:-1])]
            folders.update(dirs if recursive else dirs[:1])
            if recursive or not dirs:
                files.append({"type": "file", "path": path, "size": len(commit.files[path])})
                files[-1]["oid"] = git_blob_sha(commit.files[path])
        dirs = [{"type": "directory", "path": d, "oid": _tree_oid(commit, d)} for d in sorted(folders)]
        return dirs + files

    def _resolve(self, repo_id: str, revision: str, path: str) -> tuple[int, bytes, dict]:
        """HEAD/GET /{repo}/resolve/{rev}/{path}: the file's bytes with ETag and X-Repo-Commit."""
        commit = self._readable_repo(repo_id).resolve(revision)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.sha)
        data = commit.files[path]
        headers = {
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": commit.sha,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "none",
        }
        return 200, data, headers

    def _preupload(self, repo_id: str, revision: str, payload: dict, query: dict) -> dict:
        """POST /api/models/{repo}/preupload/{rev}: every file is uploaded as "regular"."""
        _reject_pull_requests(query)
        commit = self._writable_repo(repo_id).resolve(revision)
        answers = []
        for item in payload.get("files", []):
            existing = commit.files.get(item["path"])
            oid = git_blob_sha(existing) if existing is not None else None
            answers.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": answers, "commitOid": commit.sha}

    def _commit(self, repo_id: str, branch: str, body: bytes, query: dict) -> dict:
        """POST /api/models/{repo}/commit/{branch}: apply an NDJSON list of operations."""
        _reject_pull_requests(query)
        repo = self._writable_repo(repo_id)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch} is not a branch", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header, files = lines[0]["value"], dict(repo.resolve(branch).files)
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            raise HubError(412, f"parentCommit {parent} is not the head of {branch}")
        for line in lines[1:]:
            _apply_operation(files, line.get("key"), line.get("value") or {})
        sha = self.server.state.add_commit(repo, branch, header.get("summary", ""), files)
        url = f"{self.server.endpoint}/{repo_id}/commit/{sha}"
        return {"success": True, "commitOid": sha, "commitUrl": url}

    def _create_branch(self, repo_id: str, branch: str, payload: dict) -> dict:
        """POST /api/models/{repo}/branch/{branch}: start a branch at ``startingPoint`` (default main)."""
        repo = self._writable_repo(repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if not _NAME_RE.match(branch) or _SHA_RE.match(branch):
            raise HubError(400, f"Invalid branch name: {branch}")
        repo.branches[branch] = repo.resolve(payload.get("startingPoint") or "main").sha
        return {}


def _tree_oid(commit: Commit, folder: str) -> str:
    """A stable identifier for a folder of a commit (git tree oids are not needed here)."""
    return hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()


def _apply_operation(files: dict[str, bytes], key: str | None, value: dict) -> None:
    """Apply one commit operation (file, deletedFile, deletedFolder) to a snapshot."""
    path = str(value.get("path", ""))
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise HubError(400, f"invalid path in commit: {path!r}")
    if key == "file" and value.get("encoding") == "base64":
        files[path] = base64.b64decode(value["content"], validate=True)
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
    elif key == "deletedFolder":
        folder = path.rstrip("/") + "/"
        for name in [p for p in files if p.startswith(folder)]:
            del files[name]
    else:
        raise HubError(400, f"unsupported commit operation {key!r} (only regular base64 files)")


def _reject_pull_requests(query: dict) -> None:
    """Pull requests are out of scope for this fixture."""
    if query.get("create_pr"):
        raise HubError(400, "create_pr is not supported by the test hub")


def _flag(query: dict, name: str) -> bool:
    """A boolean query parameter (``true``/``True``/``1``)."""
    return query.get(name, "").lower() in ("true", "1")


def _load_json(body: bytes) -> dict:
    """Parse a JSON object body or answer 400."""
    try:
        payload = json.loads(body or b"{}")
    except json.JSONDecodeError as err:
        raise HubError(400, f"invalid JSON body: {err}") from err
    if not isinstance(payload, dict):
        raise HubError(400, "JSON body must be an object")
    return payload


def _error_answer(err: HubError) -> tuple[int, bytes, dict]:
    """The Hub's error answer: JSON body plus ``X-Error-Code`` / ``X-Error-Message`` headers."""
    headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), "Content-Type": "application/json"}
    headers.update({"X-Error-Code": err.code} if err.code else {})
    headers.update({"X-Repo-Commit": err.commit} if err.commit else {})
    return err.status, json.dumps({"error": err.message}).encode(), headers


def _json(obj: object) -> tuple[int, bytes, dict]:
    """A 200 JSON answer."""
    return 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the shared state and identity."""

    daemon_threads = True

    def __init__(self, state: HubState, token: str, user: str, max_body_bytes: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state, self.token, self.user, self.max_body_bytes = state, token, user, max_body_bytes
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class HubServer:
    """Start/stop the test Hub and inspect what it stored.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Requests whose body exceeds
    ``max_body_bytes`` are answered 413 (set it small to test how a client reports a too-large upload).
    """

    def __init__(self, token: str = DEFAULT_TOKEN, user: str = DEFAULT_USER, max_body_bytes: int = MAX_BODY_BYTES):
        self.token, self.user, self.max_body_bytes = token, user, max_body_bytes
        self.state = HubState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (kept after :meth:`stop` for offline clients)."""
        if self._endpoint is None:
            raise RuntimeError("the hub server was never started")
        return self._endpoint

    def start(self) -> HubServer:
        """Bind an ephemeral port on 127.0.0.1 and serve in a background thread."""
        self._server = _Server(self.state, self.token, self.user, self.max_body_bytes)
        self._endpoint = self._server.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=SOCKET_TIMEOUT_S)
        self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, tmp_path: Path) -> dict[str, str]:
        """Environment for a client subprocess: ``os.environ`` pointed at this hub.

        Sets HF_ENDPOINT, HF_HOME=``tmp_path/hf_home`` and HF_TOKEN; removes proxies and
        offline switches; disables telemetry and Xet (which would talk to a CAS service).
        """
        drop = ("PROXY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")
        env = {k: v for k, v in os.environ.items() if not any(d in k.upper() for d in drop)}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(Path(tmp_path) / "hf_home"),
            HF_TOKEN=self.token,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
            DO_NOT_TRACK="1",
            NO_PROXY="127.0.0.1,localhost",
            TOKENIZERS_PARALLELISM="false",
        )
        return env

    # --- inspection -----------------------------------------------------------------

    def repo_ids(self) -> list[str]:
        """Ids of all repos created so far."""
        with self.state.lock:
            return sorted(self.state.repos)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The snapshot stored for ``repo_id`` at a branch or commit sha."""
        with self.state.lock:
            return dict(self.state.repo(repo_id).resolve(revision).files)

    def commits(self, repo_id: str) -> list[str]:
        """Commit shas of a repo in creation order (the first is the empty initial commit)."""
        with self.state.lock:
            return list(self.state.repo(repo_id).commits)

    def branches(self, repo_id: str) -> dict[str, str]:
        """Branch name -> head commit sha."""
        with self.state.lock:
            return dict(self.state.repo(repo_id).branches)

    def is_private(self, repo_id: str) -> bool:
        """Whether the repo was created private."""
        with self.state.lock:
            return self.state.repo(repo_id).private

    def seed(self, repo_id: str, files: dict[str, bytes], branch: str = "main", message: str = "seed") -> str:
        """Store a commit directly (no client involved); creates the repo if needed. Returns the sha."""
        with self.state.lock:
            repo = self.state.repos.get(repo_id) or self.state.create_repo(repo_id, private=False)
            return self.state.add_commit(repo, branch, message, files)

    def seed_dir(self, repo_id: str, directory: Path, branch: str = "main") -> str:
        """Store every file under ``directory`` as one commit; returns the sha."""
        paths = [p for p in directory.rglob("*") if p.is_file()]
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in paths}
        return self.seed(repo_id, files, branch=branch)
