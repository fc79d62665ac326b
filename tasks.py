"""Invoke entry point of this repository: builds the root namespace, nothing else.

    invoke --list
    invoke sample && invoke backup.create --root sample
    invoke bench --quick

The root namespace is the ``dbkeep`` program's plus ``bench``, which runs the
benchmark in bench/ and so exists only in a checkout of this repository.
"""

from invoke import task

from maintenance.program import build_namespace


@task(
    help={
        "size": "database size: 100M or 1G (default 100M)",
        "runs": "runs per measurement (default 3; 1 with --quick)",
        "quick": "20 MiB, one run: the smoke run",
        "tools": "comma-separated subset of the tools (default all)",
        "no-install": "skip missing tools instead of installing them",
    }
)
def bench(c, size="100M", runs=0, quick=False, tools="", no_install=False):
    """Benchmark dbkeep against restic, borg, tar, sqlite3."""
    from bench.run import main

    argv = ["--size", size]
    if runs:
        argv += ["--runs", str(runs)]
    if quick:
        argv.append("--quick")
    if tools:
        argv += ["--tools", tools]
    if no_install:
        argv.append("--no-install")
    status = main(argv)
    if status:
        raise SystemExit(status)


namespace = build_namespace()
namespace.add_task(bench)
