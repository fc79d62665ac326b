"""The command line for encryption, keys, copy and import, end to end in subprocesses.

Each test drives ``python -m maintenance.program`` (the ``dbkeep`` script) on a
sample project with real SQLite databases, then checks the outcome on disk: what
a restore brings back (``logical_dump_digest``), which key files exist, and that
a refused command left every byte of the repository as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_support import assert_expected_failure, cli_environment, dbkeep, parse_json  # noqa: E402

from backup.sample import create_sample_project  # noqa: E402
from backup.sources import logical_dump_digest  # noqa: E402

pytest.importorskip("cryptography")

PASSPHRASE = {"DBKEEP_PASSWORD": "first passphrase"}
SAMPLE_SIZE = 256 * 1024
DATABASES = ("app.db", "data/analytics.sqlite")


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256: equal states mean nothing changed."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


def live_digests(root: Path) -> dict[str, str]:
    return {name: logical_dump_digest(root / name) for name in DATABASES} | {"files/settings.json": hashlib.sha256((root / "files" / "settings.json").read_bytes()).hexdigest()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    create_sample_project(root, size=SAMPLE_SIZE)
    return root


@pytest.fixture(scope="module")
def encrypted_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once per module (scrypt makes every encrypted command cost ~0.6 s)."""
    project = tmp_path_factory.mktemp("encrypted") / "shop"
    create_sample_project(project, size=SAMPLE_SIZE)
    created = dbkeep("backup.init", "--encrypt", cwd=project, env=PASSPHRASE)
    assert created.returncode == 0, created.stderr
    backed_up = dbkeep("backup.create", cwd=project, env=PASSPHRASE)
    assert backed_up.returncode == 0, backed_up.stderr
    return project


@pytest.fixture
def encrypted(encrypted_template: Path, tmp_path: Path) -> Path:
    """A private copy of a sample project with an encrypted repository holding one snapshot."""
    return Path(shutil.copytree(encrypted_template, tmp_path / "shop"))


# -- init and passphrases -------------------------------------------------------------------------


def test_init_encrypt_creates_a_repository_whose_files_never_show_the_data(encrypted: Path) -> None:
    config = json.loads((encrypted / ".backups" / "config.json").read_text())
    assert config["format"] == "dbkeep-encrypted-config"
    assert len(list((encrypted / ".backups" / "keys").iterdir())) == 1
    listing = parse_json(dbkeep("backup.list", "--json", cwd=encrypted, env=PASSPHRASE))
    assert len(listing["snapshots"]) == 1
    stored = b"".join(path.read_bytes() for path in (encrypted / ".backups").rglob("*") if path.is_file())
    assert b"CREATE TABLE" not in stored and b"app.db" not in stored


def test_wrong_passphrase_exits_4_with_one_line_and_changes_nothing(encrypted: Path) -> None:
    before = tree_state(encrypted)
    wrong = {"DBKEEP_PASSWORD": "not it"}
    for arguments in (("backup.create",), ("backup.restore", "latest", "--force")):
        result = dbkeep(*arguments, cwd=encrypted, env=wrong)
        assert_expected_failure(result, 4, "passphrase opens none of the 1 key(s)", "nothing was changed")
    document = parse_json(dbkeep("backup.list", "--json", cwd=encrypted, env=wrong))
    assert document["ok"] is False and document["error"] == {"type": "WrongPassphrase", "message": document["error"]["message"], "exit_code": 4}
    assert tree_state(encrypted) == before


def test_encrypted_repository_without_a_passphrase_exits_2_naming_the_variables(encrypted: Path) -> None:
    assert_expected_failure(dbkeep("backup.list", cwd=encrypted), 2, "DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or DBKEEP_PASSWORD_COMMAND")


def test_passphrase_from_a_file_opens_the_repository_and_two_sources_exit_2(encrypted: Path, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("first passphrase\n")
    assert dbkeep("backup.list", cwd=encrypted, env={"DBKEEP_PASSWORD_FILE": str(secret)}).returncode == 0
    both = {"DBKEEP_PASSWORD_FILE": str(secret), **PASSPHRASE}
    assert_expected_failure(dbkeep("backup.list", cwd=encrypted, env=both), 2, "set only one of")


def test_init_where_a_repository_exists_exits_2_and_changes_nothing(encrypted: Path) -> None:
    before = tree_state(encrypted / ".backups")
    assert_expected_failure(dbkeep("backup.init", "--encrypt", cwd=encrypted, env=PASSPHRASE), 2, "already exists", "nothing was changed")
    assert tree_state(encrypted / ".backups") == before


def test_init_encrypt_without_passphrase_or_terminal_exits_2_and_creates_nothing(project: Path) -> None:
    assert_expected_failure(dbkeep("backup.init", "--encrypt", cwd=project), 2, "needs a passphrase", "DBKEEP_PASSWORD_FILE")
    assert not (project / ".backups" / "config.json").exists()


def test_init_without_encrypt_creates_a_plain_repository(project: Path) -> None:
    document = parse_json(dbkeep("backup.init", "--json", cwd=project))
    assert document["encryption"] == "none" and document["key"] is None
    assert json.loads((project / ".backups" / "config.json").read_text())["format"] == "dbkeep-config"


def _on_terminal(arguments: list[str], cwd: Path, answers: list[tuple[str, str]]) -> tuple[int, str, str]:
    """Run dbkeep with stdin and stderr on a pseudo-terminal, typing each answer after its prompt.

    The child gets its own session (no controlling terminal), so getpass falls back
    to the pseudo-terminal on stdin instead of the terminal running the tests.
    Returns (exit code, stdout, what the terminal showed).
    """
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "maintenance.program", *arguments],
        cwd=cwd,
        env=cli_environment(home=cwd),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    shown = b""
    pending = list(answers)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    piece = os.read(master, 4096)
                except OSError:
                    break  # the child closed the terminal
                if not piece:
                    break
                shown += piece
                if pending and pending[0][0].encode() in shown.rsplit(b"\n", 1)[-1]:
                    os.write(master, pending.pop(0)[1].encode() + b"\n")
            elif process.poll() is not None:
                break
        stdout = process.stdout.read().decode() if process.stdout else ""
        code = process.wait(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, stdout, shown.decode(errors="replace")


def test_init_on_a_terminal_asks_twice_and_the_typed_passphrase_opens_the_repository(project: Path) -> None:
    code, stdout, shown = _on_terminal(
        ["backup.init", "--encrypt"],
        project,
        [("passphrase for the new repository:", "typed secret"), ("passphrase for the new repository again:", "typed secret")],
    )
    assert code == 0, shown
    assert "created repository" in stdout and "typed secret" not in shown + stdout  # never echoed
    assert dbkeep("backup.create", cwd=project, env={"DBKEEP_PASSWORD": "typed secret"}).returncode == 0


def test_init_on_a_terminal_with_two_different_answers_exits_2_and_creates_nothing(project: Path) -> None:
    code, _stdout, shown = _on_terminal(
        ["backup.init", "--encrypt"],
        project,
        [("passphrase for the new repository:", "one"), ("passphrase for the new repository again:", "two")],
    )
    assert code == 2 and "the two passphrases typed differ" in shown and "Traceback" not in shown
    assert not (project / ".backups" / "config.json").exists()


# -- keys ------------------------------------------------------------------------------------


def test_key_add_list_remove_and_passwd_manage_who_can_open_the_repository(encrypted: Path) -> None:
    added = parse_json(dbkeep("backup.key-add", "--json", cwd=encrypted, env={**PASSPHRASE, "DBKEEP_NEW_PASSWORD": "second passphrase"}))["key"]
    second = {"DBKEEP_PASSWORD": "second passphrase"}
    keys = parse_json(dbkeep("backup.key-list", "--json", cwd=encrypted, env=second))["keys"]
    assert len(keys) == 2 and [key["id"] for key in keys if key["current"]] == [added["id"]]
    first_id = next(key["id"] for key in keys if not key["current"])
    assert_expected_failure(dbkeep("backup.key-remove", added["id"][:8], cwd=encrypted, env=second), 2, "this passphrase opened", "backup.key-passwd")
    removed = dbkeep("backup.key-remove", first_id[:8], cwd=encrypted, env=second)
    assert removed.returncode == 0 and first_id in removed.stdout
    assert_expected_failure(dbkeep("backup.list", cwd=encrypted, env=PASSPHRASE), 4, "passphrase opens none")
    changed = dbkeep("backup.key-passwd", cwd=encrypted, env={**second, "DBKEEP_NEW_PASSWORD": "third passphrase"})
    assert changed.returncode == 0, changed.stderr
    assert_expected_failure(dbkeep("backup.list", cwd=encrypted, env=second), 4)
    assert dbkeep("backup.list", cwd=encrypted, env={"DBKEEP_PASSWORD": "third passphrase"}).returncode == 0
    assert len(list((encrypted / ".backups" / "keys").iterdir())) == 1


def test_key_add_without_a_new_passphrase_or_terminal_exits_2_and_adds_nothing(encrypted: Path) -> None:
    assert_expected_failure(dbkeep("backup.key-add", cwd=encrypted, env=PASSPHRASE), 2, "DBKEEP_NEW_PASSWORD")
    assert len(list((encrypted / ".backups" / "keys").iterdir())) == 1


def test_key_commands_on_a_plain_repository_exit_2(project: Path) -> None:
    assert dbkeep("backup.create", cwd=project).returncode == 0
    assert_expected_failure(dbkeep("backup.key-list", cwd=project), 2, "is not encrypted")


# -- copy ------------------------------------------------------------------------------------


def test_copy_to_a_second_repository_then_restore_from_it_gives_the_same_databases(encrypted: Path, tmp_path: Path) -> None:
    assert dbkeep("backup.create", "--tag", "second", cwd=encrypted, env=PASSPHRASE).returncode == 0
    ids = [item["id"] for item in parse_json(dbkeep("backup.list", "--json", cwd=encrypted, env=PASSPHRASE))["snapshots"]]
    environment = {**PASSPHRASE, "DBKEEP_TARGET_PASSWORD": "off-site passphrase"}
    first = parse_json(dbkeep("backup.copy", "--snapshot", ids[0], "--to", "../offsite", "--encrypt", "--json", cwd=encrypted, env=environment))
    assert [item["snapshot_id"] for item in first["snapshots"]] == [ids[0]] and first["snapshots"][0]["chunks_sent"] > 0
    again = dbkeep("backup.copy", "--snapshot", f"{ids[0]},{ids[1]}", "--to", str(tmp_path / "offsite"), cwd=encrypted, env=environment)
    assert again.returncode == 0, again.stderr
    assert "already there" in again.stdout and "copied 1 of 2" in again.stdout
    offsite = tmp_path / "offsite-project"
    offsite.mkdir()
    (offsite / "invoke.yaml").write_text(f"backup:\n  repository: {tmp_path / 'offsite'}\n")
    remote = {"DBKEEP_PASSWORD": "off-site passphrase"}
    assert [item["id"] for item in parse_json(dbkeep("backup.list", "--json", cwd=offsite, env=remote))["snapshots"]] == ids
    restored = dbkeep("backup.restore", "latest", "--target", "restored", "--force", cwd=offsite, env=remote)
    assert restored.returncode == 0, restored.stderr
    assert live_digests(offsite / "restored") == live_digests(encrypted)


def test_copy_defaults_to_latest_and_warns_when_an_encrypted_snapshot_lands_in_a_plain_repository(encrypted: Path, tmp_path: Path) -> None:
    result = dbkeep("backup.copy", "--to", str(tmp_path / "plain"), cwd=encrypted, env=PASSPHRASE)
    assert result.returncode == 0, result.stderr
    assert "copied 1 of 1" in result.stdout and "is not encrypted" in result.stderr
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["format"] == "dbkeep-config"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [((), "needs --to"), (("--to", ".backups"), "the source repository itself"), (("--to", "s3://"), "not an s3://bucket/prefix")],
    ids=["no-target", "itself", "bad-s3"],
)
def test_copy_refused_exits_2_with_one_line(encrypted: Path, arguments: tuple[str, ...], fragment: str) -> None:
    assert_expected_failure(dbkeep("backup.copy", *arguments, cwd=encrypted, env=PASSPHRASE), 2, fragment)


# -- export then import ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arguments"), [("out.tar.gz", ()), ("out.tar.zst", ()), ("out", ("--format", "dir"))], ids=["tar.gz", "tar.zst", "dir"])
def test_export_then_import_into_a_fresh_repository_restores_identical_content(project: Path, tmp_path: Path, name: str, arguments: tuple[str, ...]) -> None:
    assert dbkeep("backup.create", cwd=project).returncode == 0
    expected = live_digests(project)
    snapshot_id = parse_json(dbkeep("backup.list", "--json", cwd=project))["snapshots"][-1]["id"]
    archive = tmp_path / name
    exported = dbkeep("backup.export", "latest", str(archive), *arguments, cwd=project)
    assert exported.returncode == 0, exported.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    imported = parse_json(dbkeep("backup.import", str(archive), "--json", cwd=fresh))
    assert imported["source_snapshot_id"] == snapshot_id and imported["snapshot"]["tag"] == "import"
    assert sorted(imported["imported_files"]) == sorted(expected)
    restored = dbkeep("backup.restore", imported["snapshot"]["id"], "--target", "restored", "--force", cwd=fresh)
    assert restored.returncode == 0, restored.stderr
    assert live_digests(fresh / "restored") == expected


def test_import_into_an_encrypted_repository_keeps_it_encrypted(encrypted: Path, tmp_path: Path) -> None:
    archive = tmp_path / "out.tar.gz"
    assert dbkeep("backup.export", "latest", str(archive), cwd=encrypted, env=PASSPHRASE).returncode == 0
    result = dbkeep("backup.import", str(archive), cwd=encrypted, env=PASSPHRASE)
    assert result.returncode == 0, result.stderr
    assert "imported 3 file(s)" in result.stdout
    assert len(parse_json(dbkeep("backup.list", "--json", cwd=encrypted, env=PASSPHRASE))["snapshots"]) == 2


def test_import_of_a_hostile_archive_exits_2_with_one_line_and_imports_nothing(project: Path, tmp_path: Path) -> None:
    assert dbkeep("backup.create", cwd=project).returncode == 0
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as evil:
        info = tarfile.TarInfo("../escaped")
        payload = b"pwned"
        info.size = len(payload)
        evil.addfile(info, io.BytesIO(payload))
    before = tree_state(project)
    assert_expected_failure(dbkeep("backup.import", str(archive), cwd=project), 2, "'../escaped'", "not normalised")
    assert tree_state(project) == before and not (tmp_path / "escaped").exists()


# -- maintenance.daily off-site ----------------------------------------------------------------------


def test_daily_reads_the_projects_invoke_yaml_and_copies_the_new_snapshot_off_site(encrypted: Path, tmp_path: Path) -> None:
    settings_file = encrypted / "invoke.yaml"
    settings_file.write_text(settings_file.read_text() + "  maintenance:\n    offsite: ../offsite\n    offsite_encrypt: true\n")
    result = dbkeep("maintenance.daily", "--json", cwd=encrypted, env={**PASSPHRASE, "DBKEEP_TARGET_PASSWORD": "off-site passphrase"})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == ["create", "verify", "off-site copy", "retention + prune", "freshness"]
    assert len(steps["create"]["details"]["files"]) == 3  # invoke.yaml's include reaches files/settings.json
    # Both the snapshot made earlier and today's: an empty off-site repository is caught up.
    assert len(steps["off-site copy"]["details"]["copied"]) == 2
    offsite = tmp_path / "offsite-project"
    offsite.mkdir()
    (offsite / "invoke.yaml").write_text(f"backup:\n  repository: {tmp_path / 'offsite'}\n")
    listing = parse_json(dbkeep("backup.list", "--json", cwd=offsite, env={"DBKEEP_PASSWORD": "off-site passphrase"}))
    assert [item["id"] for item in listing["snapshots"]] == steps["off-site copy"]["details"]["copied"]
