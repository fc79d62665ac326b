"""Notifications against a real local HTTP server and a real local SMTP server."""

from __future__ import annotations

import email
import json
import socketserver
import sys
import threading
from datetime import datetime, timezone
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from maintenance.config import EmailSettings, NotifySettings
from maintenance.notify import notify
from maintenance.report import FAILED, OK, RoutineReport, Step

REPORT_OK = RoutineReport(routine="daily", started=datetime(2025, 1, 16, 2, tzinfo=timezone.utc), steps=(Step(name="create", status=OK, seconds=0.5, summary="snapshot x"),))
REPORT_FAILED = RoutineReport(
    routine="daily",
    started=datetime(2025, 1, 16, 2, tzinfo=timezone.utc),
    steps=(Step(name="create", status=OK, seconds=0.5, summary="snapshot x"), Step(name="verify", status=FAILED, seconds=0.1, summary="chunk abc does not match")),
)


@pytest.fixture
def http_server():
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            length = int(self.headers["Content-Length"])
            received.append((self.path, json.loads(self.rfile.read(length))))
            status = 500 if self.path.startswith("/broken") else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


class SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to accept one message per transaction."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 localhost test SMTP")
        sender, recipients = None, []
        while line := self.rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 localhost")
            elif verb == "MAIL":
                sender = command.split(":", 1)[1].strip().strip("<>")
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.server.messages.append((sender, recipients, b"".join(lines)))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SMTPHandler)
    server.daemon_threads = True
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], server.messages
    server.shutdown()
    server.server_close()


def test_webhook_gets_healthchecks_style_start_success_and_fail_pings_with_report(http_server):
    url, received = http_server
    settings = NotifySettings(webhook=url + "/ping/abc")
    notify(settings, event="start", routine="daily")
    success = notify(settings, event="success", routine="daily", report=REPORT_OK, log_tail=["create: ok"])
    failure = notify(settings, event="failure", routine="daily", report=REPORT_FAILED, log_tail=["verify: failed"])
    assert [path for path, _ in received] == ["/ping/abc/start", "/ping/abc", "/ping/abc/fail"]
    assert success[0].ok and failure[0].ok
    body = received[2][1]
    assert body["ok"] is False and body["event"] == "failure"
    assert body["report"]["steps"][1]["summary"] == "chunk abc does not match"
    assert body["log_tail"] == ["verify: failed"]
    assert "verify" in body["message"]


def test_webhook_error_status_and_unreachable_host_are_failed_deliveries(http_server):
    url, _received = http_server
    broken = notify(NotifySettings(webhook=url + "/broken"), event="success", routine="daily", report=REPORT_OK)
    assert not broken[0].ok and "HTTP 500" in broken[0].detail
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    unreachable = notify(NotifySettings(webhook="http://127.0.0.1:9/x", timeout=5), event="start", routine="daily")
    assert not unreachable[0].ok and "cannot reach" in unreachable[0].detail


def test_email_on_failure_reaches_the_smtp_server_with_report_and_log_tail(smtp_server):
    port, messages = smtp_server
    settings = NotifySettings(email=EmailSettings(host="127.0.0.1", port=port, sender="backup@example.org", to=("ops@example.org", "dev@example.org")))
    assert notify(settings, event="success", routine="daily", report=REPORT_OK) == []  # email only on failure by default
    deliveries = notify(settings, event="failure", routine="daily", report=REPORT_FAILED, log_tail=["verify: failed (0.1s) chunk abc"])
    assert deliveries[0].ok, deliveries
    assert len(messages) == 1
    sender, recipients, data = messages[0]
    assert sender == "backup@example.org" and recipients == ["ops@example.org", "dev@example.org"]
    message = email.message_from_bytes(data, policy=email_policy.default)
    assert "maintenance.daily failed: verify" in message["Subject"]
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "chunk abc does not match" in text and "verify: failed (0.1s) chunk abc" in text
    attachment = next(message.iter_attachments())
    assert json.loads(attachment.get_content())["report"]["ok"] is False


def test_email_to_a_closed_port_is_a_failed_delivery():
    settings = NotifySettings(email=EmailSettings(host="127.0.0.1", port=9, sender="a@example.org", to=("b@example.org",)), timeout=5)
    deliveries = notify(settings, event="failure", routine="weekly", report=REPORT_FAILED)
    assert not deliveries[0].ok and "cannot send email" in deliveries[0].detail


def test_shell_command_gets_the_json_on_stdin_and_the_event_in_its_environment(tmp_path):
    out = tmp_path / "out.json"
    script = tmp_path / "hook.py"
    script.write_text("import json, os, sys\nbody = json.load(sys.stdin)\nbody['env'] = os.environ['DBKEEP_EVENT']\nopen(sys.argv[1], 'w').write(json.dumps(body))\n")
    settings = NotifySettings(command=f"{sys.executable} {script} {out}")
    deliveries = notify(settings, event="failure", routine="monthly", report=REPORT_FAILED, log_tail=["x"])
    assert deliveries[0].ok
    written = json.loads(out.read_text())
    assert written["env"] == "failure" and written["routine"] == "monthly" and written["report"]["ok"] is False


def test_failing_shell_command_is_reported_with_its_exit_code():
    deliveries = notify(NotifySettings(command="echo nope >&2; exit 3"), event="start", routine="daily")
    assert not deliveries[0].ok and "exited 3: nope" in deliveries[0].detail
