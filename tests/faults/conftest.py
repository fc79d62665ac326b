"""Fixtures of the fault-injection suite; the harness itself lives in faultkit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultkit  # noqa: E402


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
