"""
The error codes of the OCI Distribution Specification, raised by the core and
rendered by the HTTP layer as the spec's JSON error body.
"""

from __future__ import annotations

import errno
import json
from typing import Any


class OCIError(Exception):
    """
    A client-visible failure: an HTTP status, a spec error code, a message.
    """

    def __init__(
        self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> bytes:
        """
        The JSON error document the spec prescribes.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error["detail"] = self.detail if self.detail is not None else {}
        return json.dumps({"errors": [error]}).encode()


def blobUnknown(digest: str) -> OCIError:
    return OCIError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})


def blobUploadUnknown(uploadId: str) -> OCIError:
    return OCIError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", {"uuid": uploadId})


def blobUploadInvalid(reason: str, status: int = 400) -> OCIError:
    return OCIError(status, "BLOB_UPLOAD_INVALID", "blob upload invalid", {"reason": reason})


def digestInvalid(reason: str, digest: str | None = None) -> OCIError:
    detail: dict[str, str] = {"reason": reason}
    if digest is not None:
        detail["digest"] = digest
    return OCIError(400, "DIGEST_INVALID", "provided digest did not match uploaded content", detail)


def manifestInvalid(reason: str) -> OCIError:
    return OCIError(400, "MANIFEST_INVALID", "manifest invalid", {"reason": reason})


def manifestBlobUnknown(digest: str) -> OCIError:
    return OCIError(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest references a manifest or blob unknown to registry",
        {"digest": digest},
    )


def manifestUnknown(reference: str) -> OCIError:
    return OCIError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", {"reference": reference})


def nameInvalid(name: str) -> OCIError:
    return OCIError(400, "NAME_INVALID", "invalid repository name", {"name": name})


def nameUnknown(name: str) -> OCIError:
    return OCIError(404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name})


def tagInvalid(tag: str, reason: str = "not a tag of the spec's grammar") -> OCIError:
    return OCIError(400, "TAG_INVALID", "manifest tag did not match URI", {"tag": tag, "reason": reason})


def tagsTooMany(count: int, limit: int) -> OCIError:
    return OCIError(
        414, "TAG_INVALID", "too many tags in one request", {"reason": f"{count} tags, at most {limit}"}
    )


def sizeInvalid(reason: str, status: int = 400) -> OCIError:
    return OCIError(
        status, "SIZE_INVALID", "provided length did not match content length", {"reason": reason}
    )


def paginationInvalid(reason: str) -> OCIError:
    return OCIError(
        400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", {"reason": reason}
    )


def unsupported(reason: str, status: int = 405, allow: list[str] | None = None) -> OCIError:
    headers = {"Allow": ", ".join(allow)} if allow else None
    return OCIError(status, "UNSUPPORTED", "the operation is unsupported", {"reason": reason}, headers)


def storageFull(reason: str) -> OCIError:
    return OCIError(507, "UNSUPPORTED", "the registry cannot store the data", {"reason": reason})


def unavailable(reason: str, retryAfter: int = 1) -> OCIError:
    return OCIError(
        503,
        "UNAVAILABLE",
        "the registry is temporarily unable to serve the request",
        {"reason": reason},
        {"Retry-After": str(retryAfter)},
    )


def internal() -> OCIError:
    return OCIError(500, "UNKNOWN", "internal server error", {})


_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def forOSError(e: OSError) -> OCIError:
    """
    What a storage failure means to the client: out of descriptors is
    temporary (503, retry), out of space is 507, anything else (EACCES,
    EIO) is the server's own fault, a 500 whose reason stays in the log.
    """
    if e.errno in _OUT_OF_DESCRIPTORS:
        return unavailable("too many open files")
    if e.errno in _OUT_OF_SPACE:
        return storageFull(e.strerror or str(e))
    return internal()


def unauthorized(challenge: str, detail: Any = None) -> OCIError:
    return OCIError(401, "UNAUTHORIZED", "authentication required", detail, {"WWW-Authenticate": challenge})


def denied(action: str, repository: str) -> OCIError:
    return OCIError(
        403, "DENIED", "requested access to the resource is denied", {"action": action, "name": repository}
    )


def tooManyRequests(retryAfter: int) -> OCIError:
    return OCIError(
        429,
        "TOOMANYREQUESTS",
        "too many failed logins",
        {"retryAfter": retryAfter},
        {"Retry-After": str(retryAfter)},
    )
