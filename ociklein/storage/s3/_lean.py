"""
Whole-object GET, HEAD, PUT and DELETE without boto3's per-call machinery.

A boto3 call validates its parameters against the service model, resolves
the endpoint with the rules engine, emits a dozen events, serializes and
parses XML: about 1.1 ms of CPU for a 1 KB GET, where signing and the HTTP
exchange take a fraction of that.  Tags, manifests, use markers and
catalog entries are all such small requests, so the s3 backend sends them
here: botocore's own SigV4 signer (L{S3SigV4Auth} on an L{AWSRequest}, no
hand-written signing) and the boto3 client's own HTTP session (its pooled
urllib3 connections, TLS verification with C{--s3-ca-file}, proxies and
timeouts), with botocore's credentials (refreshed when they expire) and
the same failures as boto3 would raise (L{ClientError} with the status and
S3 error code, L{BotoCoreError} for a store out of reach), so that
L{ociklein.storage.s3._client.translate} maps them alike.  Like botocore's
standard retry mode, a request is tried up to C{attempts} times, with
exponential backoff and full jitter, when the store is out of reach,
throttles or fails with a 5xx: every request made here is idempotent.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)

# What botocore's standard retry mode retries.
_TRANSIENT_STATUS = {500, 502, 503, 504, 429}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
}
_TRANSIENT_ERRORS = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
_OPERATIONS = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_META = "x-amz-meta-"
_MAX_BACKOFF = 20.0


def _bucketURL(bucket: str, endpoint: str | None, region: str) -> str:
    """
    Where the bucket's keys start: path-style on an endpoint (what
    S3-compatible stores expect, and what the boto3 client is configured
    with), else AWS's virtual-hosted style, or path-style for a bucket
    name that cannot be a host name under TLS (as botocore's "auto" does).
    """
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/"
    if re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket):
        return f"https://{bucket}.s3.{region}.amazonaws.com/"
    return f"https://s3.{region}.amazonaws.com/{bucket}/"


def shape(status: int, headers: Mapping[str, str]) -> dict[str, Any]:
    """
    The parts of a boto3 response the backend reads: C{ContentType},
    C{ContentLength}, C{ETag}, C{LastModified}, C{Metadata} and
    C{ResponseMetadata}, under the names boto3 gives them.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    shaped: dict[str, Any] = {
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": lowered},
        "Metadata": {name[len(_META) :]: value for name, value in lowered.items() if name.startswith(_META)},
    }
    if "content-type" in lowered:
        shaped["ContentType"] = lowered["content-type"]
    if "content-length" in lowered:
        shaped["ContentLength"] = int(lowered["content-length"])
    if "etag" in lowered:
        shaped["ETag"] = lowered["etag"]
    if "last-modified" in lowered:
        shaped["LastModified"] = parsedate_to_datetime(lowered["last-modified"])
    return shaped


class LeanS3:
    """
    Blocking whole-object requests on one bucket, for the S3 thread pool.

    C{observers} are called with the operation's name (C{GetObject}, …),
    its URL and headers before each request is sent, as botocore's
    C{before-send} event would be: for tests that count requests.
    """

    def __init__(
        self,
        http: Any,
        credentials: Any,
        bucket: str,
        endpoint: str | None,
        region: str,
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clientConfig: Any = None,
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._base = _bucketURL(bucket, endpoint, region)
        self._region = region
        self._attempts = max(1, attempts)
        self._sleep = sleep
        # The boto3 client's configuration, which the signer reads (whether
        # to sign payloads, say): requests here are signed as boto3 would.
        self._clientConfig = clientConfig
        self.observers: list[Callable[[str, str, Mapping[str, str]], None]] = []

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """
        The object's bytes and response, or L{None} if it is missing.
        """
        return self._send("GET", key, b"", {}, missingIsNone=True)

    def head(self, key: str) -> dict[str, Any] | None:
        found = self._send("HEAD", key, b"", {}, missingIsNone=True)
        return None if found is None else found[1]

    def put(
        self,
        key: str,
        body: bytes | bytearray,
        ContentType: str | None = None,
        Metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {} if ContentType is None else {"Content-Type": ContentType}
        for name, value in (Metadata or {}).items():
            headers[_META + name] = value
        found = self._send("PUT", key, body, headers)
        assert found is not None
        return found[1]

    def delete(self, key: str) -> None:
        """
        Delete the key; S3 answers alike whether it was there or not.
        """
        self._send("DELETE", key, b"", {})

    def _send(
        self,
        method: str,
        key: str,
        body: bytes | bytearray,
        headers: dict[str, str],
        missingIsNone: bool = False,
    ) -> tuple[bytes, dict[str, Any]] | None:
        url = self.url(key)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._exchange(method, url, body, headers)
            except _TRANSIENT_ERRORS:
                if attempt >= self._attempts:
                    raise
                self._backOff(attempt)
                continue
            status = response.status_code
            if status < 300:
                return response.content, shape(status, response.headers)
            if status == 404 and missingIsNone:
                return None
            error = self._error(method, status, response.content)
            transient = status in _TRANSIENT_STATUS or error.response["Error"]["Code"] in _TRANSIENT_CODES
            if attempt >= self._attempts or not transient:
                raise error
            self._backOff(attempt)

    def mayBlock(self) -> bool:
        """
        Whether signing now may block: credentials that must be refreshed
        (from an instance role, say) are fetched over the network.
        """
        refreshNeeded = getattr(self._credentials, "refresh_needed", None)
        return refreshNeeded is not None and bool(refreshNeeded())

    def url(self, key: str) -> str:
        return self._base + quote(key, safe="/~")

    def signed(self, method: str, url: str, body: bytes | bytearray, headers: dict[str, str]) -> Any:
        """
        The request, signed with the credentials as they are now, and
        announced to the observers: an L{AWSPreparedRequest}.
        """
        credentials = self._credentials.get_frozen_credentials() if self._credentials is not None else None
        if credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        if self._clientConfig is not None:
            request.context["client_config"] = self._clientConfig
        S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        prepared = request.prepare()
        for observer in self.observers:
            observer(_OPERATIONS[method], url, prepared.headers)
        return prepared

    def _exchange(self, method: str, url: str, body: bytes | bytearray, headers: dict[str, str]) -> Any:
        return self._http.send(self.signed(method, url, body, headers))

    def _backOff(self, attempt: int) -> None:
        self._sleep(random.random() * min(_MAX_BACKOFF, 2.0 ** (attempt - 1)))

    @staticmethod
    def _error(method: str, status: int, content: bytes) -> ClientError:
        """
        The L{ClientError} boto3 would raise: the S3 error code from the
        XML body, or the status itself when there is none (a HEAD).
        """
        code = _CODE.search(content or b"")
        message = _MESSAGE.search(content or b"")
        error = {
            "Code": code.group(1).decode("ascii", "replace") if code else str(status),
            "Message": message.group(1).decode("utf-8", "replace") if message else "",
        }
        parsed: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(parsed, _OPERATIONS[method])
