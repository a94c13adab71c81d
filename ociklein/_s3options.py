"""
The options of the s3 backend, shared by C{twistd ociregistry} and the
maintenance verbs of the C{ociklein} command: their names, help texts,
defaults and checks, in a module light enough for the command to import
at every start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.python import usage

S3_OPTIONS: list[list[Any]] = [
    ["s3-endpoint", None, None, "URL of an S3-compatible store. [default: AWS S3]"],
    ["s3-bucket", None, None, "Bucket of the s3 backend, which must exist. [required for s3]"],
    ["s3-region", None, None, "Region of the bucket. [default: AWS config, else us-east-1]"],
    ["s3-prefix", None, None, "Key prefix, so several registries can share a bucket. [default: none]"],
    ["s3-credentials", None, None, "An AWS shared-credentials file. [default: AWS environment/config]"],
    ["s3-ca-file", None, None, "CA bundle to verify the endpoint's TLS with. [default: system CAs]"],
    [
        "s3-part-size",
        None,
        None,
        "Size of the parts uploads are stored in, in MiB, 5 to 64. [default: 8]",
    ],
    ["s3-read-ahead", None, None, "MiB each download reads ahead of its client, 0 to 64. [default: 4]"],
]
S3_DEFAULTS: dict[str, Any] = {
    "s3-endpoint": "",
    "s3-bucket": "",
    "s3-region": "",
    "s3-prefix": "",
    "s3-credentials": "",
    "s3-ca-file": "",
    "s3-part-size": 8,
    "s3-read-ahead": 4,
}
S3_KEYS = tuple(S3_DEFAULTS)


def s3Numbers(options: Any) -> None:
    """
    Make the numeric s3 options numbers, whatever the backend (a file's
    values are strings); one line if one is not.
    """
    for key in ("s3-part-size", "s3-read-ahead"):
        try:
            options[key] = int(options[key])
        except (TypeError, ValueError):
            raise usage.UsageError(f"--{key} must be a number, not {options[key]!r}") from None


def checkS3(options: Any) -> None:
    """
    Refuse s3 options that cannot work, then try the bucket: a wrong
    endpoint, bucket or credentials stops the start with one line.  The
    registry and the maintenance verbs of the C{ociklein} command both
    check their s3 options here.
    """
    from urllib.parse import urlsplit

    if not options["s3-bucket"]:
        raise usage.UsageError("--backend=s3 needs --s3-bucket")
    endpoint = options["s3-endpoint"]
    if endpoint and (urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc):
        raise usage.UsageError(f"--s3-endpoint must be an http:// or https:// URL, not {endpoint!r}")
    for key in ("s3-credentials", "s3-ca-file"):
        if options[key] and not os.access(options[key], os.R_OK):
            raise usage.UsageError(f"--{key} {options[key]}: cannot read the file")
    s3Numbers(options)
    if not 5 <= options["s3-part-size"] <= 64:
        raise usage.UsageError("--s3-part-size must be from 5 to 64 (MiB)")
    if not 0 <= options["s3-read-ahead"] <= 64:
        raise usage.UsageError("--s3-read-ahead must be from 0 to 64 (MiB)")
    try:
        s3Config(options).check()
    except ValueError as e:
        raise usage.UsageError(f"--backend=s3: {e}") from None


def s3Config(options: Mapping[str, Any]) -> Any:
    """
    The L{ociklein.storage.s3.S3Config} the s3 options describe.
    """
    from ociklein.storage.s3 import S3Config

    return S3Config(
        options["s3-bucket"],
        endpoint=options["s3-endpoint"] or None,
        region=options["s3-region"] or None,
        prefix=options["s3-prefix"],
        credentialsFile=options["s3-credentials"] or None,
        caFile=options["s3-ca-file"] or None,
    )


def openS3(settings: Mapping[str, Any], reactor: Any = None) -> tuple[Any, Any, Callable[[], None]]:
    """
    The s3 manifest backend and blob store the checked settings (the s3
    options and C{upload-ttl}) describe, sharing one client, and what
    closes them: for the registry and the maintenance verbs alike.
    """
    from ociklein.storage.s3 import S3BlobStore, S3Client, S3ManifestBackend

    client = S3Client(s3Config(settings), reactor=reactor)
    blobs = S3BlobStore(
        client,
        uploadTTL=settings["upload-ttl"],
        partSize=settings["s3-part-size"] * 1024 * 1024,
        readAhead=settings["s3-read-ahead"] * 1024 * 1024,
    )

    def close() -> None:
        blobs.close()
        client.close()

    return S3ManifestBackend(client), blobs, close
