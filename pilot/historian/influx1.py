"""InfluxDB 1.x sink: the v1 HTTP write API (``POST /write?db=&rp=&precision=``), line protocol.

One persistent ``http.client`` connection (keep-alive), reopened after any error. Outcomes:

- ``204``: stored;
- connection refused / reset / timeout, ``5xx``, ``404`` (database not found: created once and the
  write retried), ``401``/``403`` (credentials), ``429``: ``SinkError``, the batch is intact and
  the recorder spools it and retries later;
- ``400`` (malformed line, field-type conflict, "partial write") and ``413`` (body too large):
  ``PointsRejected``, a permanent refusal: replaying it would fail forever, so the recorder puts
  it aside in the spool's dead-letter file instead of retrying.

InfluxDB 3 Core and InfluxDB 2.x with a DBRP mapping also serve ``/write`` (v1 compatibility).
Credentials in the URL (``http://user:password@host:8086``) are sent as HTTP Basic when no
user is configured; every message shows the URL redacted (``http://user:***@host:8086``).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlencode, urlsplit

from ..secrets import redact_url, redacted_repr
from .base import SinkError
from .lineproto import PRECISIONS, EncodingSink

log = logging.getLogger(__name__)


class PointsRejected(SinkError):
    """The server refused the batch for good (malformed or too large): do not retry it."""


@dataclass(frozen=True)
class Influx1Settings:
    url: str = "http://127.0.0.1:8086"
    database: str = "pilot"
    retention_policy: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    precision: str = "ms"
    timeout_s: float = 10.0
    create_database: bool = True

    def __repr__(self) -> str:
        return redacted_repr(self)


class HttpEndpoint:
    """A keep-alive HTTP connection to one server (not thread-safe: one per worker)."""

    def __init__(self, url: str, timeout_s: float, headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(url)!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        if parts.username and "Authorization" not in self.headers:
            basic = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode())
            self.headers["Authorization"] = f"Basic {basic.decode()}"
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request; raise ``OSError``/``HTTPException`` on transport failure. A kept-alive
        connection that the server closed meanwhile (restart, idle timeout) is retried once on a
        fresh one (writes are idempotent: same series and timestamp overwrite)."""
        reused = self._conn is not None
        try:
            return self._once(method, path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            return self._once(method, path, body, headers)

    def _once(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> tuple[int, bytes]:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        try:
            self._conn.request(method, self.base + path, body=body, headers={**self.headers, **(headers or {})})
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if resp.will_close:
            self.close()
        return resp.status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self, accept: tuple[int, ...] = (204,)) -> bool:
        """Whether the server answers ``GET /ping`` with one of ``accept`` (1.x and 2.x: 204)."""
        try:
            status, _ = self.request("GET", "/ping")
        except (OSError, http.client.HTTPException):
            return False
        return status in accept


class Influx1Sink(EncodingSink):
    """Sink into an InfluxDB 1.x database (or any server speaking the v1 write API)."""

    def __init__(self, settings: Influx1Settings | None = None, **overrides):
        super().__init__(s := replace(settings or Influx1Settings(), **overrides))
        headers = {}
        if s.user:
            token = base64.b64encode(f"{s.user}:{s.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.http = HttpEndpoint(s.url, s.timeout_s, headers)
        params = {"db": s.database, "precision": PRECISIONS[s.precision][1]}
        if s.retention_policy:
            params["rp"] = s.retention_policy
        self._write_path = "/write?" + urlencode(params)
        self._db_checked = False

    # -- Sink ------------------------------------------------------------------------------
    def open(self) -> None:
        """Nothing to do up front: an unreachable server at start is an outage, not an error."""

    def flush(self) -> None:
        """Writes are synchronous: every returned ``write_batch`` is stored."""

    def close(self) -> None:
        self.http.close()

    # -- raw -------------------------------------------------------------------------------
    def write_body(self, body: bytes) -> None:
        """POST pre-encoded line protocol (at this sink's precision)."""
        if not body:
            return
        status, data = self._post(body)
        if status == 404 and self.settings.create_database and not self._db_checked:
            self.create_database()
            status, data = self._post(body)
        if status == 204:
            self._db_checked = True
            return
        text = data[:300].decode(errors="replace")
        if status in (400, 413):
            raise PointsRejected(f"InfluxDB refused the batch ({status}): {text}")
        raise SinkError(f"InfluxDB write failed ({status}): {text}")

    def _post(self, body: bytes) -> tuple[int, bytes]:
        try:
            return self.http.request("POST", self._write_path, body,
                                     {"Content-Type": "text/plain; charset=utf-8"})
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise SinkError(f"InfluxDB at {redact_url(self.settings.url)} unreachable: {exc}") from exc

    def create_database(self) -> None:
        self.query(f'CREATE DATABASE "{self.settings.database}"', method="POST")
        self._db_checked = True

    def query(self, q: str, *, epoch: str = "ms", method: str = "GET") -> list[dict]:
        """Run InfluxQL; return the ``results`` list. Raises SinkError on transport/HTTP error."""
        params = urlencode({"db": self.settings.database, "q": q, "epoch": epoch})
        try:
            if method == "GET":
                status, data = self.http.request("GET", "/query?" + params)
            else:
                status, data = self.http.request(
                    "POST", "/query", params.encode(),
                    {"Content-Type": "application/x-www-form-urlencoded"})
        except (OSError, http.client.HTTPException) as exc:
            raise SinkError(f"InfluxDB at {redact_url(self.settings.url)} unreachable: {exc}") from exc
        if status != 200:
            raise SinkError(f"InfluxDB query failed ({status}): {data[:300].decode(errors='replace')}")
        results = json.loads(data)["results"]
        for r in results:
            if "error" in r:
                raise SinkError(f"InfluxQL error: {r['error']} in {q!r}")
        return results

    def ping(self) -> bool:
        return self.http.ping()
