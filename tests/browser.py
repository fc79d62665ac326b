"""A headless chromium driven through the DevTools protocol, for tests of HTML pages.

Chromium is started with ``--remote-debugging-pipe``: commands go in on its file
descriptor 3 and replies and events come out on 4, as JSON separated by NUL
bytes. Every wait is on the browser's own reply or event, with a deadline; no
sleeps. The browser is a process this helper started, and it is closed (or
killed) when the ``with`` block ends.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
# Chromium reads the pipe on fds 3 and 4 exactly; this puts them there in the child.
_TRAMPOLINE = (
    "import fcntl, os, sys\n"
    "commands = fcntl.fcntl(int(sys.argv[1]), fcntl.F_DUPFD, 10)\n"
    "replies = fcntl.fcntl(int(sys.argv[2]), fcntl.F_DUPFD, 10)\n"
    "os.dup2(commands, 3); os.dup2(replies, 4)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)
PROBLEM_EVENTS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")


class BrowserError(Exception):
    pass


@dataclass
class Page:
    """One tab: navigate, evaluate, screenshot; ``problems`` collects console output and errors."""

    browser: Browser
    session: str
    problems: list[dict[str, Any]] = field(default_factory=list)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.browser.wait_for(lambda message: message.get("method") == "Page.loadEventFired" and message.get("sessionId") == self.session)

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression} failed: {reply['exceptionDetails']}")
        return reply["result"]["value"]

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"])
        path.write_bytes(data)
        return data

    def collect_problems(self) -> list[str]:
        """Every console message, uncaught exception and log entry (CSP refusals are these) so far."""
        self.browser.drain()
        for message in self.browser.take_events(lambda message: message.get("method") in PROBLEM_EVENTS and message.get("sessionId") == self.session):
            self.problems.append(message)
        return [json.dumps(problem["params"])[:400] for problem in self.problems]


class Browser:
    def __init__(self, profile: Path) -> None:
        if BROWSER is None:
            raise BrowserError("no chromium installed")
        self.log = profile.with_suffix(".log")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _TRAMPOLINE, str(commands_read), str(replies_write), BROWSER, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                pass_fds=(commands_read, replies_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(commands_read)
        os.close(replies_write)
        fcntl.fcntl(self._replies, fcntl.F_SETFL, fcntl.fcntl(self._replies, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, timeout: float = 60) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        wanted = self._next_id
        reply = self.wait_for(lambda candidate: candidate.get("id") == wanted, timeout=timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _read(self, deadline: float | None) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            ready, _, _ = select.select([self._replies], [], [], left)
            if not ready:
                return None
            try:
                chunk = os.read(self._replies, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise BrowserError(f"chromium exited: {self.log.read_text(errors='replace')[-1500:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60) -> dict[str, Any]:
        for index, message in enumerate(self._events):
            if predicate(message):
                return self._events.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message is None:
                raise BrowserError(f"no answer from chromium within {timeout} s")
            if predicate(message):
                return message
            self._events.append(message)

    def drain(self) -> None:
        """Take in every message chromium has already sent, without waiting for more."""
        while (message := self._read(time.monotonic())) is not None:
            self._events.append(message)

    def take_events(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        taken = [message for message in self._events if predicate(message)]
        self._events = [message for message in self._events if not predicate(message)]
        return taken

    def new_page(self, *, width: int, height: int = 900, media: str = "screen", color_scheme: str = "light") -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(browser=self, session=session)
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            page.send(domain)
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        page.send("Emulation.setEmulatedMedia", {"media": media, "features": [{"name": "prefers-color-scheme", "value": color_scheme}]})
        return page

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close", timeout=15)
            self.process.wait(timeout=15)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=15)
        finally:
            os.close(self._commands)
            os.close(self._replies)


@contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    browser = Browser(profile)
    try:
        yield browser
    finally:
        browser.close()
