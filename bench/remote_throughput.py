"""Backup and restore throughput: local repository against S3 on loopback, same run.

Starts moto's S3 server on 127.0.0.1, builds one SQLite database, then for each
repository kind (local, local encrypted, S3, S3 encrypted) runs a first backup,
an unchanged second backup and a restore into an empty folder, each in its own
child process so peak memory (max RSS) is per run. Prints a Markdown table.

    python bench/remote_throughput.py --megabytes 64

Needs the s3 and encryption extras plus moto[server] (the test extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_database(path: Path, megabytes: int) -> None:
    rng = random.Random(7)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        row_bytes = 1000
        for start in range(0, megabytes * 1024 * 1024 // row_bytes, 5000):
            connection.executemany(
                "INSERT INTO rows VALUES (?, ?, ?)",
                ((start + i, f"customer {start + i}", rng.randbytes(row_bytes // 2) + bytes(row_bytes // 2)) for i in range(5000)),
            )


def child(kind: str, project: Path, repository: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from backup import create_backup, restore_backup, settings_from_mapping

    settings = settings_from_mapping(
        {"include": ["*.db"], "repository": repository, "encryption": "aes-256-gcm" if "encrypted" in kind else "none"}, root=project
    )
    size = (project / "bench.db").stat().st_size
    started = time.perf_counter()
    first = create_backup(settings)
    backup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    create_backup(settings)
    again_seconds = time.perf_counter() - started
    started = time.perf_counter()
    restore_backup(settings, first.snapshot.id, target=out, force=True)
    restore_seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"kind": kind, "size": size, "backup": backup_seconds, "again": again_seconds, "restore": restore_seconds, "stored": first.stats.stored_bytes, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--child", nargs=4, metavar=("KIND", "PROJECT", "REPOSITORY", "OUT"))
    args = parser.parse_args()
    if args.child:
        kind, project, repository, out = args.child
        child(kind, Path(project), repository, Path(out))
        return
    import boto3
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    environment = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint, DBKEEP_PASSWORD="bench passphrase")
    client = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1").client("s3", endpoint_url=endpoint)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        base = Path(work)
        project = base / "project"
        project.mkdir()
        build_database(project / "bench.db", args.megabytes)
        for kind in ("local", "local-encrypted", "s3", "s3-encrypted"):
            if kind.startswith("s3"):
                bucket = f"bench-{kind}"
                client.create_bucket(Bucket=bucket)
                repository = f"s3://{bucket}/repo"
            else:
                repository = str(base / f"repo-{kind}")
            result = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(project), repository, str(base / f"out-{kind}")],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    server.stop()
    mib = 1024 * 1024
    print(f"database: {rows[0]['size'] / mib:.1f} MiB, stored {rows[0]['stored'] / mib:.1f} MiB after compression\n")
    print("| repository | first backup | unchanged re-backup | restore | peak RSS |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['size'] / mib / row['backup']:.1f} MiB/s ({row['backup']:.2f} s) "
            f"| {row['again']:.2f} s | {row['size'] / mib / row['restore']:.1f} MiB/s ({row['restore']:.2f} s) | {row['peak_mib']} MiB |"
        )


if __name__ == "__main__":
    main()
