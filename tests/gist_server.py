"""A loopback HTTP server that speaks the GitHub Gist API's JSON, for tests and local runs.

The real client (``utils.adapters.gist_client``) talks to it over real HTTP on 127.0.0.1 through
``GIST_API_URL``, so retries, timeouts, raw URLs, rate limits and revisions are exercised the way
GitHub serves them: ``GET /gists/{id}``, ``GET /gists/{id}/{sha}``, raw file URLs.

Example:
    with GistServer() as server:
        gid = server.add_gist({"model.py": code, "config.json": "{}"})
        os.environ["GIST_API_URL"] = server.url
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRUNCATE_AT = 100  # bytes of content the JSON keeps for a file marked truncated
_LANGUAGE = {".py": "Python", ".json": "JSON", ".md": "Markdown", ".txt": "Text"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class GistServer:
    """Context manager serving gists registered with :meth:`add_gist` on a free loopback port."""

    def __init__(self) -> None:
        self._gists: dict[str, dict] = {}  # id -> {"owner", "description", "public", "revisions"}
        self._lock = threading.Lock()
        self._failures: list[tuple[int, dict, dict]] = []
        self._stalls: list[float] = []
        self._rate_limited_until: int | None = None
        self.requests: list[dict] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> GistServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- content ---------------------------------------------------------------------------
    def add_gist(self, files: dict[str, str | bytes], *, gist_id: str | None = None,
                 owner: str = "octocat", description: str = "", public: bool = True,
                 truncate: set[str] | frozenset[str] = frozenset()) -> str:
        """Register a gist, or a new revision of ``gist_id``; returns the id."""
        blobs = {n: (c if isinstance(c, bytes) else c.encode()) for n, c in files.items()}
        digest = hashlib.sha1(json.dumps(sorted((n, b.hex()) for n, b in blobs.items())).encode())
        sha = hashlib.sha1(digest.digest() + secrets.token_bytes(8)).hexdigest()
        with self._lock:
            gid = gist_id or secrets.token_hex(16)
            gist = self._gists.setdefault(gid, {"owner": owner, "description": description,
                                                "public": public, "revisions": [],
                                                "created_at": _now()})
            gist["revisions"].insert(0, {"version": sha, "files": blobs, "truncate": set(truncate),
                                         "committed_at": _now()})
        return gid

    def add_folder(self, folder: str | Path, **kw) -> str:
        """Every regular file of ``folder`` (not recursive, no dot-files) as one gist."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
                 if p.is_file() and not p.name.startswith(".")}
        return self.add_gist(files, **kw)

    def revisions(self, gist_id: str) -> list[str]:
        return [r["version"] for r in self._gists[gist_id]["revisions"]]

    # ---- failure injection --------------------------------------------------------------------
    def fail_next(self, status: int, count: int = 1, headers: dict | None = None,
                  body: dict | None = None) -> None:
        body = body or {"message": f"Server Error {status}"}
        self._failures.extend([(status, headers or {}, body)] * count)

    def stall_next(self, seconds: float, count: int = 1) -> None:
        self._stalls.extend([seconds] * count)

    def rate_limit(self, reset_in: int = 600) -> None:
        self._rate_limited_until = int(time.time()) + reset_in

    def clear_failures(self) -> None:
        self._failures.clear()
        self._stalls.clear()
        self._rate_limited_until = None

    # ---- JSON ----------------------------------------------------------------------------------
    def _gist_json(self, gid: str, rev: dict) -> dict:
        gist = self._gists[gid]
        owner = {"login": gist["owner"], "id": 1, "html_url": f"https://github.com/{gist['owner']}"}
        files = {}
        for name, blob in rev["files"].items():
            text = blob.decode("utf-8", errors="replace")
            truncated = name in rev["truncate"]
            files[name] = {
                "filename": name,
                "type": mimetypes.guess_type(name)[0] or "text/plain",
                "language": _LANGUAGE.get(Path(name).suffix),
                "raw_url": f"{self.url}/raw/{gist['owner']}/{gid}/raw/{rev['version']}/{name}",
                "size": len(blob),
                "truncated": truncated,
                "content": text[:TRUNCATE_AT] if truncated else text,
            }
        history = [{"user": owner, "version": r["version"], "committed_at": r["committed_at"],
                    "change_status": {"total": 1, "additions": 1, "deletions": 0},
                    "url": f"{self.url}/gists/{gid}/{r['version']}"}
                   for r in gist["revisions"]]
        return {"url": f"{self.url}/gists/{gid}", "id": gid,
                "html_url": f"https://gist.github.com/{gist['owner']}/{gid}",
                "public": gist["public"], "created_at": gist["created_at"],
                "updated_at": gist["revisions"][0]["committed_at"],
                "description": gist["description"], "owner": owner, "files": files,
                "history": history, "truncated": False}

    def _answer(self, path: str) -> tuple[int, dict, bytes]:
        """(status, extra headers, body) for a GET of ``path``."""
        parts = [p for p in path.split("?")[0].split("/") if p]
        not_found = (404, {}, json.dumps({"message": "Not Found", "status": "404",
                                          "documentation_url": "https://docs.github.com/rest/"
                                          "gists/gists#get-a-gist"}).encode())
        with self._lock:
            if len(parts) == 6 and parts[0] == "raw" and parts[3] == "raw":
                gist = self._gists.get(parts[2])
                rev = next((r for r in (gist or {}).get("revisions", [])
                            if r["version"] == parts[4]), None)
                if rev is None or parts[5] not in rev["files"]:
                    return not_found
                return 200, {"Content-Type": "text/plain; charset=utf-8"}, rev["files"][parts[5]]
            if parts[:1] == ["gists"] and len(parts) in (2, 3) and parts[1] in self._gists:
                revisions = self._gists[parts[1]]["revisions"]
                rev = revisions[0] if len(parts) == 2 else next(
                    (r for r in revisions if r["version"] == parts[2]), None)
                if rev is None:
                    return not_found
                return 200, {}, json.dumps(self._gist_json(parts[1], rev)).encode()
        return not_found

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, headers: dict, body: bytes) -> None:
                authed = self.headers.get("Authorization", "").startswith(("Bearer ", "token "))
                limit = 5000 if authed else 60
                limited = server._rate_limited_until
                base = {"Content-Type": "application/json; charset=utf-8",
                        "X-RateLimit-Limit": str(limit),
                        "X-RateLimit-Remaining": "0" if limited else str(limit - 1),
                        "X-RateLimit-Reset": str(limited or int(time.time()) + 3600),
                        "Content-Length": str(len(body))}
                self.send_response(status)
                for key, value in {**base, **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # the client gave up on a stalled answer, as a timeout test wants; said
                    # nowhere, since a traceback printed from this thread would run ast.parse
                    # (3.11 places its ^^^ markers so) beside the main thread's (gh-106905)
                    self.close_connection = True

            def do_GET(self) -> None:
                server.requests.append({"method": "GET", "path": self.path,
                                        "headers": dict(self.headers), "time": time.time()})
                if server._stalls:
                    time.sleep(server._stalls.pop(0))
                if server._rate_limited_until:
                    body = {"message": "API rate limit exceeded for 127.0.0.1. (But here's the "
                            "good news: Authenticated requests get a higher rate limit.)",
                            "documentation_url": "https://docs.github.com/rest/overview/"
                            "rate-limits-for-the-rest-api"}
                    return self._send(403, {}, json.dumps(body).encode())
                if server._failures:
                    status, headers, body = server._failures.pop(0)
                    return self._send(status, headers, json.dumps(body).encode())
                self._send(*server._answer(self.path))

            def _not_allowed(self) -> None:
                self._send(405, {}, json.dumps({"message": "Method Not Allowed"}).encode())

            do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

        return Handler
