"""Notifications: tell someone when a routine starts, succeeds or fails.

Owns: delivering one event to each configured channel — a webhook with
healthchecks-style pings (``URL/start``, ``URL``, ``URL/fail``, each a POST
with a JSON body holding the report and a log tail), a shell command (the same
JSON on standard input, the event in ``DBKEEP_EVENT``), and email through SMTP.
A channel that fails is reported as a failed delivery; it never hides the
routine's own result and never stops the other channels.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from .config import EmailSettings, NotifySettings, smtp_password
from .report import RoutineReport

PING_SUFFIX = {"start": "/start", "success": "", "failure": "/fail"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    channel: str
    event: str
    ok: bool
    detail: str = ""


def payload(*, event: str, routine: str, report: RoutineReport | None, log_tail: Sequence[str], message: str = "") -> dict[str, Any]:
    """The JSON document every channel receives."""
    return {
        "event": event,
        "routine": routine,
        "host": socket.gethostname(),
        "ok": None if report is None else report.ok,
        "message": message or _headline(event, routine, report),
        "report": None if report is None else report.to_dict(),
        "log_tail": list(log_tail),
    }


def _headline(event: str, routine: str, report: RoutineReport | None) -> str:
    if event == "start":
        return f"dbkeep maintenance.{routine} started"
    if report is not None and not report.ok:
        failed = [step.name for step in report.steps if not step.ok]
        return f"dbkeep maintenance.{routine} failed: " + ", ".join(failed + [f"{len(report.alerts)} alert(s)"] * bool(report.alerts))
    return f"dbkeep maintenance.{routine} {'succeeded' if event == 'success' else 'failed'}"


def send_webhook(url: str, event: str, body: dict[str, Any], *, timeout: float) -> Delivery:
    target = url.rstrip("/") + PING_SUFFIX[event]
    request = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", "User-Agent": "dbkeep"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        return Delivery(channel="webhook", event=event, ok=False, detail=f"{target} answered HTTP {error.code}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return Delivery(channel="webhook", event=event, ok=False, detail=f"cannot reach {target}: {reason}")
    return Delivery(channel="webhook", event=event, ok=200 <= status < 300, detail=f"{target} answered HTTP {status}")


def run_command(command: str, event: str, body: dict[str, Any], *, timeout: float) -> Delivery:
    environment = {**os.environ, "DBKEEP_EVENT": event, "DBKEEP_ROUTINE": str(body["routine"]), "DBKEEP_OK": str(body["ok"]).lower()}
    try:
        completed = subprocess.run(command, shell=True, input=json.dumps(body).encode(), env=environment, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Delivery(channel="command", event=event, ok=False, detail=f"notify command did not finish within {timeout:g}s")
    except OSError as error:
        return Delivery(channel="command", event=event, ok=False, detail=f"cannot run notify command: {error}")
    if completed.returncode != 0:
        error_text = completed.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Delivery(channel="command", event=event, ok=False, detail=f"notify command exited {completed.returncode}: {error_text[0]}")
    return Delivery(channel="command", event=event, ok=True, detail="exit 0")


def send_email(email: EmailSettings, event: str, body: dict[str, Any], *, timeout: float, markdown: str = "") -> Delivery:
    message = EmailMessage()
    message["Subject"] = f"[dbkeep] {body['message']} on {body['host']}"
    message["From"] = email.sender
    message["To"] = ", ".join(email.to)
    text = [body["message"], ""]
    if markdown:
        text += [markdown, ""]
    if body["log_tail"]:
        text += ["Log tail:", *body["log_tail"], ""]
    message.set_content("\n".join(text))
    message.add_attachment(json.dumps(body, indent=2).encode(), maintype="application", subtype="json", filename=f"dbkeep-{body['routine']}.json")
    try:
        with smtplib.SMTP(email.host, email.port, timeout=timeout) as client:
            if email.starttls:
                client.starttls()
            if email.username:
                client.login(email.username, smtp_password(email) or "")
            client.send_message(message)
    except (smtplib.SMTPException, OSError) as error:
        return Delivery(channel="email", event=event, ok=False, detail=f"cannot send email through {email.host}:{email.port}: {error}")
    return Delivery(channel="email", event=event, ok=True, detail=f"sent to {', '.join(email.to)}")


def notify(
    settings: NotifySettings,
    *,
    event: str,
    routine: str,
    report: RoutineReport | None = None,
    log_tail: Sequence[str] = (),
    message: str = "",
) -> list[Delivery]:
    """Deliver ``event`` ("start", "success" or "failure") to every channel that wants it."""
    body = payload(event=event, routine=routine, report=report, log_tail=log_tail, message=message)
    deliveries: list[Delivery] = []
    if settings.webhook and event in settings.webhook_on:
        deliveries.append(send_webhook(settings.webhook, event, body, timeout=settings.timeout))
    if settings.command and event in settings.command_on:
        deliveries.append(run_command(settings.command, event, body, timeout=settings.timeout))
    if settings.email is not None and event in settings.email.on:
        markdown = report.to_markdown() if report is not None else ""
        deliveries.append(send_email(settings.email, event, body, timeout=settings.timeout, markdown=markdown))
    return deliveries
