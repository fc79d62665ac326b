"""S3 behaviour beyond the shared contract: retries, multipart, conditional writes, the lease.

Everything runs against moto's S3 server on loopback, through a proxy that injects
the failures real S3 services produce.
"""

from __future__ import annotations

import json
import time

import pytest

from backup import locking
from backup.errors import ConfigError, LockLost, RepositoryLocked, StorageError
from tests.s3_support import Rule, admin_client, aws_environment, fault_proxy, new_bucket, s3_server  # noqa: F401

s3storage = pytest.importorskip("backup.s3storage")
S3Storage = s3storage.S3Storage
RetryPolicy = s3storage.RetryPolicy
MIB = 1024 * 1024


@pytest.fixture
def proxied(aws_environment: str, fault_proxy):
    """(storage through the fault proxy, proxy, bucket, recorded backoff delays)."""
    proxy, endpoint = fault_proxy
    bucket = new_bucket(aws_environment)
    delays: list[float] = []
    storage = S3Storage.from_url(
        f"s3://{bucket}/repo?endpoint_url={endpoint}", retry=RetryPolicy(attempts=4, base_delay=0.01), sleep=delays.append
    )
    return storage, proxy, bucket, delays


# -- location ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://", "not an s3://bucket/prefix"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://bucket/../x", "prefix"),
        ("s3://bucket/x?colour=blue", "unknown parameter"),
        ("s3://bucket/x?conditional_writes=maybe", "auto, on or off"),
    ],
)
def test_bad_s3_location_is_a_config_error_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        s3storage.parse_s3_location(url)


def test_s3_location_with_parameters_parses_into_its_parts() -> None:
    location = s3storage.parse_s3_location("s3://my-bucket/team/db?endpoint_url=http://127.0.0.1:9000&region=eu-west-1&conditional_writes=off")
    assert (location.bucket, location.prefix, location.endpoint_url, location.region, location.conditional_writes) == (
        "my-bucket",
        "team/db",
        "http://127.0.0.1:9000",
        "eu-west-1",
        "off",
    )
    assert location.url == "s3://my-bucket/team/db"


# -- retries ----------------------------------------------------------------------------


def test_throttled_put_is_retried_with_growing_backoff_and_succeeds(proxied) -> None:
    storage, proxy, _bucket, delays = proxied
    proxy.add(Rule(method="PUT", contains="/repo/index/a", status=503, code="SlowDown", times=2))
    storage.put("index/a", [b"payload"])
    assert storage.get("index/a") == b"payload"
    assert proxy.count("PUT", "/repo/index/a") == 3
    assert len(delays) == 2 and all(0 <= delay <= 0.01 * 2**retry for retry, delay in enumerate(delays))


@pytest.mark.parametrize("status, code", [(500, "InternalError"), (502, "BadGateway"), (429, "TooManyRequests"), (400, "RequestTimeout")])
def test_transient_errors_on_get_are_retried(proxied, status: int, code: str) -> None:
    storage, proxy, _bucket, delays = proxied
    storage.put("index/a", [b"payload"])
    proxy.add(Rule(method="GET", contains="/repo/index/a", status=status, code=code, times=1))
    assert storage.get("index/a") == b"payload"
    assert proxy.count("GET", "/repo/index/a") == 2 and len(delays) == 1


@pytest.mark.parametrize("status, code", [(403, "AccessDenied"), (400, "InvalidArgument"), (409, "BucketNotEmpty")])
def test_client_errors_are_not_retried(proxied, status: int, code: str) -> None:
    storage, proxy, _bucket, delays = proxied
    proxy.add(Rule(method="PUT", contains="/repo/index/a", status=status, code=code, times=-1))
    with pytest.raises(StorageError, match="index/a"):
        storage.put("index/a", [b"payload"])
    assert proxy.count("PUT", "/repo/index/a") == 1 and delays == []


def test_persistent_server_errors_give_up_after_the_policy_and_name_the_object(proxied) -> None:
    storage, proxy, _bucket, delays = proxied
    proxy.add(Rule(method="PUT", contains="/repo/index/a", status=503, code="SlowDown", times=-1))
    with pytest.raises(StorageError, match="SlowDown"):
        storage.put("index/a", [b"payload"])
    assert proxy.count("PUT", "/repo/index/a") == 4 and len(delays) == 3
    assert storage.stat("index/a") is None


def test_exclusive_put_whose_answer_was_lost_succeeds_on_retry(proxied) -> None:
    """The server stored the object but the answer never arrived: the retry sees
    412, finds our own bytes there, and reports success rather than a conflict."""
    storage, proxy, _bucket, _delays = proxied
    proxy.add(Rule(method="PUT", contains="/repo/snapshots/s.json", status=500, code="InternalError", forward_first=True))
    assert storage.put("snapshots/s.json", [b"manifest"], exclusive=True) == len(b"manifest")
    assert storage.get("snapshots/s.json") == b"manifest"


def test_exclusive_put_after_a_lost_answer_still_refuses_foreign_bytes(proxied, aws_environment: str) -> None:
    storage, proxy, bucket, _delays = proxied
    admin_client(aws_environment).put_object(Bucket=bucket, Key="repo/snapshots/s.json", Body=b"someone else")
    proxy.add(Rule(method="PUT", contains="/repo/snapshots/s.json", status=500, code="InternalError", times=1))
    with pytest.raises(FileExistsError):
        storage.put("snapshots/s.json", [b"mine"], exclusive=True)
    assert storage.get("snapshots/s.json") == b"someone else"


# -- multipart ---------------------------------------------------------------------------


def _uploads_in_progress(endpoint: str, bucket: str) -> list:
    return admin_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_large_object_goes_up_in_parts_and_reads_back_whole(aws_environment: str) -> None:
    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/repo", part_size=5 * MIB)
    data = bytes(range(256)) * (12 * MIB // 256) + b"tail"
    pieces = [data[start : start + 700_000] for start in range(0, len(data), 700_000)]
    assert storage.put("packs/ab/big", pieces, exclusive=True) == len(data)
    assert storage.get("packs/ab/big") == data
    assert storage.get_range("packs/ab/big", 5 * MIB - 3, 6) == data[5 * MIB - 3 : 5 * MIB + 3]
    etag = admin_client(aws_environment).head_object(Bucket=bucket, Key="repo/packs/ab/big")["ETag"]
    assert etag.strip('"').endswith("-3")
    assert _uploads_in_progress(aws_environment, bucket) == []


def test_multipart_upload_whose_source_fails_is_aborted_and_publishes_nothing(aws_environment: str) -> None:
    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/repo", part_size=5 * MIB)

    def pieces():
        for _ in range(13):
            yield b"x" * MIB
        raise OSError("disk read failed")

    with pytest.raises(OSError):
        storage.put("packs/ab/big", pieces())
    assert storage.stat("packs/ab/big") is None
    assert _uploads_in_progress(aws_environment, bucket) == []


def test_multipart_upload_with_a_rejected_part_is_aborted(proxied, aws_environment: str) -> None:
    storage, proxy, bucket, _delays = proxied
    storage.part_size = 5 * MIB
    proxy.add(Rule(method="PUT", contains="partNumber=2", status=400, code="InvalidPart", times=-1))
    with pytest.raises(StorageError, match="part 2"):
        storage.put("packs/ab/big", [b"y" * (11 * MIB)])
    assert storage.stat("packs/ab/big") is None
    assert _uploads_in_progress(aws_environment, bucket) == []
    assert proxy.count("DELETE", "uploadId=") == 1


def test_exclusive_multipart_onto_an_existing_object_refuses_and_keeps_it(aws_environment: str) -> None:
    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/repo", part_size=5 * MIB)
    storage.put("packs/ab/big", [b"original"])
    with pytest.raises(FileExistsError):
        storage.put("packs/ab/big", [b"z" * (11 * MIB)], exclusive=True)
    assert storage.get("packs/ab/big") == b"original"
    assert _uploads_in_progress(aws_environment, bucket) == []


def test_stale_multipart_uploads_are_aborted(aws_environment: str) -> None:
    bucket = new_bucket(aws_environment)
    storage = S3Storage.from_url(f"s3://{bucket}/repo")
    admin_client(aws_environment).create_multipart_upload(Bucket=bucket, Key="repo/packs/ab/orphan")
    # The loopback server dates every upload in 2010, so this one counts as a day old.
    assert storage.abort_stale_uploads(older_than=86400) == 1
    assert _uploads_in_progress(aws_environment, bucket) == []


# -- conditional writes -------------------------------------------------------------------


def test_server_honouring_if_none_match_is_detected(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo")
    assert storage.conditional_writes() is True
    assert storage.list("locks") == []  # the probe cleaned up after itself


def test_server_ignoring_if_none_match_falls_back_and_still_never_overwrites(proxied) -> None:
    storage, proxy, _bucket, _delays = proxied
    proxy.add(Rule(method="PUT", drop_header="If-None-Match", times=-1))
    assert storage.conditional_writes() is False
    storage.put("snapshots/s.json", [b"first"], exclusive=True)
    with pytest.raises(FileExistsError):
        storage.put("snapshots/s.json", [b"second"], exclusive=True)
    assert storage.get("snapshots/s.json") == b"first"


# -- the lease ----------------------------------------------------------------------------


def _plant_lease(storage, *, lease_seconds: float, host: str = "elsewhere") -> None:
    record = {"token": "f" * 32, "host": host, "pid": 1, "lease_seconds": lease_seconds, "beat": 0}
    storage.put(s3storage.LEASE_NAME, [json.dumps(record).encode()])


def test_lease_of_a_holder_that_stopped_renewing_is_broken(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo")
    _plant_lease(storage, lease_seconds=0)
    with storage.critical_section():
        assert json.loads(storage.get(s3storage.LEASE_NAME))["token"] != "f" * 32
    assert not storage.exists(s3storage.LEASE_NAME)


def test_live_lease_of_another_machine_blocks_until_the_wait_runs_out(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo", lease_wait=0.3)
    _plant_lease(storage, lease_seconds=3600)
    with pytest.raises(RepositoryLocked, match="elsewhere"):
        with storage.critical_section():
            pytest.fail("entered a section another machine holds")
    assert json.loads(storage.get(s3storage.LEASE_NAME))["token"] == "f" * 32


def test_garbled_lease_expires_after_the_default_lease_not_never(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo", lease_wait=0.2)
    storage.put(s3storage.LEASE_NAME, [b"\x00garbage"])
    with pytest.raises(RepositoryLocked):
        with storage.critical_section():
            pass
    holder = storage._read_lease()
    assert holder["record"] == {} and not storage._lease_expired(holder)


def test_heartbeat_renews_the_lease_while_the_section_runs(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo", lease_seconds=0.3)
    with storage.critical_section():
        deadline = time.monotonic() + 10
        while json.loads(storage.get(s3storage.LEASE_NAME))["beat"] < 2:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
    assert not storage.exists(s3storage.LEASE_NAME)


def test_section_whose_lease_was_taken_over_ends_with_lock_lost(aws_environment: str) -> None:
    storage = S3Storage.from_url(f"s3://{new_bucket(aws_environment)}/repo")
    with pytest.raises(LockLost):
        with storage.critical_section():
            _plant_lease(storage, lease_seconds=3600, host="usurper")
    assert json.loads(storage.get(s3storage.LEASE_NAME))["host"] == "usurper"  # never deleted someone else's


def test_repository_lock_on_s3_excludes_a_second_machine(aws_environment: str) -> None:
    url = f"s3://{new_bucket(aws_environment)}/repo"
    first, second = S3Storage.from_url(url), S3Storage.from_url(url)
    with locking.acquire(first, exclusive=True, purpose="backup"):
        with pytest.raises(RepositoryLocked, match="exclusive lock"):
            with locking.acquire(second, exclusive=True, purpose="backup", wait=0):
                pass
    with locking.acquire(second, exclusive=True, purpose="backup"):
        pass
    assert first.list("locks") == []
