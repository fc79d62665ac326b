"""Routine reports: the record every routine returns, and its JSON and Markdown forms.

Owns: ``Step`` and ``RoutineReport`` and turning them into plain data (for
``--json``, webhooks and email) and Markdown (for ``$GITHUB_STEP_SUMMARY``).
Knows nothing of how the steps were done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from backup.errors import BackupError

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of a routine: its outcome in one line, and details as plain data."""

    name: str
    status: str
    seconds: float
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutineReport:
    routine: str
    started: datetime
    steps: tuple[Step, ...]
    alerts: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no step failed and no alert was raised."""
        return all(step.ok for step in self.steps) and not self.alerts

    @property
    def seconds(self) -> float:
        return round(sum(step.seconds for step in self.steps), 3)

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def log_lines(self) -> list[str]:
        lines = [f"{step.name}: {step.status} ({step.seconds:.1f}s) {step.summary}" for step in self.steps]
        lines += [f"ALERT: {alert}" for alert in self.alerts]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "routine": self.routine,
            "ok": self.ok,
            "started": self.started.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
            "seconds": self.seconds,
            "alerts": list(self.alerts),
            "steps": [
                {"name": step.name, "status": step.status, "seconds": step.seconds, "summary": step.summary, "details": _plain(step.details)}
                for step in self.steps
            ],
        }

    def to_markdown(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [f"### dbkeep maintenance.{self.routine}: {verdict}", "", "| step | result | seconds | summary |", "| --- | --- | ---: | --- |"]
        for step in self.steps:
            lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {_cell(step.summary)} |")
        if self.alerts:
            lines += ["", *[f"> **Alert:** {_cell(alert)}" for alert in self.alerts]]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class StepRunner:
    """Runs steps in order, timing each and turning expected failures into a failed step.

    A ``BackupError`` becomes a failed step with its one-line message; any other
    exception is a bug and propagates with its traceback.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.steps: list[Step] = []
        self._clock = clock

    def run(self, name: str, action: Callable[[], tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], bool]]) -> bool:
        """Run ``action`` (returning summary, details[, ok]); True if the step passed."""
        started = self._clock()
        try:
            outcome = action()
        except BackupError as error:
            self.steps.append(Step(name=name, status=FAILED, seconds=round(self._clock() - started, 3), summary=str(error)))
            return False
        summary, details, *rest = outcome
        passed = rest[0] if rest else True
        self.steps.append(Step(name=name, status=OK if passed else FAILED, seconds=round(self._clock() - started, 3), summary=summary, details=details))
        return passed

    def skip(self, name: str, why: str) -> None:
        self.steps.append(Step(name=name, status=SKIPPED, seconds=0.0, summary=why))
