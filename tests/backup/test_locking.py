"""Locks: one writer at a time, dead owners detected, live and foreign owners respected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from backup import RepositoryLocked, create_backup, verify_backup
from backup.errors import LockLost
from backup.locking import LockRecord, acquire, list_locks
from backup.storage import LocalStorage
from tests.dbhelpers import REPOSITORY_ROOT


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_lock(storage: LocalStorage, **changes) -> None:
    record = LockRecord.for_this_process(exclusive=True, purpose="planted")
    body = {**json.loads(record.to_json()), **changes}
    (storage.root / "locks").mkdir(parents=True, exist_ok=True)
    (storage.root / "locks" / "exclusive").write_text(json.dumps(body))


def test_lock_of_dead_process_on_this_host_is_broken_with_a_message(settings):
    create_backup(settings)
    _plant_lock(LocalStorage(settings.repository), pid=_dead_pid())

    report = create_backup(settings)

    assert any("no longer exists" in warning for warning in report.warnings)


def test_live_lock_is_reported_with_holder_and_left_in_place(settings):
    create_backup(settings)
    storage = LocalStorage(settings.repository)
    with acquire(storage, exclusive=True, purpose="test holder"):
        with pytest.raises(RepositoryLocked, match="test holder"):
            create_backup(settings)
        assert len(list_locks(storage)) == 1


def test_lock_from_another_host_is_never_broken_automatically(settings):
    create_backup(settings)
    _plant_lock(LocalStorage(settings.repository), host="elsewhere.example", pid=_dead_pid())

    with pytest.raises(RepositoryLocked, match="elsewhere.example"):
        create_backup(settings)


def test_garbled_lock_record_is_removed_and_reported(settings):
    create_backup(settings)
    (settings.repository / "locks" / "exclusive").write_bytes(b"\x00garbage")

    report = create_backup(settings)

    assert any("unreadable lock record" in warning for warning in report.warnings)


def test_shared_readers_coexist_but_block_a_writer(settings):
    create_backup(settings)
    storage = LocalStorage(settings.repository)
    with acquire(storage, exclusive=False, purpose="reader one"), acquire(storage, exclusive=False, purpose="reader two"):
        assert verify_backup(settings).ok
        with pytest.raises(RepositoryLocked, match="shared lock"):
            create_backup(settings)


def test_writer_whose_lock_was_removed_refuses_to_publish(settings):
    create_backup(settings)
    storage = LocalStorage(settings.repository)
    with acquire(storage, exclusive=True, purpose="victim") as lock:
        (settings.repository / "locks" / "exclusive").unlink()
        with pytest.raises(LockLost, match="nothing was published"):
            lock.ensure_held()


CREATE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from backup import create_backup, RepositoryLocked
    from backup.settings import settings_from_mapping
    settings = settings_from_mapping({"lock_wait": float(sys.argv[2])}, root=Path(sys.argv[1]))
    try:
        print(create_backup(settings).snapshot.id)
    except RepositoryLocked as error:
        print("LOCKED", error)
        sys.exit(3)
    """
)


def test_concurrent_backups_from_several_processes_each_succeed_in_turn(settings):
    create_backup(settings)
    processes = [
        subprocess.Popen([sys.executable, "-c", CREATE, str(settings.root), "60"], cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [process.communicate()[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0, 0], outputs
    report = verify_backup(settings, read_data=True)
    assert report.ok and report.snapshots_checked == 5


def test_concurrent_backup_without_waiting_fails_with_a_clear_lock_message(settings):
    create_backup(settings)
    storage = LocalStorage(settings.repository)
    with acquire(storage, exclusive=True, purpose="long backup"):
        completed = subprocess.run([sys.executable, "-c", CREATE, str(settings.root), "0"], cwd=REPOSITORY_ROOT, capture_output=True, text=True)

    assert completed.returncode == 3
    assert "locked" in completed.stdout and "long backup" in completed.stdout
