"""A loopback HTTP server that answers what ``huggingface_hub`` 2.x calls to push a folder.

``HfApi.create_repo`` + ``upload_folder`` talk to it over real HTTP on 127.0.0.1 through
``HF_ENDPOINT`` (or ``HfApi(endpoint=...)``). What the installed client sends, read from its
source (huggingface_hub 2.4):

- ``GET /api/agent-harnesses`` (2.4 fetches a registry for its user agent; answered 404).
- ``POST /api/repos/create`` ``{"name", "organization", "visibility"}`` → ``{"url"}``; 409 when
  it exists, whose body still carries ``url`` (``exist_ok=True`` swallows the status and reads
  it). On 401/403 ``create_repo`` asks
  ``GET /api/models/{repo}`` whether the repo is there anyway.
- ``POST /api/validate-yaml`` when the commit holds a ``README.md`` (legacy path only).
- ``POST /api/models/{repo}/preupload/{rev}`` ``{"files": [{"path", "sample", "size"}]}`` →
  ``{"files": [{"path", "uploadMode": "regular"|"lfs", "shouldIgnore", "oid"}]}``.
- LFS files: with ``hf_xet`` installed they go to Xet storage (not emulated here: this server
  answers ``regular`` for everything unless ``lfs_patterns`` is given, and a test that wants
  LFS sets ``HF_HUB_DISABLE_XET=1``); without it, ``POST /{repo}.git/info/lfs/objects/batch``
  (basic transfer) → ``PUT`` of the bytes to the ``href`` this server hands out.
- ``POST /api/models/{repo}/commit/{rev}``: NDJSON — a ``header`` line, then ``file`` (base64)
  and ``lfsFile`` (sha256 oid) lines → ``{"commitUrl", "commitOid"}``.

Example:
    with HubServer(tokens={"hf_secret": "alice"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub is imported
        ...
        hub.repos["alice/tiny"]["files"]      # {path: bytes} of the last commit
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    """Context manager: a fake Hub on a free loopback port.

    Args:
        tokens: Token → user name; any other token (or none) gets 401.
        read_only: Tokens that authenticate but may not write (403 on create and commit).
        lfs_patterns: File name patterns preupload answers ``lfs`` for (default: none).
    """

    def __init__(self, tokens: dict[str, str] | None = None, *,
                 read_only: set[str] | frozenset[str] = frozenset(),
                 lfs_patterns: tuple[str, ...] = ()) -> None:
        self.tokens = dict(tokens or {})
        self.read_only = set(read_only)
        self.lfs_patterns = lfs_patterns
        self.repos: dict[str, dict] = {}  # repo id -> {"private", "files": {path: bytes}, ...}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- answers ---------------------------------------------------------------------------
    def _user(self, headers) -> str | None:
        auth = headers.get("Authorization", "")
        return self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, dict, bytes]:
        return status, {"X-Error-Message": message}, json.dumps({"error": message}).encode()

    def _answer(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        parts = [p for p in path.split("?")[0].split("/") if p]
        token = headers.get("Authorization", "")[7:]
        user = self._user(headers)
        if method == "PUT" and parts[:1] == ["lfs-upload"]:  # the href handed out below
            data = body
            if hashlib.sha256(data).hexdigest() != parts[1]:
                return self._error(400, "sha256 mismatch")
            self.lfs_objects[parts[1]] = data
            return 200, {}, b""
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub's best-effort telemetry
            return self._error(404, "not served here")
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        writes = token not in self.read_only
        if parts == ["api", "repos", "create"] and method == "POST":
            req = json.loads(body)
            owner = req.get("organization") or user
            repo_id = f"{owner}/{req['name']}"
            if not writes or owner != user:
                return self._error(403, "You don't have the rights to create a model under "
                                   f"the namespace \"{owner}\"")
            if repo_id in self.repos:  # the Hub's 409 names the url: create_repo reads it
                return 409, {}, json.dumps({"error": "You already created this model repo",
                                            "url": f"{self.url}/{repo_id}"}).encode()
            self.repos[repo_id] = {"private": req.get("visibility") == "private",
                                   "visibility": req.get("visibility"), "files": {},
                                   "commits": []}
            return 200, {}, json.dumps({"url": f"{self.url}/{repo_id}",
                                        "name": repo_id}).encode()
        if parts == ["api", "validate-yaml"]:
            return 200, {}, json.dumps({"errors": [], "warnings": []}).encode()
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, json.dumps(
                    {"error": "Repository not found"}).encode()
            if len(parts) == 4 and method == "GET":
                return 200, {}, json.dumps({"id": repo_id, "private": repo["private"],
                                            "sha": "0" * 40, "siblings": []}).encode()
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return 200, {}, json.dumps({"files": [
                    {"path": f["path"], "shouldIgnore": False, "oid": None,
                     "uploadMode": "lfs" if any(fnmatch.fnmatch(f["path"], p)
                                                for p in self.lfs_patterns) else "regular"}
                    for f in files]}).encode()
            if parts[4] == "commit":
                if not writes:
                    return self._error(403, "You don't have write access to this repo")
                return self._commit(repo_id, repo, body)
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs",
                                                                           "objects", "batch"]:
            req = json.loads(body)
            objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                        "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}}
                       for o in req["objects"]]
            return 200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(
                {"transfer": "basic", "objects": objects}).encode()
        return self._error(404, f"no route for {method} {path}")

    def _commit(self, repo_id: str, repo: dict, body: bytes) -> tuple[int, dict, bytes]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = dict(repo["files"])
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return self._error(422, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif item["key"] in ("deletedFile", "deletedFolder"):
                files = {p: b for p, b in files.items()
                         if p != value["path"] and not p.startswith(value["path"].rstrip("/")
                                                                    + "/")}
        oid = hashlib.sha1(json.dumps(sorted(files)).encode() + str(time.time()).encode())
        repo["files"] = files
        repo["commits"].append({"summary": header["summary"], "oid": oid.hexdigest(),
                                "kinds": {x["value"]["path"]: x["key"] for x in lines
                                          if x["key"] != "header"}})
        return 200, {}, json.dumps({"commitUrl": f"{self.url}/{repo_id}/commit/{oid.hexdigest()}",
                                    "commitOid": oid.hexdigest(),
                                    "pullRequestUrl": None}).encode()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                body = self._body()
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body_size": len(body)})
                with server._lock:
                    status, headers, answer = server._answer(self.command, self.path,
                                                             self.headers, body)
                self.send_response(status)
                for key, value in {"Content-Type": "application/json",
                                   "Content-Length": str(len(answer)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(answer)

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        return Handler
