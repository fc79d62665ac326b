"""Shared fixtures: real projects with real SQLite databases in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backup.settings import Settings, settings_from_mapping
from tests.dbhelpers import make_database


@pytest.fixture(scope="session", autouse=True)
def session_index_cache_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Processes started once per session (the fault driver) keep their index copies here, not in ~/.cache."""
    directory = tmp_path_factory.mktemp("session-index-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBKEEP_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(autouse=True)
def index_cache_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its local index copies (backup/indexcache.py) apart, never in the user's cache."""
    directory = tmp_path_factory.mktemp("index-cache")
    monkeypatch.setenv("DBKEEP_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    make_database(root / "app.db")
    make_database(root / "data" / "analytics.sqlite", rows=500, journal_mode="delete", seed=2)
    (root / "data" / "notes.db").write_bytes(b"not sqlite, a plain file\n" * 100)
    (root / "README.txt").write_text("not selected\n")
    return root


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def build(root: Path, **values: object) -> Settings:
        return settings_from_mapping({"lock_wait": 0, **values}, root=root)

    return build


@pytest.fixture
def settings(project: Path, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(project)
