"""The verification ledger: when each snapshot and pack was last verified, and how it went.

Owns: ``ledger.json`` at the top of the repository (sealed JSON like a manifest,
written atomically through the storage contract), reading it back strictly, and
read-modify-write under the storage's critical section so two processes never
lose each other's entries. Knows snapshot and pack ids, never their contents.
Verification itself stays read-only; the routines record its results here.

    {"format": "dbkeep-ledger", "version": 1, "sha256": "...", "body": {
      "snapshots": {"<snapshot id>": {"at": "2025-01-16T02:00:00Z", "ok": true,
                                      "level": "read-data", "detail": ""}},
      "packs":     {"<pack id>": {"at": "...", "ok": true, "level": "read-data", "detail": ""}}}}
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import CorruptManifest
from .manifest import seal, unseal
from .storage import Storage

LEDGER_NAME = "ledger.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """One verification outcome: when, whether it passed, how deep, and what failed."""

    at: datetime
    ok: bool
    level: str = "read-data"
    detail: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"at": _text(self.at), "ok": self.ok, "level": self.level, "detail": self.detail}

    @classmethod
    def from_body(cls, body: object) -> Verification:
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            raise ValueError("an entry is not an object with a boolean 'ok'")
        moment = datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("an entry's time has no zone")
        return cls(at=moment, ok=body["ok"], level=str(body.get("level", "read-data")), detail=str(body.get("detail", "")))


def _text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    snapshots: Mapping[str, Verification] = field(default_factory=dict)
    packs: Mapping[str, Verification] = field(default_factory=dict)

    def outcomes(self) -> dict[str, bool]:
        """Snapshot id -> did its last verification pass (the input retention needs)."""
        return {snapshot_id: entry.ok for snapshot_id, entry in self.snapshots.items()}

    def recording(
        self,
        *,
        at: datetime,
        snapshots: Mapping[str, str | None] = {},
        packs: Mapping[str, str | None] = {},
        level: str = "read-data",
    ) -> Ledger:
        """A ledger with new outcomes: each id maps to None (passed) or what failed."""
        new_snapshots = dict(self.snapshots)
        new_packs = dict(self.packs)
        for target, results in ((new_snapshots, snapshots), (new_packs, packs)):
            for key, failure in results.items():
                target[key] = Verification(at=at, ok=failure is None, level=level, detail=failure or "")
        return Ledger(snapshots=new_snapshots, packs=new_packs)

    def keeping_only(self, *, snapshot_ids: Collection[str], pack_ids: Collection[str]) -> Ledger:
        """Drop entries of snapshots and packs that no longer exist."""
        snapshots_present, packs_present = set(snapshot_ids), set(pack_ids)
        return Ledger(
            snapshots={key: value for key, value in self.snapshots.items() if key in snapshots_present},
            packs={key: value for key, value in self.packs.items() if key in packs_present},
        )

    def to_json(self) -> bytes:
        body = {
            "snapshots": {key: value.to_body() for key, value in sorted(self.snapshots.items())},
            "packs": {key: value.to_body() for key, value in sorted(self.packs.items())},
        }
        return seal(body, kind="ledger")

    @classmethod
    def from_json(cls, data: bytes) -> Ledger:
        """Parse the ledger; raises CorruptManifest (with the way out) if it is damaged."""
        try:
            body = unseal(data, kind="ledger")
            return cls(
                snapshots={str(key): Verification.from_body(value) for key, value in dict(body["snapshots"]).items()},
                packs={str(key): Verification.from_body(value) for key, value in dict(body["packs"]).items()},
            )
        except (CorruptManifest, KeyError, TypeError, ValueError) as error:
            raise CorruptManifest(
                f"verification ledger {LEDGER_NAME} is damaged ({error}); delete it and run "
                "maintenance.weekly to verify everything again"
            ) from error


def load_ledger(storage: Storage) -> Ledger:
    """The ledger, or an empty one if none was written yet; CorruptManifest if damaged."""
    if not storage.exists(LEDGER_NAME):
        return Ledger()
    return Ledger.from_json(storage.get(LEDGER_NAME))


def update_ledger(storage: Storage, change: Callable[[Ledger], Ledger]) -> Ledger:
    """Read, change and atomically rewrite the ledger while no other process can."""
    with storage.critical_section():
        ledger = change(load_ledger(storage))
        storage.put(LEDGER_NAME, [ledger.to_json()])
    return ledger
