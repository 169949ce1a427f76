"""In-process emulation of the Hugging Face Hub HTTP API, for tests.

`FakeHub` serves a small, in-memory subset of the Hub API with the standard library's
`ThreadingHTTPServer` on 127.0.0.1 (OS-assigned port), so that the real `huggingface_hub`
client can be exercised end to end by pointing `HF_ENDPOINT` at `FakeHub.url`
(see `use_fake_hub`, which also patches the values `huggingface_hub.constants` reads at
import time).

Supported: repo creation / deletion / info (models, datasets, spaces, kernels), public and
private repos with bearer-token auth, commits with inline (base64, "regular") files, file
resolution (HEAD/GET `/resolve/`, with `Range`), tree and paths-info listings, refs, commit
history, branches, tags and `create_pr`. Not supported: LFS / Xet uploads (every file is
reported as `"uploadMode": "regular"`, and `use_fake_hub` disables Xet client-side), gated
repos, discussions and everything else (answered with `501 Not Implemented`).

Like the real Hub, a new repo starts with an "initial commit" holding a `.gitattributes`.
A single user owns every namespace: any request carrying a valid token may read and write
every repo; anonymous requests only read public repos.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from email.message import Message

    import pytest

GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
# URL segment (`/api/{plural}/...`) -> repo type, and repo type -> prefix of web URLs.
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_SUBPATHS = {"revision", "tree", "refs", "commits", "commit", "preupload", "paths-info"}
_SUBPATHS |= {"branch", "tag"}
_COMMIT_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_MAX_BODY = 256 * 1024 * 1024


def git_blob_sha(data: bytes) -> str:
    """Return the git blob sha1 of `data` (the ETag the Hub serves for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, bytes]
    date: str = field(default_factory=_now)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[_Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=_now)
    num_prs: int = 0


@dataclass
class _Response:
    status: int
    body: Any = None  # bytes are sent as-is; anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    """An error answered to the client, with the Hub's `X-Error-Code` when relevant."""

    def __init__(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers

    def response(self) -> _Response:
        """Render the error the way the Hub does (headers + JSON body)."""
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _Response(self.status, {"error": self.message}, headers)


class FakeHub:
    """In-memory Hugging Face Hub served over HTTP on 127.0.0.1.

    Use as a context manager (or call `start` / `stop`). `url` is only valid once started.
    """

    def __init__(self, token: str = "hf_test_token", user: str = "test-user") -> None:
        self.token = token
        self.user = user
        self.url = ""
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []  # tracebacks of unexpected server-side exceptions
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Files stored in `repo_id` at `revision` (branch, tag or commit sha)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return dict(self._resolve(repo, revision).files)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit shas of `repo_id` (all branches), oldest first."""
        with self._lock:
            return [c.sha for c in self._repos[(repo_type, repo_id)].commits]

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        private: bool = False,
        message: str = "Seed files",
    ) -> str:
        """Create `repo_id` if needed and commit `files` on `main`; return the sha."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = self._create(repo_type, repo_id, private)
            head = self._resolve(repo, "main")
            return self._commit(repo, "main", {**head.files, **files}, message).sha

    # ------------------------------------------------------------------ state

    def _create(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type, repo_id, private)
        self._repos[(repo_type, repo_id)] = repo
        files = {".gitattributes": GITATTRIBUTES}
        self._commit(repo, "main", files, "initial commit")
        return repo

    def _commit(self, repo: _Repo, branch: str, files: dict[str, bytes], title: str) -> _Commit:
        self._counter += 1
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}\n{parent}\n{title}\n{self._counter}\n"
        seed += "".join(f"{p}:{git_blob_sha(d)}\n" for p, d in sorted(files.items()))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = _Commit(sha, parent, title, "", files)
        repo.commits.append(commit)
        repo.branches[branch] = sha
        return commit

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        rev = revision.removeprefix("refs/heads/")
        sha = repo.branches.get(rev) or repo.tags.get(rev.removeprefix("refs/tags/"))
        if sha is None and _COMMIT_PREFIX.fullmatch(rev):
            found = [c.sha for c in repo.commits if c.sha.startswith(rev)]
            sha = found[0] if len(found) == 1 else None
        for commit in repo.commits:
            if commit.sha == sha:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            # The Hub answers 401 to anonymous requests, 404 to authenticated ones.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _user(self, headers: Message) -> str | None:
        auth = headers.get("Authorization")
        if auth is None:
            return None
        if auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    @staticmethod
    def _require_write(user: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to perform this operation")

    def _url(self, repo: _Repo) -> str:
        return f"{self.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ routing

    def handle(self, method: str, raw_path: str, headers: Message, body: bytes) -> _Response:
        """Answer one HTTP request (called by the request handler threads)."""
        split = urlsplit(raw_path)
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append((method, unquote(split.path)))
            try:
                user = self._user(headers)
                if segs[:1] == ["api"]:
                    return self._api(method, segs[1:], query, body, user)
                if "resolve" in segs[1:4] and method in ("GET", "HEAD"):
                    return self._resolve_file(segs, headers, user)
                raise HubError(501, f"FakeHub does not implement {method} {split.path}")
            except HubError as err:
                return err.response()
            except Exception:  # reported in `errors`, and never a (retried) 5xx
                self.errors.append(traceback.format_exc())
                msg = f"FakeHub crashed on {method} {split.path}"
                return HubError(501, msg).response()

    def _api(
        self,
        method: str,
        segs: list[str],
        query: dict[str, str],
        body: bytes,
        user: str | None,
    ) -> _Response:
        route = (method, "/".join(segs))
        if route == ("GET", "whoami-v2"):
            self._require_write(user)
            return _Response(200, self._whoami())
        if route == ("GET", "agent-harnesses"):
            return _Response(200, {"standardEnvVars": [], "harnesses": {}})
        if route == ("POST", "validate-yaml"):
            return _Response(200, {"errors": [], "warnings": []})
        if route == ("POST", "repos/create"):
            return self._create_repo(_json(body), user)
        if route == ("DELETE", "repos/delete"):
            payload = _json(body)
            self._require_write(user)
            repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
            repo = self._repo(payload.get("type") or "model", repo_id, user)
            del self._repos[(repo.repo_type, repo.repo_id)]
            return _Response(200, {})
        if len(segs) < 2 or segs[0] not in _TYPES:
            raise HubError(501, f"FakeHub does not implement {method} /api/{route[1]}")
        rest = segs[1:]
        n = 2 if len(rest) >= 2 and rest[1] not in _SUBPATHS else 1
        repo = self._repo(_TYPES[segs[0]], "/".join(rest[:n]), user)
        action, args = (rest[n], rest[n + 1 :]) if len(rest) > n else ("", [])
        if method in ("GET", "HEAD"):
            if action in ("", "revision"):
                return self._info(repo, args[0] if args else "main", query)
            if action == "tree" and args:
                return self._tree(repo, args[0], "/".join(args[1:]), query)
            if action == "refs":
                return self._refs(repo, "include_prs" in query)
            if action == "commits" and args:
                return self._history(repo, args[0])
        if method == "POST" and action == "paths-info" and args:
            paths = parse_qs(body.decode()).get("paths", [])
            return _Response(200, self._entries(self._resolve(repo, args[0]), paths))
        if method in ("POST", "DELETE") and action in ("branch", "tag") and args:
            self._require_write(user)
            return self._ref_change(repo, method, action, args[0], _json(body))
        if method == "POST" and action == "preupload" and args:
            self._require_write(user)
            return self._preupload(repo, args[0], _json(body))
        if method == "POST" and action == "commit" and args:
            self._require_write(user)
            return self._create_commit(repo, args[0], body, query)
        raise HubError(501, f"FakeHub does not implement {method} /api/{route[1]}")

    # ------------------------------------------------------------------ endpoints

    def _whoami(self) -> dict[str, Any]:
        token_info = {"displayName": "fake-token", "role": "write"}
        auth = {"type": "access_token", "accessToken": token_info}
        user = {"type": "user", "id": "0" * 24, "name": self.user, "fullname": self.user}
        return user | {"orgs": [], "isPro": False, "auth": auth}

    def _create_repo(self, payload: dict[str, Any], user: str | None) -> _Response:
        self._require_write(user)
        repo_type = payload.get("type") or "model"
        name = payload.get("name") or ""
        if repo_type not in _PREFIX or not name or "/" in name:
            raise HubError(400, f"Invalid repo name or type: {name!r} ({repo_type})")
        repo_id = f"{payload.get('organization') or user}/{name}"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            msg = f"You already created this {repo_type} repo"
            return _Response(409, {"error": msg, "url": self._url(existing)})
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        repo = self._create(repo_type, repo_id, private)
        return _Response(200, {"url": self._url(repo), "name": repo_id, "id": repo_id})

    def _info(self, repo: _Repo, revision: str, query: dict[str, str]) -> _Response:
        commit = self._resolve(repo, revision)
        blobs = query.get("blobs", "").lower() == "true"
        siblings = [
            {"rfilename": p} | ({"size": len(d), "blobId": git_blob_sha(d)} if blobs else {})
            for p, d in sorted(commit.files.items())
        ]
        info: dict[str, Any] = {
            "_id": repo.repo_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": siblings,
        }
        return _Response(200, info)

    def _entries(self, commit: _Commit, paths: list[str]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in (p.strip("/") for p in paths):
            data = commit.files.get(path)
            if data is not None:
                oid = git_blob_sha(data)
                entries.append({"type": "file", "path": path, "size": len(data), "oid": oid})
            elif any(p.startswith(f"{path}/") for p in commit.files):
                oid = hashlib.sha1(f"{commit.sha}:{path}".encode()).hexdigest()
                entries.append({"type": "directory", "path": path, "size": 0, "oid": oid})
        return entries

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict[str, str]) -> _Response:
        commit = self._resolve(repo, revision)
        recursive = query.get("recursive", "").lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        children: set[str] = set()
        for file_path in commit.files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            children.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        if prefix and not children:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return _Response(200, self._entries(commit, sorted(children)))

    def _refs(self, repo: _Repo, include_prs: bool) -> _Response:
        def ref(name: str, kind: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        branches = {k: v for k, v in repo.branches.items() if not k.startswith("refs/")}
        prs = [
            {"name": k, "ref": k, "targetCommit": v}
            for k, v in repo.branches.items()
            if k.startswith("refs/pr/")
        ]
        data: dict[str, Any] = {
            "branches": [ref(k, "heads", v) for k, v in branches.items()],
            "tags": [ref(k, "tags", v) for k, v in repo.tags.items()],
            "converts": [],
        }
        if include_prs:
            data["pullRequests"] = prs
        return _Response(200, data)

    def _history(self, repo: _Repo, revision: str) -> _Response:
        commit: _Commit | None = self._resolve(repo, revision)
        by_sha = {c.sha: c for c in repo.commits}
        items: list[dict[str, Any]] = []
        while commit is not None:  # bounded: parents always point to older commits
            author = "system" if commit.parent is None else self.user
            items.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": author}],
                    "date": commit.date,
                }
            )
            commit = by_sha.get(commit.parent) if commit.parent else None
        return _Response(200, items)

    def _ref_change(
        self, repo: _Repo, method: str, kind: str, name: str, payload: dict[str, Any]
    ) -> _Response:
        refs = repo.branches if kind == "branch" else repo.tags
        if method == "DELETE":
            if name not in refs:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if kind == "branch" and name == "main":
                raise HubError(403, "Cannot delete the default branch")
            del refs[name]
            return _Response(200, {})
        if kind == "tag":  # POST /tag/{revision} {"tag": name}
            target, name = self._resolve(repo, name).sha, str(payload.get("tag"))
        else:
            target = self._resolve(repo, payload.get("startingPoint") or "main").sha
        if name in refs:
            raise HubError(409, f"Reference already exists: {name}")
        refs[name] = target
        return _Response(200, {})

    def _branch_for_write(self, repo: _Repo, revision: str) -> str:
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return branch

    def _preupload(
        self,
        repo: _Repo,
        revision: str,
        payload: dict[str, Any],
    ) -> _Response:
        head = self._resolve(repo, self._branch_for_write(repo, revision))
        files = []
        for item in payload.get("files", []):
            existing = head.files.get(item["path"])
            oid = None if existing is None else git_blob_sha(existing)
            files.append({"path": item["path"], "uploadMode": "regular", "oid": oid})
            files[-1]["shouldIgnore"] = False
        return _Response(200, {"files": files, "commitOid": head.sha})

    def _create_commit(
        self,
        repo: _Repo,
        revision: str,
        body: bytes,
        query: dict[str, str],
    ) -> _Response:
        branch = self._branch_for_write(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header: dict[str, Any] = next((x["value"] for x in lines if x.get("key") == "header"), {})
        parent = header.get("parentCommit")
        head = self._resolve(repo, branch)
        if query.get("create_pr") == "1":
            repo.num_prs += 1
            pr_branch = f"refs/pr/{repo.num_prs}"
            start = self._resolve(repo, parent) if parent else head
            repo.branches[pr_branch] = start.sha
            branch, head = pr_branch, start
        elif parent and not head.sha.startswith(parent):
            msg = f"A commit has happened since. Please refresh and try again. ({parent})"
            raise HubError(412, msg)
        files = dict(head.files)
        for item in lines:
            key, value = item.get("key"), item.get("value", {})
            path = str(value.get("path", "")).strip("/")
            if key == "file":
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    msg = f"A file with this name doesn't exist: {path}"
                    raise HubError(404, msg, "EntryNotFound")
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(f"{path}/")]:
                    del files[p]
            elif key != "header":
                raise HubError(400, f"FakeHub only supports inline files, got {key!r}")
        commit = self._commit(repo, branch, files, header.get("summary") or "Commit")
        commit.message = header.get("description") or ""
        data = {"success": True, "commitOid": commit.sha}
        data["commitUrl"] = f"{self._url(repo)}/commit/{commit.sha}"
        data["hookOutput"] = ""
        if branch.startswith("refs/pr/"):
            data["pullRequestUrl"] = f"{self._url(repo)}/discussions/{repo.num_prs}"
        return _Response(200, data)

    def _resolve_file(self, segs: list[str], headers: Message, user: str | None) -> _Response:
        start = 1 if segs[0] in _TYPES and segs[0] != "models" else 0
        at = segs.index("resolve", start + 1)
        repo_type = _TYPES[segs[0]] if start else "model"
        repo = self._repo(repo_type, "/".join(segs[start:at]), user)
        if len(segs) < at + 3:
            raise HubError(400, "Missing revision or filename")
        commit = self._resolve(repo, segs[at + 1])
        path = "/".join(segs[at + 2 :])
        meta = {"X-Repo-Commit": commit.sha}
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", **meta)
        data = commit.files[path]
        meta |= {"ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes"}
        meta["Content-Type"] = "application/octet-stream"
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", "") or "")
        if match and int(match[1]) < len(data):
            first = int(match[1])
            last = min(int(match[2] or len(data) - 1), len(data) - 1)
            meta["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return _Response(206, data[first : last + 1], meta)
        return _Response(200, data, meta)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise HubError(400, f"Invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise HubError(400, "Expected a JSON object")
    return data


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP/1.0 adapter (one request per connection) around `FakeHub.handle`."""

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while total <= _MAX_BODY:  # bounded even if the client misbehaves
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                total += size
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, _MAX_BODY)) if length > 0 else b""

    def _serve(self) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        resp = hub.handle(self.command, self.path, self.headers, self._read_body())
        body = resp.body
        if not isinstance(body, bytes):
            body = json.dumps(body if body is not None else {}).encode()
            resp.headers.setdefault("Content-Type", "application/json")
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def use_fake_hub(
    monkeypatch: pytest.MonkeyPatch, hub: FakeHub, hf_home: str | os.PathLike[str]
) -> None:
    """Point the `huggingface_hub` client at `hub`, with a fresh cache under `hf_home`.

    Sets the environment variables AND the `huggingface_hub.constants` values that were
    computed from them at import time (plus the few module-level copies), all through
    `monkeypatch` so that everything is restored after the test.
    """
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_assets, _cache_manager

    home = Path(hf_home)
    home.mkdir(parents=True, exist_ok=True)
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
    }
    env = {k: str(v) for k, v in paths.items()}
    env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0"}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    env |= {"HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    env["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "HF_OIDC_RESOURCE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(key, raising=False)

    # Pre-seed the agent-harness registry so the client does not fetch it (the fake
    # hub also serves `/api/agent-harnesses`, in case this format ever changes).
    registry = home / ".agent_harnesses.json"
    registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))

    values: dict[str, Any] = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(paths["HF_HUB_CACHE"]),
        "HUGGINGFACE_HUB_CACHE": str(paths["HF_HUB_CACHE"]),
        "HF_ASSETS_CACHE": str(paths["HF_ASSETS_CACHE"]),
        "HUGGINGFACE_ASSETS_CACHE": str(paths["HF_ASSETS_CACHE"]),
        "HF_XET_CACHE": str(paths["HF_XET_CACHE"]),
        "HF_TOKEN_PATH": str(paths["HF_TOKEN_PATH"]),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    optional: dict[str, Any] = {
        "HF_URL_HOSTS": frozenset(getattr(constants, "HF_URL_HOSTS", ())) | {"127.0.0.1"},
        "AGENT_HARNESSES_PATH": str(registry),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_DISABLE_SHARED_BLOBS": True,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    for name, value in optional.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    # Module-level copies made with `from ..constants import X`, and the default HfApi
    # instance behind `huggingface_hub.create_repo`, `upload_folder`, ... functions.
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", values["HF_HUB_CACHE"])
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", values["HF_ASSETS_CACHE"])
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)


def set_hf_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Toggle `HF_HUB_OFFLINE` both in the environment and in `huggingface_hub.constants`."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
