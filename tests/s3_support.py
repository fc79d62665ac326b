"""A real S3 API on loopback for the tests: moto's server, plus a fault-injecting proxy.

The moto server is started once per test session and stopped at its end; each
test gets its own bucket. ``FaultProxy`` sits between dbkeep and the server and
can answer chosen requests with an S3 error (throttling, 5xx, 403 ...), forward a
request and then pretend the answer was lost, rewrite an answer, or drop a
request header. Everything else is forwarded byte for byte, so boto3 and the
server speak real HTTP to each other.

Import the fixtures into a test module with
``from tests.s3_support import aws_environment, s3_server  # noqa: F401``.
"""

from __future__ import annotations

import functools
import logging
import http.client
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1, for the whole session."""
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, s3_server: str) -> str:
    """AWS settings as a user would have them, pointing at the loopback server."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    # Fixed paths that never exist: the same environment in every test lets the
    # (slow to build) boto3 session be reused.
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/dbkeep-tests/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/dbkeep-tests/aws-credentials")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@functools.cache
def admin_client(endpoint: str):
    """A plain boto3 client for setting up and inspecting buckets behind dbkeep's back."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)


def new_bucket(endpoint: str) -> str:
    name = f"dbkeep-{uuid.uuid4().hex[:20]}"
    admin_client(endpoint).create_bucket(Bucket=name)
    return name


def put_directly(bucket: str, key: str, body: bytes) -> None:
    """Store an object inside the in-process server without an HTTP round trip (fast setup)."""
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    get_backend("s3")[DEFAULT_ACCOUNT_ID]["aws"].put_object(bucket, key, body)


@dataclass
class Rule:
    """Answer matching requests with ``status``/``code`` (or act otherwise) ``times`` times."""

    method: str
    contains: str = ""
    status: int = 503
    code: str = "SlowDown"
    times: int = 1
    forward_first: bool = False  # let the server act, then lose its answer
    drop_header: str | None = None  # forward without this request header
    rewrite: Callable[[bytes], bytes] | None = None  # forward, then change the answer body

    def matches(self, method: str, path: str) -> bool:
        return self.times != 0 and method == self.method and self.contains in path


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.seen.append((method, path))
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    return rule
        return None

    def count(self, method: str, contains: str = "") -> int:
        with self._lock:
            return sum(1 for seen_method, path in self.seen if seen_method == method and contains in path)


_HOP_BY_HOP = {"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def _handler(proxy: FaultProxy, host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            return

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rule = proxy.take(self.command, self.path)
            if rule is not None and not (rule.forward_first or rule.drop_header or rule.rewrite):
                self._error(rule)
                return
            headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
            if rule is not None and rule.drop_header:
                headers = {name: value for name, value in headers.items() if name.lower() != rule.drop_header.lower()}
            headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(host, port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
                status, answer_headers = answer.status, answer.getheaders()
            finally:
                connection.close()
            if rule is not None and rule.forward_first:
                self._error(rule)
                return
            if rule is not None and rule.rewrite:
                payload = rule.rewrite(payload)
            self.send_response(status)
            for name, value in answer_headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() not in {"content-length", "date", "server"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _error(self, rule: Rule) -> None:
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}</Code>'
                f"<Message>injected by the test proxy</Message></Error>"
            ).encode()
            self.send_response(rule.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[tuple[FaultProxy, str]]:
    """A FaultProxy in front of the moto server; yields (proxy, its endpoint URL)."""
    upstream = s3_server.removeprefix("http://")
    host, port = upstream.rsplit(":", 1)
    proxy = FaultProxy(upstream=s3_server)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy, host, int(port)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
