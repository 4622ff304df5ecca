"""A tiny HTTPS server on 127.0.0.1 for fakes: certificates made at test time with trustme.

A fake is a function `handle(req: Request) -> Response`. Responses can also cut the body short
(`truncate_at`) or drop the connection before answering (`drop=True`), so connectors meet
the faults real networks produce.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def q(self, name: str, default: str | None = None) -> str | None:
        vals = self.query.get(name)
        return vals[0] if vals else default


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None  # send only this many body bytes, then close
    drop: bool = False  # close the connection without any answer

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body or b"", "application/octet-stream"


Handler = Callable[[Request], Response]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes: avoid ~40 ms per request
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                      {k.lower(): v for k, v in self.headers.items()}, body)
        self.server.log.append(req)
        resp = self.server.app(req)
        if resp.drop:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        data, ctype = resp.payload()
        self.send_response(resp.status)
        headers = {"Content-Type": ctype, **resp.headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if resp.truncate_at is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if resp.truncate_at is not None:
            self.wfile.write(data[: resp.truncate_at])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: Handler
    log: list[Request]


class FakeServer:
    """Serve `app` over HTTPS on 127.0.0.1; `ca_path` is the PEM a client must trust."""

    def __init__(self, app: Handler, tmp_dir: Path, ca: trustme.CA | None = None, tls: bool = True):
        self.ca = ca or trustme.CA()
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.app = app
        self._server.log = []
        self.tls = tls
        self.ca_path = str(Path(tmp_dir) / "fake-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def requests(self) -> list[Request]:
        return self._server.log

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
