"""The storage contract, one suite run against every backend.

Each test states what any backend must do; the ``storage`` fixture runs it against
the local directory backend and against the S3 backend talking to a real S3 API
(moto's server) on loopback. Backend-specific failure modes (how a listing can
fail) are provoked per backend at the end.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backup import fsio
from backup.errors import StorageError
from backup.storage import LocalStorage, ObjectInfo
from tests.s3_support import Rule, admin_client, aws_environment, fault_proxy, new_bucket, put_directly, s3_server  # noqa: F401

BACKENDS = ["local", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def storage(backend: str, tmp_path: Path, request):
    if backend == "local":
        return LocalStorage(tmp_path / "repository")
    endpoint = request.getfixturevalue("aws_environment")
    from backup.s3storage import S3Storage

    return S3Storage.from_url(f"s3://{new_bucket(endpoint)}/team/repo")


def _names(infos: list[ObjectInfo]) -> list[str]:
    return sorted(info.name for info in infos)


# -- put / get ---------------------------------------------------------------------------


def test_put_then_get_returns_exactly_the_pieces_joined(storage) -> None:
    written = storage.put("packs/ab/object", [b"hello ", b"", b"world"])
    assert written == 11
    assert storage.get("packs/ab/object") == b"hello world"


def test_put_of_zero_bytes_stores_an_empty_object(storage) -> None:
    storage.put("index/empty", [])
    assert storage.get("index/empty") == b""
    assert storage.stat("index/empty").size == 0


def test_put_without_exclusive_replaces_the_whole_object(storage) -> None:
    storage.put("locks/record", [b"a much longer first version"])
    storage.put("locks/record", [b"short"])
    assert storage.get("locks/record") == b"short"


def test_exclusive_put_never_replaces_an_existing_object(storage) -> None:
    storage.put("snapshots/one.json", [b"original"], exclusive=True)
    with pytest.raises(FileExistsError):
        storage.put("snapshots/one.json", [b"intruder"], exclusive=True)
    assert storage.get("snapshots/one.json") == b"original"


def test_put_that_fails_midway_publishes_nothing(storage) -> None:
    def pieces():
        yield b"x" * 1000
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        storage.put("packs/cd/broken", pieces(), exclusive=True)
    assert storage.stat("packs/cd/broken") is None
    storage.put("packs/cd/other", [b"ok"])
    assert _names(storage.list("packs")) == ["packs/cd/other"]


def test_get_of_a_missing_object_raises_storage_error(storage) -> None:
    storage.put("index/present", [b"x"])
    with pytest.raises(StorageError, match="index/absent"):
        storage.get("index/absent")


# -- ranged get ----------------------------------------------------------------------------


def test_get_range_returns_exactly_the_requested_bytes(storage) -> None:
    data = bytes(range(256)) * 4
    storage.put("packs/ef/pack", [data])
    assert storage.get_range("packs/ef/pack", 0, 10) == data[:10]
    assert storage.get_range("packs/ef/pack", 300, 200) == data[300:500]
    assert storage.get_range("packs/ef/pack", len(data) - 1, 1) == data[-1:]


@pytest.mark.parametrize("offset, length", [(1000, 100), (1024, 1), (5000, 10)], ids=["runs-past-end", "starts-at-end", "starts-beyond-end"])
def test_get_range_that_the_object_cannot_fill_is_an_error_not_a_short_read(storage, offset: int, length: int) -> None:
    storage.put("packs/ef/pack", [b"z" * 1024])
    with pytest.raises(StorageError):
        storage.get_range("packs/ef/pack", offset, length)


def test_get_range_of_a_missing_object_raises_storage_error(storage) -> None:
    storage.put("packs/ef/other", [b"z"])
    with pytest.raises(StorageError):
        storage.get_range("packs/ef/missing", 0, 1)


# -- list / stat / exists / delete ------------------------------------------------------------


def test_list_is_recursive_and_names_are_relative_to_the_repository(storage) -> None:
    for name in ("packs/00/a", "packs/00/b", "packs/ff/c", "index/d", "snapshots/e.json"):
        storage.put(name, [name.encode()])
    listed = storage.list("packs")
    assert _names(listed) == ["packs/00/a", "packs/00/b", "packs/ff/c"]
    assert {info.name: info.size for info in listed}["packs/ff/c"] == len(b"packs/ff/c")
    assert _names(storage.list("index")) == ["index/d"]


def test_list_does_not_include_a_folder_that_merely_shares_the_prefix(storage) -> None:
    storage.put("packs/a", [b"1"])
    storage.put("packs-old/b", [b"2"])
    assert _names(storage.list("packs")) == ["packs/a"]


def test_stat_reports_size_and_none_for_a_missing_object(storage) -> None:
    storage.put("index/x", [b"12345"])
    info = storage.stat("index/x")
    assert info is not None and info.size == 5 and info.name == "index/x" and info.modified > 0
    assert storage.stat("index/y") is None


def test_exists_follows_put_and_delete(storage) -> None:
    assert not storage.exists("snapshots/s.json")
    storage.put("snapshots/s.json", [b"{}"])
    assert storage.exists("snapshots/s.json")
    storage.delete("snapshots/s.json")
    assert not storage.exists("snapshots/s.json")


def test_delete_of_a_missing_object_is_not_an_error(storage) -> None:
    storage.put("packs/aa/keep", [b"k"])
    storage.delete("packs/aa/never-was")
    assert storage.get("packs/aa/keep") == b"k"


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../outside", "packs/../../outside", "packs//x", "packs/./x", ".hidden", "a\\b", "a\x00b", "packs/ x"],
    ids=["empty", "absolute", "parent", "climbing", "empty-segment", "dot-segment", "leading-dot", "backslash", "nul", "space"],
)
def test_unsafe_names_are_refused_before_any_access(storage, name: str) -> None:
    for action in (
        lambda: storage.put(name, [b"x"]),
        lambda: storage.get(name),
        lambda: storage.get_range(name, 0, 1),
        lambda: storage.stat(name),
        lambda: storage.delete(name),
        lambda: storage.list(name),
    ):
        with pytest.raises(StorageError, match="unsafe object name"):
            action()


# -- critical section --------------------------------------------------------------------------


def test_critical_section_admits_one_holder_at_a_time(storage, backend: str, tmp_path: Path, request) -> None:
    """Read-modify-write of a counter under the section loses no update."""
    if backend == "local":
        instances = [LocalStorage(storage.root) for _ in range(4)]
    else:
        from backup.s3storage import S3Storage

        instances = [S3Storage.from_url(storage.location) for _ in range(4)]
    storage.put("locks/counter", [b"0"])
    inside = []
    overlap = threading.Event()

    def work(instance) -> None:
        for _ in range(5):
            with instance.critical_section():
                inside.append(1)
                if len(inside) > 1:
                    overlap.set()
                value = int(instance.get("locks/counter"))
                instance.put("locks/counter", [str(value + 1).encode()])
                inside.pop()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(work, instance) for instance in instances]:
            future.result()
    assert not overlap.is_set()
    assert storage.get("locks/counter") == b"20"


def test_critical_section_is_released_when_its_block_raises(storage) -> None:
    with pytest.raises(ValueError):
        with storage.critical_section():
            raise ValueError("boom")
    with storage.critical_section():
        storage.put("locks/after", [b"entered again"])
    assert storage.get("locks/after") == b"entered again"


# -- listing failures never look like "empty" ------------------------------------------------------


def test_local_list_of_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    storage.put("index/a", [b"x"])
    with pytest.raises(StorageError, match="not a directory"):
        storage.list("snapshots")


def test_local_list_of_a_folder_replaced_by_a_file_is_an_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    storage.put("index/a", [b"x"])
    (tmp_path / "repository" / "snapshots").write_bytes(b"not a folder")
    with pytest.raises(StorageError):
        storage.list("snapshots")


def test_local_list_with_an_io_error_raises_instead_of_returning_empty(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    storage.put("snapshots/a.json", [b"x"])
    with fsio.inject(fsio.FaultPlan(fail_op="listdir", fail_errno=errno.EIO, fail_at=1, persistent=True)):
        with pytest.raises(StorageError, match="snapshots"):
            storage.list("snapshots")


def test_s3_list_follows_pagination_past_one_thousand_keys(aws_environment: str, fault_proxy) -> None:
    from backup.s3storage import S3Storage

    proxy, endpoint = fault_proxy
    bucket = new_bucket(aws_environment)
    names = [f"packs/{index % 256:02x}/{index:064x}" for index in range(1234)]
    for name in names:
        put_directly(bucket, f"repo/{name}", b"p")
    storage = S3Storage.from_url(f"s3://{bucket}/repo?endpoint_url={endpoint}")
    assert _names(storage.list("packs")) == sorted(names)
    assert proxy.count("GET", "list-type=2") == 2


@pytest.mark.parametrize("status, code", [(500, "InternalError"), (503, "SlowDown")])
def test_s3_list_that_keeps_failing_raises_after_retries_never_returns_empty(aws_environment: str, fault_proxy, status: int, code: str) -> None:
    from backup.s3storage import RetryPolicy, S3Storage

    proxy, endpoint = fault_proxy
    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/repo?endpoint_url={endpoint}", retry=RetryPolicy(attempts=3), sleep=lambda _: None)
    storage.put("snapshots/a.json", [b"x"])
    proxy.add(Rule(method="GET", contains="list-type=2", status=status, code=code, times=-1))
    with pytest.raises(StorageError, match=code):
        storage.list("snapshots")
    assert proxy.count("GET", "list-type=2") == 3


def test_s3_list_denied_fails_at_once_without_retrying(aws_environment: str, fault_proxy) -> None:
    from backup.s3storage import S3Storage

    proxy, endpoint = fault_proxy
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo?endpoint_url={endpoint}", sleep=lambda _: None)
    proxy.add(Rule(method="GET", contains="list-type=2", status=403, code="AccessDenied", times=-1))
    with pytest.raises(StorageError, match="access denied"):
        storage.list("snapshots")
    assert proxy.count("GET", "list-type=2") == 1


def test_s3_list_page_claiming_more_without_a_token_is_an_error(aws_environment: str, fault_proxy) -> None:
    from backup.s3storage import S3Storage

    proxy, endpoint = fault_proxy
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo?endpoint_url={endpoint}")
    storage.put("snapshots/a.json", [b"x"])
    proxy.add(Rule(method="GET", contains="list-type=2", rewrite=lambda body: body.replace(b"<IsTruncated>false</IsTruncated>", b"<IsTruncated>true</IsTruncated>")))
    with pytest.raises(StorageError, match="incomplete"):
        storage.list("snapshots")


def test_s3_list_of_a_missing_bucket_is_an_error(aws_environment: str) -> None:
    from backup.s3storage import S3Storage

    storage = S3Storage.from_url("s3://no-such-bucket-here/repo")
    with pytest.raises(StorageError, match="does not exist"):
        storage.list("snapshots")


def test_s3_objects_are_stored_under_the_prefix_only(aws_environment: str) -> None:
    from backup.s3storage import S3Storage

    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/team/repo")
    storage.put("index/a", [b"x"])
    keys = [item["Key"] for item in admin_client(aws_environment).list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/repo/index/a"]


def test_s3_lease_record_names_its_holder(aws_environment: str) -> None:
    from backup.s3storage import LEASE_NAME, S3Storage

    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo")
    with storage.critical_section():
        record = json.loads(storage.get(LEASE_NAME))
        assert record["pid"] == os.getpid() and record["lease_seconds"] == storage.lease_seconds
    assert not storage.exists(LEASE_NAME)


def _temp_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob(f"{fsio.TEMP_PREFIX}*"))


def test_local_staged_object_is_invisible_until_published_then_whole(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    staged = storage.stage("packs")
    staged.write(b"first frame ")
    staged.write(memoryview(b"second frame"))
    assert storage.list("packs") == [], "a staged object is not listed"
    assert staged.publish("packs/ab/abcd", exclusive=True) == len(b"first frame second frame")
    assert storage.get("packs/ab/abcd") == b"first frame second frame"
    assert _temp_files(tmp_path) == []


def test_local_staged_object_published_over_an_existing_name_is_kept_for_the_caller(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    storage.put("packs/ab/abcd", [b"damaged"])
    staged = storage.stage("packs")
    staged.write(b"intact bytes")
    with pytest.raises(FileExistsError):
        staged.publish("packs/ab/abcd", exclusive=True)
    assert storage.get("packs/ab/abcd") == b"damaged", "exclusive never replaces"
    staged.publish("packs/ab/abcd")
    assert storage.get("packs/ab/abcd") == b"intact bytes"
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("operation", ["write", "fsync", "link", "fsync_dir"])
def test_local_staged_object_that_fails_publishes_nothing_and_leaves_no_temp(tmp_path: Path, operation: str) -> None:
    storage = LocalStorage(tmp_path / "repository")
    storage.put("packs/ab/other", [b"x"])
    staged = storage.stage("packs")
    with fsio.inject(fsio.FaultPlan(fail_op=operation, fail_errno=errno.EIO, fail_at=1)), pytest.raises(StorageError):
        staged.write(b"frame")
        staged.publish("packs/ab/abcd", exclusive=True)
    staged.discard()
    assert storage.stat("packs/ab/abcd") is None
    assert _names(storage.list("packs")) == ["packs/ab/other"]
    assert _temp_files(tmp_path) == []


def test_local_staged_object_discarded_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repository")
    staged = storage.stage("packs")
    staged.write(b"half a pack")
    staged.discard()
    staged.discard()
    assert _temp_files(tmp_path) == []
    with pytest.raises(ValueError):
        staged.publish("packs/ab/abcd")
