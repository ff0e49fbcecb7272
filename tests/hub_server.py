"""A small local stand-in for huggingface.co, for offline tests of the real huggingface_hub code.

It serves local folders as model repos, answering exactly what huggingface_hub 2.4.0 asks for:

* ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` (hf_hub_download, file_exists,
  get_safetensors_metadata): the file, with ``X-Repo-Commit``, ``ETag`` (git blob sha1, or the
  sha256 for LFS-like files, which also get ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``,
  ``Accept-Ranges`` and ``206`` answers to ``Range``. Files are served directly, without the hub's
  redirect to a CDN, and without any ``X-Xet-*`` header, so the client downloads over plain HTTP.
* ``GET /api/models/{repo}[/revision/{revision}]`` (model_info, repo_info, hence snapshot_download),
  with ``siblings``; ``?blobs=true`` (``files_metadata=True``) adds ``size``, ``blobId`` and ``lfs``.
* ``GET /api/models/{repo}/tree/{revision}[/{path}]`` (list_repo_tree, which snapshot_download calls).

Errors carry the ``X-Error-Code`` header that ``hf_raise_for_status`` maps to an exception:
``RepoNotFound`` (401 without a token, as the hub answers, 404 with one), ``RevisionNotFound`` (404),
``EntryNotFound`` (404) and, for the files of a gated repo, ``GatedRepo`` (401 without a token, 403
with one). Like the hub, a gated repo's metadata (model_info, tree) stays public.

Usage::

    with FakeHub() as hub:
        hub.add_repo("org/name", folder)
        hub.activate(monkeypatch, tmp_path / "hub-cache")
        snapshot_download("org/name")
        assert hub.requests  # (method, path, headers) of every request, header names in lower case
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the hub's default .gitattributes stores with LFS (a subset), plus anything >= 10 MiB.
LFS_SUFFIXES = {".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".model"}
LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass
class _File:
    data: bytes
    git_oid: str = field(init=False)  # sha1 of the git blob: the ETag of a regular file
    sha256: str = field(init=False)  # the LFS oid: the ETag of an LFS file
    lfs: bool = False

    def __post_init__(self):
        self.git_oid = hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Repo:
    gated: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit sha
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)  # commit sha -> {path: file}

    def commit(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """huggingface.co on 127.0.0.1 (random free port, daemon thread); a context manager."""

    def __init__(self):
        self.repos: dict[str, _Repo] = {}
        # (method, path with query, headers with lower-case names) of every request received
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._interrupts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="FakeHub", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # end the kept-alive connections, so their handler threads finish
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def activate(self, monkeypatch, cache_dir: str | Path) -> None:
        """Point the already imported huggingface_hub at this hub, with ``cache_dir`` as its cache.

        huggingface_hub reads ``HF_ENDPOINT``/``HF_HOME`` once, at import, into
        ``huggingface_hub.constants``; the download functions read these constants at call time, and
        ``HfApi()`` reads ``constants.ENDPOINT`` when created. The module-level functions
        (``huggingface_hub.model_info``, ``get_safetensors_metadata``, ...) are bound methods of an
        ``HfApi`` created at import, so its ``endpoint`` is patched too. The environment variables
        are also set, for subprocesses.
        """
        from huggingface_hub import constants, hf_api

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})  # redirects kept on
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)
        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))

    # -- content ----------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: str | Path, revision: str = "main", gated: bool = False) -> str:
        """Serve the files of ``folder`` (recursively) as ``repo_id`` at ``revision``; return the commit sha.

        The commit sha is a sha1 of the files' paths and contents, so the same folder always gets
        the same commit. Calling again with another revision adds a branch to the same repo.
        """
        folder = Path(folder)
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            lfs = path.suffix in LFS_SUFFIXES or len(data) >= LFS_MIN_SIZE
            files[path.relative_to(folder).as_posix()] = _File(data, lfs=lfs)
        tree = "".join(f"{name}\0{f.git_oid}\n" for name, f in files.items())
        commit = hashlib.sha1(tree.encode()).hexdigest()
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo())
            repo.gated = gated
            repo.commits[commit] = files
            repo.refs[revision] = commit
        return commit

    def interrupt_after(self, repo_id: str, filename: str, nbytes: int) -> None:
        """Have the next GET of that file send only ``nbytes`` of its body, then drop the connection.

        huggingface_hub retries within the same call, with ``Range: bytes=N-`` where N is what it had
        written: a multiple of its 10 MiB read chunk (so N=0, and no Range, for smaller files).
        """
        with self._lock:
            self._interrupts[(repo_id, filename)] = nbytes

    def _take_interrupt(self, repo_id: str, filename: str) -> int | None:
        with self._lock:
            return self._interrupts.pop((repo_id, filename), None)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx's connection pool expects

    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self):
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # quiet: tests read hub.requests instead
        pass

    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    # -- routing ----------------------------------------------------------------------------------

    def _route(self):
        self.hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if int(self.headers.get("Content-Length") or 0):
            self.rfile.read(int(self.headers["Content-Length"]))
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Revisions and tree paths come percent-encoded with safe="" (a branch "a/b" is "a%2Fb"),
        # so split first, then decode each segment.
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if self.command in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if self.command == "GET" and len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest:
                return self._model_info(repo_id, "main", query)
            if len(rest) == 2 and rest[0] == "revision":
                return self._model_info(repo_id, rest[1], query)
            if len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
        self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _lookup(self, repo_id: str, revision: str) -> tuple[_Repo, str] | None:
        """The repo and commit, or None after answering the hub's error."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:  # The hub answers 401 to anonymous requests, so as not to leak private repos
            status = 404 if "Authorization" in self.headers else 401
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        commit = repo.commit(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    # -- endpoints --------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str, filename: str):
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        if repo.gated:
            status = 403 if "Authorization" in self.headers else 401
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."
            return self._error(status, "GatedRepo", message)
        file = repo.commits[commit].get(filename)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})

        headers = {"X-Repo-Commit": commit, "ETag": f'"{file.etag}"', "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "application/json" if filename.endswith(".json") else "application/octet-stream"
        if file.lfs:  # What huggingface_hub prefers to ETag / Content-Length (the hub's LFS redirects carry them)
            headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(len(file.data))})
        start, end, status = 0, len(file.data), 200
        if "Range" in self.headers and "," not in self.headers["Range"]:  # several ranges: send it all
            byte_range = _parse_range(self.headers["Range"], len(file.data))
            if byte_range is None:
                return self._send(416, {"Content-Range": f"bytes */{len(file.data)}"}, b"")
            (start, end), status = byte_range, 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(file.data)}"
        body = file.data[start:end]
        cut = self.hub._take_interrupt(repo_id, filename) if self.command == "GET" else None
        if cut is None:
            return self._send(status, headers, body)
        # A dropped download: announce the whole body, send part of it, close the connection cleanly
        # (FIN, not RST: httpx raises RemoteProtocolError, which http_get retries, with a Range).
        self._send(status, headers, body[:cut], content_length=len(body))
        self.close_connection = True

    def _model_info(self, repo_id: str, revision: str, query: dict[str, str]):
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        siblings = []
        for path, file in repo.commits[commit].items():
            sibling = {"rfilename": path}
            if query.get("blobs", "").lower() in ("true", "1"):
                sibling.update(blobId=file.git_oid, size=len(file.data))
                if file.lfs:
                    sibling["lfs"] = {"sha256": file.sha256, "size": len(file.data), "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "_id": commit[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": commit, "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in repo.commits[commit].values()),
        }  # fmt: skip
        self._send_json(info)

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, str]):
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            return self._error(404, "EntryNotFound", f"{folder} does not exist on \"{revision}\"", {"X-Repo-Commit": commit})
        recursive = query.get("recursive", "").lower() in ("true", "1")
        entries: dict[str, dict] = {}
        for path, file in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                sub = prefix + "/".join(parts[:i])
                entries.setdefault(sub, {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(), "size": 0, "path": sub})
            if depth >= len(parts):
                entry = {"type": "file", "oid": file.git_oid, "size": len(file.data), "path": path}
                if file.lfs:
                    entry["lfs"] = {"oid": file.sha256, "size": len(file.data), "pointerSize": 134}
                entries[path] = entry
        self._send_json([entries[p] for p in sorted(entries)])

    # -- responses --------------------------------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], body: bytes, content_length: int | None = None):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _send_json(self, obj) -> None:
        self._send(200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(obj).encode())

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        if code is not None:
            headers.update({"X-Error-Code": code, "X-Error-Message": message})
        self._send(status, headers, json.dumps({"error": message}).encode())


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as a half-open (start, end); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not (first + last).isdigit():
        return None
    if not first:  # the last n bytes
        return (max(size - int(last), 0), size) if int(last) > 0 and size else None
    start, end = int(first), min(int(last) + 1, size) if last else size
    return (start, end) if start < size and start < end else None
