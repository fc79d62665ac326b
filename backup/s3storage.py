"""S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, Backblaze B2, Ceph).

Owns: mapping the storage contract of ``storage.py`` onto the S3 API through
boto3 (an optional extra: ``pip install dbkeep[s3]``), retrying what S3 asks to
be retried, multipart uploads for large objects, never overwriting an object, and
a lease object that serialises lock bookkeeping between machines. Knows nothing of
snapshots, chunks or databases: it stores opaque named objects like the local
backend does.

Location: ``s3://bucket/prefix``, optionally with query parameters
``endpoint_url``, ``region``, ``profile``, ``conditional_writes`` (auto, on,
off) and ``max_attempts`` (1-30, default 8). Without them, endpoint, region and credentials come from the usual AWS
environment and config files (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_PROFILE``, ``~/.aws/config``, instance roles ...).

Behaviour that bites real users, and what this module does about it:

- Throttling (503 SlowDown, 429, RequestTimeout, 409 ConditionalRequestConflict)
  and 5xx answers, dropped connections and timeouts are retried with capped,
  jittered exponential backoff; every other 4xx fails at once.
- A listing is paginated (1,000 keys a page) until the server says it is
  complete; a page that claims more but gives no continuation token, or any
  failed page, raises StorageError: a listing error never reads as "empty".
- Objects larger than one part go up as a multipart upload; any failure aborts
  the upload so no half object and no billed orphan parts are left behind.
- ``put(exclusive=True)`` sends ``If-None-Match: *`` so the server refuses to
  replace an existing object. Where a server ignores that header (probed once,
  see ``conditional_writes``) the documented fallback is check-then-put, which is
  safe for content-addressed objects (a racing writer writes identical bytes).
- ``critical_section`` holds a lease object ``locks/guard`` created with
  ``If-None-Match: *``, renewed by a heartbeat with ``If-Match: <etag>``, released
  with a conditional delete. A lease whose holder stopped renewing expires by the
  *server's* clock (its ``Date`` header against the object's ``Last-Modified``),
  so clock skew between machines does not matter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError, LockLost, RepositoryLocked, StorageError
from .storage import ObjectInfo, check_name

try:  # boto3 is an optional extra; importing this module without it must explain itself
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:  # pragma: no cover - exercised only without the extra
    boto3 = None  # type: ignore[assignment]

MIB = 1024 * 1024
#: S3 refuses parts below 5 MiB (except the last); 8 MiB keeps memory to one part.
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB
LIST_PAGE_SIZE = 1000
LEASE_NAME = "locks/guard"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_LEASE_WAIT = 600.0

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ConditionalRequestConflict",
        "InternalError",
        "ServiceUnavailable",
    }
)
_QUERY_KEYS = frozenset({"endpoint_url", "region", "profile", "conditional_writes", "max_attempts"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a retryable request is repeated.

    Delay before retry n (1-based) is uniform in [0, min(max_delay, base_delay * 2**(n-1))]
    ("full jitter"), so many clients throttled together do not retry in step.
    """

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.max_delay, self.base_delay * 2 ** (retry - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    conditional_writes: str = "auto"
    max_attempts: int = 8

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3_location(value: object) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_location(text: str) -> S3Location:
    """Parse ``s3://bucket/prefix[?key=value...]``; raises ConfigError naming the problem.

    Needs no boto3, so settings can be validated without the extra installed.
    """
    parts = urlsplit(text)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"repository {text!r} is not an s3://bucket/prefix location")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"repository {text!r}: {bucket!r} is not a valid S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_name(prefix)
        except StorageError:
            raise ConfigError(
                f"repository {text!r}: prefix {prefix!r} may only hold segments of letters, digits, '.', '_' and '-'"
            ) from None
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        raise ConfigError(f"repository {text!r}: unknown parameter {unknown[0]!r}; known are {', '.join(sorted(_QUERY_KEYS))}")
    values = {key: items[-1] for key, items in query.items()}
    conditional = values.get("conditional_writes", "auto")
    if conditional not in {"auto", "on", "off"}:
        raise ConfigError(f"repository {text!r}: conditional_writes must be auto, on or off")
    attempts = values.get("max_attempts", "8")
    if not attempts.isdigit() or not 1 <= int(attempts) <= 30:
        raise ConfigError(f"repository {text!r}: max_attempts must be a whole number from 1 to 30")
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=values.get("endpoint_url") or None,
        region=values.get("region") or None,
        profile=values.get("profile") or None,
        conditional_writes=conditional,
        max_attempts=int(attempts),
    )


def _require_boto3() -> None:
    if boto3 is None:
        raise ConfigError("S3 repositories need boto3: install dbkeep with the s3 extra (pip install 'dbkeep[s3]')")


def make_client(location: S3Location) -> Any:
    """A boto3 S3 client for ``location`` with botocore's own retries switched off.

    Retrying is done here (one policy, testable); checksums are only sent where an
    operation requires them, because several S3-compatible servers reject the
    newer default trailing checksums. Every body carries Content-MD5 instead.
    """
    _require_boto3()
    endpoint = location.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = botocore.config.Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Self-hosted servers (MinIO, Ceph) rarely have wildcard DNS for buckets.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    try:
        return _session(location.profile, location.region).client("s3", endpoint_url=location.endpoint_url, config=config)
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigError(f"cannot set up S3 access for {location.url}: {error}") from error


_session_cache: dict[tuple[object, ...], Any] = {}
_session_lock = threading.Lock()


def _session(profile: str | None, region: str | None) -> Any:
    """One boto3 session per profile, region and AWS environment (loading one is slow)."""
    environment = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith("AWS_")))
    key = (profile, region, environment)
    with _session_lock:
        if key not in _session_cache:
            _session_cache[key] = boto3.session.Session(profile_name=profile, region_name=region)
        return _session_cache[key]


def _status(error: Exception) -> int:
    if isinstance(error, botocore.exceptions.ClientError):
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def _code(error: Exception) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code") or "")
    return ""


def is_retryable(error: Exception) -> bool:
    """Throttling, 5xx, timeouts and dropped connections: yes. Any other 4xx: no."""
    if isinstance(error, botocore.exceptions.ClientError):
        status = _status(error)
        return status >= 500 or status == 429 or _code(error) in _THROTTLING_CODES
    return isinstance(
        error,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ResponseStreamingError,
            botocore.exceptions.IncompleteReadError,
        ),
    )


def _is_precondition_failed(error: Exception) -> bool:
    return _status(error) == 412 or _code(error) == "PreconditionFailed"


def _is_missing(error: Exception) -> bool:
    return _status(error) == 404 or _code(error) in {"NoSuchKey", "NotFound", "404"}


def _is_not_implemented(error: Exception) -> bool:
    return _status(error) == 501 or _code(error) in {"NotImplemented", "NotImplementedError"}


def _md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


@dataclass(slots=True)
class _Lease:
    token: str
    etag: str
    lost: str | None = None
    stop: threading.Event | None = None
    thread: threading.Thread | None = None


class S3Storage:
    """A repository below one prefix of one bucket; objects are written once.

    ``client`` may be given (tests, custom sessions); otherwise one is made from
    the location and the AWS environment. ``sleep`` and ``retry`` make backoff
    observable in tests; production uses the defaults.
    """

    def __init__(
        self,
        location: S3Location,
        *,
        client: Any = None,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        lease_wait: float = DEFAULT_LEASE_WAIT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _require_boto3()
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        self.spec = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.location = location.url
        self.client = client if client is not None else make_client(location)
        self.retry = retry if retry is not None else RetryPolicy(attempts=location.max_attempts)
        self.part_size = part_size
        self.lease_seconds = lease_seconds
        self.lease_wait = lease_wait
        self._sleep = sleep
        self._conditional: bool | None = {"on": True, "off": False}.get(location.conditional_writes)
        self.requests = 0  # how many S3 requests were sent (benchmarks, tests)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Storage:
        return cls(parse_s3_location(url), **options)

    # -- plumbing -----------------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _name(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _request(self, operation: str, **arguments: Any) -> Any:
        """Call ``operation`` with retries on throttling, 5xx and broken connections.

        Raises the last botocore error once the policy gives up or at once for a
        non-retryable one; callers translate it.
        """
        retry = 0
        while True:
            self.requests += 1
            try:
                return getattr(self.client, operation)(**arguments)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                retry += 1
                if not is_retryable(error) or retry >= self.retry.attempts:
                    raise
                self._sleep(self.retry.delay(retry))

    def _fail(self, action: str, name: str, error: Exception) -> StorageError:
        target = f"{self.location}/{name}" if name else self.location
        code = _code(error)
        if code == "NoSuchBucket":
            return StorageError(f"cannot {action} {target}: bucket {self.bucket} does not exist; create it or fix the repository setting")
        if _status(error) == 403 or code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return StorageError(f"cannot {action} {target}: access denied ({code or 403}); check the credentials and the bucket policy")
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return StorageError(f"cannot {action} {target}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        detail = f"{code or type(error).__name__}: {error}" if code else str(error)
        return StorageError(f"cannot {action} {target}: {detail}")

    # -- the storage contract -------------------------------------------------------

    def put(self, name: str, pieces: Iterable[bytes], *, exclusive: bool = False) -> int:
        """Store ``pieces`` as one object; atomic (S3 never shows half an object).

        Streams: at most one part (``part_size`` bytes) is held in memory.
        Raises FileExistsError when ``exclusive`` and the object exists.
        """
        key = self._key(name)
        iterator = iter(pieces)
        buffer = bytearray()
        for piece in iterator:
            buffer += piece
            if len(buffer) > self.part_size:
                return self._put_multipart(name, key, buffer, iterator, exclusive=exclusive)
        return self._put_single(name, key, bytes(buffer), exclusive=exclusive)

    def _put_single(self, name: str, key: str, body: bytes, *, exclusive: bool) -> int:
        conditional = exclusive and self.conditional_writes()
        if exclusive and not conditional and self.exists(name):
            raise FileExistsError(f"{self.location}/{name} exists")
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentMD5": _md5(body)}
        if conditional:
            arguments["IfNoneMatch"] = "*"
        sent_before = self.requests
        try:
            self._request("put_object", **arguments)
        except botocore.exceptions.ClientError as error:
            if conditional and _is_precondition_failed(error):
                # After a retried attempt the "existing" object may be our own first
                # attempt whose answer was lost: the same bytes mean success.
                if self.requests - sent_before > 1 and self._holds(name, body):
                    return len(body)
                raise FileExistsError(f"{self.location}/{name} exists") from error
            raise self._fail("write", name, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("write", name, error) from error
        return len(body)

    def _holds(self, name: str, body: bytes) -> bool:
        try:
            return hashlib.sha256(self.get(name)).digest() == hashlib.sha256(body).digest()
        except StorageError:
            return False

    def _put_multipart(self, name: str, key: str, buffer: bytearray, rest: Iterator[bytes], *, exclusive: bool) -> int:
        conditional = exclusive and self.conditional_writes()
        if exclusive and not conditional and self.exists(name):
            raise FileExistsError(f"{self.location}/{name} exists")
        try:
            upload_id = self._request("create_multipart_upload", Bucket=self.bucket, Key=key)["UploadId"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise self._fail("start uploading", name, error) from error
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            for piece in _chain_first(b"", rest):
                buffer += piece
                while len(buffer) > self.part_size:
                    size += self._upload_part(name, key, upload_id, parts, buffer[: self.part_size])
                    del buffer[: self.part_size]
            size += self._upload_part(name, key, upload_id, parts, buffer)
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
            if conditional:
                arguments["IfNoneMatch"] = "*"
            try:
                self._request("complete_multipart_upload", **arguments)
            except botocore.exceptions.ClientError as error:
                if conditional and _is_precondition_failed(error):
                    raise FileExistsError(f"{self.location}/{name} exists") from error
                raise self._fail("finish uploading", name, error) from error
            except botocore.exceptions.BotoCoreError as error:
                raise self._fail("finish uploading", name, error) from error
        except BaseException:
            self._abort(key, upload_id)
            raise
        return size

    def _upload_part(self, name: str, key: str, upload_id: str, parts: list[dict[str, Any]], data: bytearray) -> int:
        body = bytes(data)
        number = len(parts) + 1
        try:
            answer = self._request(
                "upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body, ContentMD5=_md5(body)
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise self._fail(f"upload part {number} of", name, error) from error
        parts.append({"ETag": answer["ETag"], "PartNumber": number})
        return len(body)

    def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            self._request("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)

    def get(self, name: str) -> bytes:
        return self._get(name, {})

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``; a short object raises StorageError."""
        if offset < 0 or length < 0:
            raise StorageError(f"cannot read {self.location}/{name}: negative offset or length")
        if length == 0:
            if self.stat(name) is None:
                raise StorageError(f"cannot read {self.location}/{name}: no such object")
            return b""
        data = self._get(name, {"Range": f"bytes={offset}-{offset + length - 1}"})
        if len(data) != length:
            raise StorageError(f"cannot read {self.location}/{name}: {length} bytes wanted at offset {offset}, object ends early")
        return data

    def _get(self, name: str, extra: dict[str, Any]) -> bytes:
        key = self._key(name)
        retry = 0
        while True:
            # Reading the body can fail after the headers arrived: retry the whole GET.
            try:
                answer = self._request("get_object", Bucket=self.bucket, Key=key, **extra)
                return answer["Body"].read()
            except botocore.exceptions.ClientError as error:
                if _is_missing(error):
                    raise StorageError(f"cannot read {self.location}/{name}: no such object") from error
                if _code(error) == "InvalidRange":
                    return b""
                raise self._fail("read", name, error) from error
            except botocore.exceptions.BotoCoreError as error:
                retry += 1
                if not is_retryable(error) or retry >= self.retry.attempts:
                    raise self._fail("read", name, error) from error
                self._sleep(self.retry.delay(retry))

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object below the folder ``prefix``, following every page.

        Raises StorageError when any page fails or when the server claims more
        keys without saying where they continue: never a short or empty list.
        """
        base = self._key(prefix) + "/"
        found: list[ObjectInfo] = []
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "MaxKeys": LIST_PAGE_SIZE}
        while True:
            try:
                page = self._request("list_objects_v2", **arguments)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise self._fail("list", prefix, error) from error
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue  # a folder marker some consoles create, not an object
                found.append(ObjectInfo(name=self._name(key), size=int(item["Size"]), modified=item["LastModified"].timestamp()))
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageError(f"cannot list {self.location}/{prefix}: the server says the listing is incomplete but gives no continuation token")
            arguments["ContinuationToken"] = token

    def stat(self, name: str) -> ObjectInfo | None:
        key = self._key(name)
        try:
            answer = self._request("head_object", Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if _is_missing(error):
                return None
            raise self._fail("stat", name, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("stat", name, error) from error
        return ObjectInfo(name=name, size=int(answer["ContentLength"]), modified=answer["LastModified"].timestamp())

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._request("delete_object", Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if _is_missing(error):
                return
            raise self._fail("delete", name, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("delete", name, error) from error

    def abort_stale_uploads(self, *, older_than: float = 86400.0) -> int:
        """Abort multipart uploads below the prefix started more than ``older_than`` seconds ago.

        A process killed mid-upload leaves parts that are billed but invisible;
        call under the exclusive lock. Returns how many uploads were aborted.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        now = datetime.now(timezone.utc)
        while True:
            try:
                page = self._request("list_multipart_uploads", **arguments)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise self._fail("list uploads in", "", error) from error
            for upload in page.get("Uploads", []):
                if (now - upload["Initiated"]).total_seconds() > older_than:
                    self._abort(upload["Key"], upload["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            arguments["KeyMarker"] = page.get("NextKeyMarker")
            arguments["UploadIdMarker"] = page.get("NextUploadIdMarker")

    # -- conditional writes -----------------------------------------------------------

    def conditional_writes(self) -> bool:
        """Whether the server honours ``If-None-Match: *`` (probed once when ``auto``).

        The probe writes a private object twice, the second time conditionally;
        a server that lets the second write through ignores the header.
        """
        if self._conditional is None:
            name = f"locks/probe-{secrets.token_hex(8)}"
            key = self._key(name)
            try:
                self._request("put_object", Bucket=self.bucket, Key=key, Body=b"probe")
                try:
                    self._request("put_object", Bucket=self.bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                    self._conditional = False
                except botocore.exceptions.ClientError as error:
                    if _is_precondition_failed(error):
                        self._conditional = True
                    elif _is_not_implemented(error) or _status(error) == 400:
                        self._conditional = False
                    else:
                        raise
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise self._fail("write", name, error) from error
            finally:
                with contextlib.suppress(StorageError):
                    self.delete(name)
        return self._conditional

    # -- the lease --------------------------------------------------------------------

    @contextlib.contextmanager
    def critical_section(self) -> Iterator[None]:
        """Serialise lock bookkeeping between processes on any machine.

        Waits up to ``lease_wait`` seconds for another holder (RepositoryLocked
        after that). Raises LockLost at the end of the block if the lease was
        taken from us meanwhile (we stopped renewing past its expiry).
        """
        lease = self._acquire_lease()
        completed = False
        try:
            yield
            completed = True
        finally:
            self._stop_heartbeat(lease)
            self._release_lease(lease)
        if completed and lease.lost is not None:
            raise LockLost(f"{lease.lost}; run the command again")

    def _lease_body(self, token: str, beat: int) -> bytes:
        record = {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "lease_seconds": self.lease_seconds,
            "beat": beat,
        }
        return json.dumps(record, sort_keys=True).encode() + b"\n"

    def _acquire_lease(self) -> _Lease:
        token = secrets.token_hex(16)
        key = self._key(LEASE_NAME)
        deadline = time.monotonic() + self.lease_wait
        conditional = self.conditional_writes()
        waited = 0
        while True:
            holder = self._read_lease()
            if holder is not None and self._lease_expired(holder):
                self._break_lease(holder, conditional)
                holder = None
            if holder is None:
                etag = self._create_lease(key, token, conditional)
                if etag is not None:
                    lease = _Lease(token=token, etag=etag)
                    self._start_heartbeat(lease, key, conditional)
                    return lease
            if time.monotonic() >= deadline:
                who = holder["record"] if holder else {}
                raise RepositoryLocked(
                    f"repository {self.location} is busy: its lease {LEASE_NAME} is held by "
                    f"{who.get('host', '?')} pid {who.get('pid', '?')}; try again later"
                )
            waited += 1
            self._sleep(min(2.0, 0.05 * 2 ** min(waited, 6)) * (0.5 + random.random() / 2))

    def _read_lease(self) -> dict[str, Any] | None:
        key = self._key(LEASE_NAME)
        try:
            answer = self._request("get_object", Bucket=self.bucket, Key=key)
            body = answer["Body"].read()
        except botocore.exceptions.ClientError as error:
            if _is_missing(error):
                return None
            raise self._fail("read", LEASE_NAME, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("read", LEASE_NAME, error) from error
        try:
            record = json.loads(body)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = {}  # garbled: treated as a default lease that expires on time
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        server_now = _http_date(headers.get("date")) or datetime.now(timezone.utc)
        return {"record": record, "etag": answer["ETag"], "modified": answer["LastModified"], "server_now": server_now}

    def _lease_expired(self, holder: dict[str, Any]) -> bool:
        try:
            lease_seconds = float(holder["record"].get("lease_seconds", DEFAULT_LEASE_SECONDS))
        except (TypeError, ValueError):
            lease_seconds = DEFAULT_LEASE_SECONDS
        age = (holder["server_now"] - holder["modified"]).total_seconds()
        return age >= lease_seconds

    def _break_lease(self, holder: dict[str, Any], conditional: bool) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(LEASE_NAME)}
        if conditional:
            arguments["IfMatch"] = holder["etag"]  # only the expired lease we saw, not a fresh one
        try:
            self._request("delete_object", **arguments)
        except botocore.exceptions.ClientError as error:
            if _is_precondition_failed(error) or _is_missing(error):
                return  # someone else broke or renewed it first
            raise self._fail("break the expired lease", LEASE_NAME, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("break the expired lease", LEASE_NAME, error) from error

    def _create_lease(self, key: str, token: str, conditional: bool) -> str | None:
        body = self._lease_body(token, 0)
        try:
            if conditional:
                answer = self._request("put_object", Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                return str(answer["ETag"])
            # Fallback without conditional writes: write, let the store settle, and
            # keep the lease only if our record is the one that stayed.
            answer = self._request("put_object", Bucket=self.bucket, Key=key, Body=body)
            self._sleep(1.0)
            holder = self._read_lease()
            if holder is not None and holder["record"].get("token") == token:
                return str(holder["etag"])
            return None
        except botocore.exceptions.ClientError as error:
            if _is_precondition_failed(error):
                return None
            raise self._fail("take the lease", LEASE_NAME, error) from error
        except botocore.exceptions.BotoCoreError as error:
            raise self._fail("take the lease", LEASE_NAME, error) from error

    def renew_lease(self, lease: _Lease, key: str, conditional: bool, beat: int) -> None:
        """Rewrite the lease in place; marks it lost if someone else's record is there."""
        body = self._lease_body(lease.token, beat)
        try:
            if conditional:
                answer = self._request("put_object", Bucket=self.bucket, Key=key, Body=body, IfMatch=lease.etag)
            else:
                holder = self._read_lease()
                if holder is None or holder["record"].get("token") != lease.token:
                    lease.lost = f"the lease {LEASE_NAME} of {self.location} was taken over"
                    return
                answer = self._request("put_object", Bucket=self.bucket, Key=key, Body=body)
            lease.etag = str(answer["ETag"])
        except botocore.exceptions.ClientError as error:
            if _is_precondition_failed(error) or _is_missing(error):
                lease.lost = f"the lease {LEASE_NAME} of {self.location} expired and was taken over"
            else:
                lease.lost = f"cannot renew the lease {LEASE_NAME} of {self.location}: {error}"
        except botocore.exceptions.BotoCoreError as error:
            lease.lost = f"cannot renew the lease {LEASE_NAME} of {self.location}: {error}"

    def _start_heartbeat(self, lease: _Lease, key: str, conditional: bool) -> None:
        lease.stop = threading.Event()

        def beat() -> None:
            count = 0
            assert lease.stop is not None
            while not lease.stop.wait(max(self.lease_seconds / 3, 0.05)):
                count += 1
                self.renew_lease(lease, key, conditional, count)
                if lease.lost is not None:
                    return

        lease.thread = threading.Thread(target=beat, name="dbkeep-s3-lease", daemon=True)
        lease.thread.start()

    def _stop_heartbeat(self, lease: _Lease) -> None:
        if lease.stop is not None:
            lease.stop.set()
        if lease.thread is not None:
            lease.thread.join()

    def _release_lease(self, lease: _Lease) -> None:
        if lease.lost is not None:
            return  # it is someone else's now: never delete another holder's lease
        conditional = self.conditional_writes()
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(LEASE_NAME)}
        if conditional:
            arguments["IfMatch"] = lease.etag
        else:
            holder = self._read_lease()
            if holder is None or holder["record"].get("token") != lease.token:
                return
        try:
            self._request("delete_object", **arguments)
        except botocore.exceptions.ClientError as error:
            if _is_precondition_failed(error) or _is_missing(error):
                lease.lost = f"the lease {LEASE_NAME} of {self.location} was taken over before it was released"
                return
            if _is_not_implemented(error):
                self._request("delete_object", Bucket=self.bucket, Key=self._key(LEASE_NAME))
                return
            raise self._fail("release the lease", LEASE_NAME, error) from error
        except botocore.exceptions.BotoCoreError:
            # An unreleased lease expires by itself after lease_seconds.
            return


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first`` then ``rest``: lets the part loop drain what is already buffered."""
    yield first
    yield from rest


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
