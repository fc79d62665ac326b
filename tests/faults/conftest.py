"""Fixtures of the fault-injection suite; the harness itself lives in faultkit.py.

Trial folders live on a RAM file system (/dev/shm) when there is one: a SIGKILL,
an injected errno or a simulated power loss does not depend on the medium, and
fsync costing nothing there keeps hundreds of trials fast on a busy machine.
``DBKEEP_FAULT_TMP=disk`` puts them on the ordinary temporary folder instead.
A failing test's folder is kept (its path is in the failure) for inspection.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultkit  # noqa: E402

RAM_FOLDER = Path("/dev/shm")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash.setdefault(_FAILED, True)


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def tmp_path(request, tmp_path_factory) -> Path:
    """A fresh folder per test, on a RAM file system when one is available."""
    if os.environ.get("DBKEEP_FAULT_TMP") == "disk" or not (RAM_FOLDER.is_dir() and os.access(RAM_FOLDER, os.W_OK)):
        yield tmp_path_factory.mktemp(request.node.name[:40])
        return
    directory = Path(tempfile.mkdtemp(prefix=f"dbkeep-faults-{request.node.name[:40]}-", dir=RAM_FOLDER))
    yield directory
    if not request.node.stash.get(_FAILED, False):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def driver():
    """A batch driver that forks one real process per trial (module-wide, for speed)."""
    with faultkit.driver() as instance:
        yield instance


@pytest.fixture
def project(tmp_path: Path) -> faultkit.Project:
    """A fresh project: a WAL database, a rollback-journal database and a plain file."""
    return faultkit.build_project(tmp_path / "base")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    directory = tmp_path / "scratch"
    directory.mkdir()
    return directory
